"""Arguments shared by the LLM commands: model, cut, codec and its parameters, threads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from .. import codecs
from ..codecs import Codec
from ._checks import parse_params
from ._common import UsageError, split_param

__all__ = ["add_codec_context", "add_common", "add_lm_model", "add_session_limits", "codec_params",
           "context_files", "load_codec_contexts", "make_codec", "parse_params",
           "resolve_context_params", "session_limits", "set_threads", "weights_arg"]


def add_lm_model(p: argparse.ArgumentParser) -> None:
    """--model and --weights of a causal LM."""
    p.add_argument("--model", default="smollm2",
                   help="registered causal LM (smollm2, llama_tiny, gpt2_tiny) or a HF folder")
    p.add_argument("--weights", default="auto",
                   help="'auto' (real weights where the model has them), 'random', or a path")


def add_common(p: argparse.ArgumentParser) -> None:
    add_lm_model(p)
    p.add_argument("--split", type=int, required=True,
                   help="cut before this block: the edge runs blocks [0, K)")
    p.add_argument("--codec", default="fp32", choices=codecs.available())
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="codec parameter, typed by the codec's declaration (repeatable); a "
                        "context parameter takes a context file's path (e.g. tokenwise "
                        "context=FILE from `splitcomp calibrate-lm`) or a registered id")
    add_codec_context(p)
    p.add_argument("--per-message", action="store_true",
                   help="one bitstream per message instead of one per token")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a busy 2-core machine more is slower)")


def add_codec_context(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codec-context", action="append", default=[], metavar="FILE",
                   help="a codec context file (from `splitcomp calibrate-lm`), loaded before "
                        "the codec is made (repeatable); with one file, the tokenwise codec "
                        "uses it unless --param context=... names another")


def add_session_limits(g: argparse._ActionsContainer) -> None:
    """``splitcomp serve``'s per-client quotas and STEP bounds of an LLM deployment (see
    :class:`~splitcomp.runtime.llm.LLMDeployment`); :func:`session_limits` reads them."""
    g.add_argument("--max-sessions-per-client", type=int, default=None, metavar="N",
                   help="open sessions per client (token) at most (default: a quarter of "
                        "--max-sessions; 0: no per-client cap)")
    g.add_argument("--max-kv-bytes-per-client", type=int, default=None, metavar="BYTES",
                   help="KV-cache bytes per client at most (default: a quarter of "
                        "--max-kv-bytes; 0: no per-client cap)")
    g.add_argument("--max-contexts-per-client", type=int, default=None, metavar="N",
                   help="distinct codec contexts a client's sessions may hold (default: a "
                        "quarter of --max-contexts; 0: no per-client cap)")
    g.add_argument("--max-step-tokens", type=int, default=4096, metavar="T",
                   help="tokens one STEP (a prefill) may carry at most (TOO_LARGE beyond)")
    g.add_argument("--min-step-bytes-per-token", type=int, default=8, metavar="BYTES",
                   help="a STEP's bitstreams must hold this many bytes per token it declares "
                        "(BAD_BITSTREAM below): a small frame cannot ask for a long prefill")


def session_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`LLMDeployment` keyword arguments of :func:`add_session_limits`' flags."""
    return {k: getattr(args, k) for k in (
        "max_sessions_per_client", "max_kv_bytes_per_client", "max_contexts_per_client",
        "max_step_tokens", "min_step_bytes_per_token")}


def load_codec_contexts(files: list[str]) -> list[int]:
    """Load and register the ``--codec-context`` files; their ids, in order."""
    from ..codecs.tokenwise import load_context_file

    ids = []
    for f in files:
        try:
            ids.append(load_context_file(f))
        except (OSError, ValueError) as e:  # BitstreamError is a ValueError
            raise UsageError(f"--codec-context {f}: {e}") from None
    return ids


def _load_context(registry: Any, flag: str, path: str) -> int:
    try:
        return int(registry.load_file(Path(path).expanduser()))
    except (OSError, ValueError) as e:  # BitstreamError is a ValueError
        reason = "no such file" if isinstance(e, FileNotFoundError) else e
        raise UsageError(f"{flag}: {reason}") from None


def resolve_context_params(codec: str, items: list[str]) -> list[str]:
    """``--param`` items with a context file in place of a context id: for a codec with a
    session context (tokenwise ``context``, bottleneck ``tables``), a value of that parameter
    that is not an integer is a file path; the file is loaded and registered here and the
    item names its id."""
    cls = codecs.codec_class(codec)
    key = getattr(cls, "context_param", None)
    if not key:
        return list(items)
    out = []
    for item in items:
        k, v = split_param(item)
        if k == key and not v.strip().lstrip("+-").isdigit():
            item = f"{k}={_load_context(cls.context_registry, f'--param {item}', v)}"
        out.append(item)
    return out


def context_files(items: list[str]) -> list[str]:
    """The files of ``splitcomp serve``'s ``--param context=FILE`` items (the form
    ``generate`` and ``eval-lm`` take; a server needs a context's file, not its id)."""
    files = []
    for item in items:
        k, v = split_param(item)
        if k != "context" or v.strip().lstrip("+-").isdigit():
            raise UsageError(f"--param {item}: a server takes only context=FILE (a codec "
                             "context file it holds for its sessions)")
        files.append(v)
    return files


def codec_params(args: argparse.Namespace) -> dict[str, Any]:
    """The codec's parameters from ``--param`` (a context parameter may name a context file)
    and ``--codec-context``."""
    ids = load_codec_contexts(args.codec_context)
    params = parse_params(args.codec, resolve_context_params(args.codec, args.param))
    names = {p.name for p in codecs.codec_class(args.codec).params_spec}
    if len(ids) == 1 and "context" in names and "context" not in params:
        params["context"] = ids[0]
    return params


def weights_arg(value: str) -> str | None:
    return None if value == "random" else value


def make_codec(name: str, params: dict[str, Any]) -> Codec:
    try:
        return codecs.get(name, **params)
    except (TypeError, ValueError) as e:
        raise UsageError(f"codec {name}: {e}") from None


def set_threads(n: int) -> None:
    """Torch threads, and no weight-loading progress bars from transformers on the terminal."""
    if n > 0:
        torch.set_num_threads(n)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
