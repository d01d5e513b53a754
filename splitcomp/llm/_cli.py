"""Arguments shared by the LLM commands: model, cut, codec and its parameters, threads."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from .. import codecs
from ..codecs import Codec


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2",
                   help="registered causal LM (smollm2, llama_tiny, gpt2_tiny) or a HF folder")
    p.add_argument("--weights", default="auto",
                   help="'auto' (real weights where the model has them), 'random', or a path")
    p.add_argument("--split", type=int, required=True,
                   help="cut before this block: the edge runs blocks [0, K)")
    p.add_argument("--codec", default="fp32", choices=codecs.available())
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="codec parameter, typed by the codec's declaration (repeatable)")
    p.add_argument("--per-message", action="store_true",
                   help="one bitstream per message instead of one per token")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a busy 2-core machine more is slower)")


def weights_arg(value: str) -> str | None:
    return None if value == "random" else value


def parse_params(codec_name: str, items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> codec parameters, each converted to its declared kind."""
    spec = {p.name: p for p in codecs.codec_class(codec_name).params_spec}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param expects key=value, got {item!r}")
        if key not in spec:
            raise SystemExit(f"{codec_name} has no parameter {key!r}; it has {sorted(spec)}")
        kind = spec[key].kind
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("1", "true", "yes")
            else:
                out[key] = kind(value)
        except ValueError:
            raise SystemExit(f"--param {key}: {value!r} is not a {kind.__name__}") from None
    return out


def make_codec(name: str, params: dict[str, Any]) -> Codec:
    try:
        return codecs.get(name, **params)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"codec {name}: {e}") from None


def set_threads(n: int) -> None:
    """Torch threads, and no weight-loading progress bars from transformers on the terminal."""
    if n > 0:
        torch.set_num_threads(n)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
