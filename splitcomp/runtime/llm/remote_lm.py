"""Split generation in the shape of Hugging Face's ``from_pretrained`` / ``generate`` (and
Petals' distributed models): this process loads only the edge side of a model folder, a
server (``splitcomp serve --llm``) runs the rest.

    >>> lm = SplitCausalLM.from_pretrained("path/to/model", split=15,
    ...                                    server="ws://127.0.0.1:8765", codec="rans",
    ...                                    codec_params={"bits": 4}, token=TOKEN)
    >>> lm.generate("The capital of France is", max_new_tokens=16)  # the new text
    >>> for piece in lm.generate("Once upon a time", max_new_tokens=64, do_sample=True,
    ...                          temperature=0.7, top_k=50, seed=1, stream=True):
    ...     print(piece, end="")

``server=None`` runs both halves in this process (each loaded with only its own tensors, as
:class:`splitcomp.llm.SplitLM`), with no network. Token ids in, token ids out (a tensor of the
prompt and the new tokens, as ``transformers`` returns); text in, text out. Each ``generate``
call is a fresh sequence: a new server session (opened with that call's sampling) or a reset
local one. Sampling is the server's (:func:`~splitcomp.llm.sampling.pick`, the generator
seeded by ``seed`` and the token's position), so the local split draws the same tokens for
the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...codecs import Codec
from ...llm.halves import ServerHalf
from ...llm.hidden_wire import WireStats
from ...llm.partial import load_side, model_folder, partial_model
from ...llm.pipeline import SplitLM, as_codec
from ...llm.sampling import Sampling, generator_for, pick
from .client import RemoteLM
from .service import position_seed

Prompt = str | torch.Tensor | Sequence[int]


class SplitCausalLM:
    """A causal LM cut at block ``split``: the edge part here, the rest on ``server`` (a
    WebSocket URL) or, with ``server=None``, on ``server_half`` in this process.

    ``model`` needs only the edge side's tensors (:func:`~splitcomp.llm.partial.partial_model`).
    ``client_options`` go to :class:`~splitcomp.runtime.llm.RemoteLM` (``token``, ``ca``,
    ``timeout_s``, ...).
    """

    def __init__(self, model: nn.Module, split: int, *, server: str | None = None,
                 server_half: ServerHalf | None = None, deployment: str = "llm",
                 codec: Codec | str = "fp32", codec_params: dict[str, Any] | None = None,
                 per_token: bool = True, tokenizer: Any = None, **client_options: Any) -> None:
        if (server is None) == (server_half is None):
            raise ValueError("give a server URL or a server half (server=None), not both")
        self.model = model
        self.split = split
        self.server = server
        self.deployment = deployment
        self.codec = as_codec(codec, **(codec_params or {}))
        self.per_token = per_token
        self.tokenizer = tokenizer
        self.client_options = client_options
        self.local = (SplitLM(model, split, self.codec, per_token, server=server_half)
                      if server_half is not None else None)
        #: bytes of the last generation's hidden states (its codec's bitstreams)
        self.wire_stats: WireStats | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, split: int, server: str | None = None, *,
                        codec: Codec | str = "fp32", codec_params: dict[str, Any] | None = None,
                        token: str | None = None, deployment: str | None = None,
                        per_token: bool = True, dtype: torch.dtype = torch.float32,
                        attn_implementation: str | None = None, tokenizer: Any = True,
                        **client_options: Any) -> SplitCausalLM:
        """Load the edge side of the model in folder ``path`` (only its tensors), and with
        ``server=None`` the server side too. ``deployment``: the server's name for the model
        (default: the folder's name, as ``splitcomp serve --llm`` names it); ``tokenizer``:
        True loads the folder's own (if it has one), or pass one, or None."""
        folder = model_folder(path)
        model = partial_model(folder, split, "edge", dtype, attn_implementation)
        server_half = None
        if server is None:
            server_half = load_side(folder, split, "server", dtype, attn_implementation)
        if tokenizer is True:
            tokenizer = _folder_tokenizer(folder)
        return cls(model, split, server=server, server_half=server_half,  # type: ignore[arg-type]
                   deployment=deployment or Path(path).name, codec=codec,
                   codec_params=codec_params, per_token=per_token, tokenizer=tokenizer,
                   token=token, **client_options)

    def _eos(self, eos_token_id: int | None, ignore_eos: bool) -> int | None:
        if ignore_eos:
            return None
        if eos_token_id is not None:
            return eos_token_id
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        return eos if isinstance(eos, int) else None

    def _ids(self, prompt: Prompt) -> torch.Tensor:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer (this model has none)")
            ids = self.tokenizer(prompt)["input_ids"]
        else:
            ids = prompt
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("empty prompt")
        return ids

    def generate(self, prompt: Prompt, max_new_tokens: int = 32, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                 eos_token_id: int | None = None, ignore_eos: bool = False,
                 stream: bool = False) -> Any:
        """Continue ``prompt`` (text, or token ids) by up to ``max_new_tokens`` tokens: greedy,
        or with ``do_sample`` drawn at ``temperature`` from the ``top_k`` most likely (0: all).
        Stops after the end-of-sequence token (``eos_token_id``, default the model's; it is
        kept, as ``transformers`` keeps it) unless ``ignore_eos``.

        Returns the prompt's ids and the new ones as a (1, T + n) tensor, or the new text for
        a text prompt; ``stream=True``: an iterator of each new token id (or text piece) as
        soon as the server picked it."""
        sampling = (Sampling(temperature, top_k, seed) if do_sample and temperature > 0
                    else Sampling())
        ids = self._ids(prompt)
        tokens = self._tokens(ids, max_new_tokens, sampling, self._eos(eos_token_id, ignore_eos))
        if isinstance(prompt, str):
            pieces = self._text(tokens)
            return pieces if stream else "".join(pieces)
        if stream:
            return tokens
        return torch.cat([ids, torch.tensor([list(tokens)], dtype=torch.long)], dim=1)

    def _text(self, tokens: Iterator[int]) -> Iterator[str]:
        """New text as tokens come (a character split over tokens waits for its last one, or
        for the end)."""
        out: list[int] = []
        shown = text = ""
        for token in tokens:
            out.append(token)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue
            yield text[len(shown):]
            shown = text
        if text != shown:
            yield text[len(shown):]

    def _tokens(self, ids: torch.Tensor, max_new_tokens: int, sampling: Sampling,
                eos: int | None) -> Iterator[int]:
        if self.local is not None:
            return self._local_tokens(ids, max_new_tokens, sampling, eos)
        return self._remote_tokens(ids, max_new_tokens, sampling, eos)

    def _local_tokens(self, ids: torch.Tensor, max_new_tokens: int, sampling: Sampling,
                      eos: int | None) -> Iterator[int]:
        lm = self.local
        assert lm is not None
        lm.reset()
        lm.wire.stats = WireStats()
        self.wire_stats = lm.wire.stats
        generator = generator_for(sampling)
        for _ in range(max_new_tokens):
            logits, _ = lm.forward_step(ids)
            if generator is not None:  # as the server draws: seeded by the position
                generator.manual_seed(position_seed(sampling.seed, lm.session.position))
            token = pick(logits[0, -1], sampling, generator)[0]
            yield token
            if token == eos:
                return
            ids = torch.tensor([[token]])

    def _remote_tokens(self, ids: torch.Tensor, max_new_tokens: int, sampling: Sampling,
                       eos: int | None) -> Iterator[int]:
        assert self.server is not None
        with RemoteLM(self.model, self.split, self.server, self.deployment, self.codec,
                      per_token=self.per_token, sampling=sampling,
                      **self.client_options) as lm:
            self.wire_stats = lm.wire.stats
            for step in lm.generate(ids, max_new_tokens, eos):
                yield step.token


def _folder_tokenizer(folder: Path) -> Any:
    """The folder's own tokenizer, or None if it has none."""
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                 "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
