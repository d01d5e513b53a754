"""Next-token choice from last-position logits: greedy or seeded temperature/top-k sampling.

Pure functions of the logits and a generator; the server keeps one generator per session, so
a session's samples depend only on its seed and its own logits, never on what it was batched
with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: most top log-probabilities a step may ask for (the LLM frames carry at most this many)
MAX_TOP_K_LOGPROBS = 32
_U32_MAX = (1 << 32) - 1


@dataclass(frozen=True)
class Sampling:
    """How the server picks each next token: greedy (``temperature`` 0) or sampled from the
    softmax at ``temperature`` over the ``top_k`` most likely tokens (0: all), drawn from a
    generator seeded with ``seed``; ``logprobs``: how many top log-probabilities to return."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    logprobs: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and self.temperature < float("inf")):
            raise ValueError(f"temperature {self.temperature} must be finite and >= 0")
        if not 0 <= self.top_k <= _U32_MAX:
            raise ValueError(f"top_k {self.top_k} outside 0..2**32-1")
        if not 0 <= self.seed < 1 << 64:
            raise ValueError(f"seed {self.seed} outside 0..2**64-1")
        if not 0 <= self.logprobs <= MAX_TOP_K_LOGPROBS:
            raise ValueError(f"logprobs {self.logprobs} outside 0..{MAX_TOP_K_LOGPROBS}")


def generator_for(sampling: Sampling) -> torch.Generator | None:
    """The session's random generator (None for greedy decoding, which needs none)."""
    if sampling.temperature == 0.0:
        return None
    g = torch.Generator()
    g.manual_seed(sampling.seed & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
         ) -> tuple[int, float, tuple[tuple[int, float], ...]]:
    """Logits (V,) -> (token, its log-probability, the ``sampling.logprobs`` most likely
    (token, log-probability) pairs). Log-probabilities are the model's own (temperature 1,
    no top-k), whatever the sampling."""
    logits = logits.float()
    if sampling.temperature == 0.0:
        token = int(logits.argmax())
    else:
        scaled = logits / sampling.temperature
        if 0 < sampling.top_k < scaled.numel():
            values, index = torch.topk(scaled, sampling.top_k)
        else:
            values, index = scaled, None
        choice = int(torch.multinomial(torch.softmax(values, -1), 1, generator=generator))
        token = int(index[choice]) if index is not None else choice
    logp = torch.log_softmax(logits, -1)
    top: tuple[tuple[int, float], ...] = ()
    if sampling.logprobs:
        values, index = torch.topk(logp, min(sampling.logprobs, logp.numel()))
        top = tuple(zip(index.tolist(), values.tolist(), strict=True))
    return token, float(logp[token]), top
