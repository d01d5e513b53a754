"""Arguments shared by the LLM commands: model, cut, codec and its parameters, threads."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from .. import codecs
from ..codecs import Codec
from ._common import split_param


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
    add_codec_context(p)
    p.add_argument("--per-message", action="store_true",
                   help="one bitstream per message instead of one per token")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a busy 2-core machine more is slower)")


def add_codec_context(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codec-context", action="append", default=[], metavar="FILE",
                   help="a codec context file (from `splitcomp lm-context`), loaded before the "
                        "codec is made (repeatable); with one file, the tokenwise codec uses it "
                        "unless --param context=ID names another")


def load_codec_contexts(files: list[str]) -> list[int]:
    """Load and register the ``--codec-context`` files; their ids, in order."""
    from ..codecs.tokenwise import load_context_file

    ids = []
    for f in files:
        try:
            ids.append(load_context_file(f))
        except (OSError, ValueError) as e:  # BitstreamError is a ValueError
            raise SystemExit(f"--codec-context {f}: {e}") from None
    return ids


def codec_params(args: argparse.Namespace) -> dict[str, Any]:
    """The codec's parameters from ``--param`` and ``--codec-context``."""
    ids = load_codec_contexts(args.codec_context)
    params = parse_params(args.codec, args.param)
    names = {p.name for p in codecs.codec_class(args.codec).params_spec}
    if len(ids) == 1 and "context" in names and "context" not in params:
        params["context"] = ids[0]
    return params


def weights_arg(value: str) -> str | None:
    return None if value == "random" else value


def parse_params(codec_name: str, items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> codec parameters, each converted to its declared kind."""
    spec = {p.name: p for p in codecs.codec_class(codec_name).params_spec}
    out: dict[str, Any] = {}
    for item in items:
        key, value = split_param(item)
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
