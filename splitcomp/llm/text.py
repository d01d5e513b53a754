"""Tokenizers, model loading and the evaluation texts (WikiText-2, HellaSwag).

Registered tiny models have no tokenizer: they read UTF-8 bytes (vocabulary 256), which is all
a test of the plumbing needs. SmolLM2 uses the tokenizer stored in its GGUF file.
"""

from __future__ import annotations

import bz2
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..data.paths import shared_data_path


class Tokenizer(Protocol):
    """What the LLM tools need from a tokenizer."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids (for the byte-vocabulary tiny models)."""

    eos_token_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer behind :class:`Tokenizer` (no special tokens added)."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.eos_token_id = tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def chat_prompt(self, text: str) -> str:
        """``text`` as one user turn of the model's chat template (generation prompt added)."""
        return self.tok.apply_chat_template([{"role": "user", "content": text}],
                                            tokenize=False, add_generation_prompt=True)


def load_lm(name: str, weights: str | None = "auto") -> tuple[nn.Module, Tokenizer]:
    """A causal LM and its tokenizer: a registered model name or a Hugging Face folder.

    ``weights="auto"``: the real weights for models that have them (smollm2), the seeded random
    initialisation for the tiny test models.
    """
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path).float().eval()
        return model, HFTokenizer(AutoTokenizer.from_pretrained(path))
    from ..zoo import create_model, model_config

    cfg = model_config(name)
    if cfg.task != "causal-lm":
        raise ValueError(f"{name} is not a causal language model")
    if weights == "auto":
        weights = "default" if cfg.loader is not None else None
    model = create_model(name, weights=weights)
    if name == "smollm2" and weights is not None:
        from ..zoo.smollm2 import load_smollm2_tokenizer

        return model, HFTokenizer(load_smollm2_tokenizer(weights))
    if model.config.vocab_size < 256:
        raise ValueError(f"{name} has {model.config.vocab_size} tokens, bytes need 256")
    return model, ByteTokenizer()


# -- WikiText-2 -------------------------------------------------------------------------------
def default_wikitext() -> Path | None:
    return shared_data_path("text", "wikitext-2-valid.txt")


def default_hellaswag() -> Path | None:
    return shared_data_path("text", "hellaswag_val_full.txt.bz2")


def _read_text(path: Path) -> str:
    if path.suffix == ".bz2":
        with bz2.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def token_windows(tokenizer: Tokenizer, path: Path, window: int, count: int) -> torch.Tensor:
    """The first ``count`` non-overlapping ``window``-token windows of a text file (count, window).

    Only as much text as needed is tokenized (grown in chunks), so a small count is fast.
    """
    text = _read_text(path)
    need = window * count
    chars = max(4 * need, 4096)
    while True:
        ids = tokenizer.encode(text[:chars])
        if len(ids) > need or chars >= len(text):
            break
        chars *= 2
    if len(ids) < need:
        raise ValueError(f"{path} has {len(ids)} tokens, {count} windows of {window} need {need}")
    return torch.tensor(ids[:need], dtype=torch.long).view(count, window)


# -- HellaSwag --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """A multiple-choice item: context, candidate endings, index of the right one."""

    context: str
    endings: tuple[str, ...]
    label: int


def _clean(text: str) -> str:
    # the usual HellaSwag preprocessing: WikiHow bracket tags out, double spaces collapsed
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(path: Path, count: int, start: int = 0) -> list[Choice]:
    """Items ``start .. start+count`` of a HellaSwag file: 6 lines each (``label: context``,
    gold index, 4 endings); ``.bz2`` or plain text."""
    lines = _read_text(path).split("\n")
    items = []
    for i in range(start, start + count):
        block = lines[6 * i : 6 * i + 6]
        if len(block) < 6:
            break
        try:
            label = int(block[1].strip())
        except ValueError:
            raise ValueError(f"{path}: item {i} has no gold index on its second line") from None
        if not 0 <= label < 4:
            raise ValueError(f"{path}: item {i} has gold index {label}")
        items.append(Choice(_clean(block[0]), tuple(_clean(e) for e in block[2:6]), label))
    return items
