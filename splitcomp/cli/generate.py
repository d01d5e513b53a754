"""Generate text with a split LLM, the hidden state crossing through a codec.

Embedded mode (default, greedy): both halves run in this process, every step's bitstreams are
really encoded and decoded, and every byte is counted. With ``--server ws://HOST:PORT`` the
edge half and its KV cache run here and a ``splitcomp serve --llm`` server runs the rest,
picking each token (greedy, or sampled with ``--temperature``/``--top-k``/``--seed``); a
server session lost to a restart or the idle timeout is rebuilt from the bitstreams sent so
far and generation goes on. With ``--server``, a model in a folder of safetensors (smollm2's
converted folder, or a Hugging Face folder) is loaded edge side only (embeddings and blocks
``[0, split)``); models built in code and ``--weights random`` load whole. Tokens are printed
as they come; the byte figures go to stderr at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

from ..codecs import Codec
from ..llm.pipeline import SplitLM
from ..llm.text import HFTokenizer, Tokenizer, load_lm
from ..runtime.errors import SplitRuntimeError
from ._checks import check_reachable, lm_name
from ._common import UsageError, add_force, at_least, check_output, write_json
from ._llm_args import add_common, codec_params, make_codec, set_threads, weights_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the model's chat template (instruct models)")
    p.add_argument("--json", help="write the byte figures here")
    add_force(p)
    g = p.add_argument_group("remote server half")
    g.add_argument("--server", default=None, metavar="URL",
                   help="ws://HOST:PORT of a 'splitcomp serve --llm' server. A model in a "
                        "folder of safetensors (smollm2, a Hugging Face folder) is then loaded "
                        "edge side only: embeddings and blocks [0, split); models built in "
                        "code (llama_tiny, gpt2_tiny) and --weights random load whole")
    g.add_argument("--token", default=os.environ.get("SPLITCOMP_TOKEN"),
                   help="bearer token (default: $SPLITCOMP_TOKEN)")
    g.add_argument("--deployment", default=None,
                   help="the server's LLM deployment (default: the model name)")
    g.add_argument("--ca", default=None, help="PEM file trusted for wss://")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    g.add_argument("--seed", type=int, default=0, help="the server session's sampling seed")


def run(args: argparse.Namespace) -> int:
    at_least("--max-new-tokens", args.max_new_tokens)
    at_least("--split", args.split, 0)
    check_output(args.json, args.force)
    lm_name(args.model)
    if not args.prompt.strip():
        raise UsageError("empty prompt")
    if not args.server and (args.temperature or args.top_k):
        raise UsageError("--temperature/--top-k need --server (embedded mode is greedy)")
    codec = make_codec(args.codec, codec_params(args))
    if args.server:
        check_reachable(args.server, "--server")
    set_threads(args.threads)
    model, tok = _load(args)
    if args.server:
        from pathlib import Path

        from ..runtime.llm.client import RemoteLM
        from ..runtime.protocol import Sampling

        try:
            sampling = Sampling(args.temperature, args.top_k, args.seed)
        except ValueError as e:
            raise UsageError(str(e)) from None
        lm = RemoteLM(model, args.split, args.server, args.deployment or Path(args.model).name,
                      codec, per_token=not args.per_message, sampling=sampling,
                      token=args.token, ca=args.ca)
    else:
        lm = SplitLM(model, args.split, codec, per_token=not args.per_message)
    try:
        return _generate(args, lm, tok, codec)
    except SplitRuntimeError as e:
        raise SystemExit(f"{args.server}: {e}") from None
    finally:
        if args.server:
            lm.close()


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, Tokenizer]:
    """The model and its tokenizer: with ``--server`` from a folder of safetensors only the
    edge side (embeddings, blocks ``[0, split)``; the rest stays on ``meta``), else whole.
    Sets ``args.param_bytes``: (bytes held here, the whole model's)."""
    from ..llm.partial import held_bytes, partial_model, side_bytes, side_folder

    weights = weights_arg(args.weights)
    folder = side_folder(args.model, weights) if args.server else None
    if folder is None:
        model, tok = load_lm(args.model, weights)
    else:
        try:
            model = partial_model(folder, args.split, "edge")
        except ValueError as e:
            raise UsageError(f"--split: {e}") from None
        tok = _folder_tokenizer(folder, model)
    try:
        whole = side_bytes(model, args.split)["whole"]
    except ValueError as e:
        raise UsageError(f"--split: {e}") from None
    args.param_bytes = (held_bytes(model), whole)
    return model, tok


def _folder_tokenizer(folder: Any, model: torch.nn.Module) -> Tokenizer:
    """The folder's tokenizer; bytes for a folder without one whose vocabulary holds them
    (a saved test model)."""
    from ..llm.text import ByteTokenizer

    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                            "tokenizer.model", "vocab.json")):
        from transformers import AutoTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(folder))
    if model.config.vocab_size < 256:
        raise UsageError(f"--model {folder}: no tokenizer in the folder")
    return ByteTokenizer()


def _generate(args: argparse.Namespace, lm: Any, tok: Tokenizer, codec: Codec) -> int:
    """Stream the tokens of ``lm`` (a SplitLM or a RemoteLM) and report the bytes."""
    prompt = args.prompt
    if args.chat:
        if not isinstance(tok, HFTokenizer):
            raise SystemExit("--chat needs a model with a chat template")
        prompt = tok.chat_prompt(prompt)
    prompt_ids = tok.encode(prompt)
    if not prompt_ids:
        raise SystemExit("empty prompt")
    out: list[int] = []
    shown = ""
    decode_bytes = 0
    prefill_bytes = 0
    wire_bytes = 0
    t0 = time.perf_counter()
    for i, step in enumerate(lm.generate(torch.tensor(prompt_ids), args.max_new_tokens,
                                         tok.eos_token_id)):
        sent = lm.wire.stats.per_message[-1]  # bitstreams (frames add their headers)
        wire_bytes += getattr(step, "wire_bytes", 0)
        if i == 0:
            prefill_bytes = sent
        else:
            decode_bytes += sent
        if step.token == tok.eos_token_id:
            break
        out.append(step.token)
        text = tok.decode(out)
        sys.stdout.write(text[len(shown):])  # stream only what is new (multi-token characters)
        sys.stdout.flush()
        shown = text
    seconds = time.perf_counter() - t0
    sys.stdout.write("\n")
    steps = max(len(lm.wire.stats.per_message) - 1, 0)
    report = {
        "model": args.model, "split": args.split, "codec": codec.name, "params": codec.params,
        "prompt_tokens": len(prompt_ids), "new_tokens": len(out),
        "prefill_bytes": prefill_bytes,
        "bytes_per_token": decode_bytes / steps if steps else prefill_bytes / len(prompt_ids),
        "bits_per_element": lm.wire.stats.bits_per_element,
        "overhead_bytes_per_bitstream": lm.wire.stats.overhead / max(lm.wire.stats.bitstreams, 1),
        "tokens_per_s": (len(out) + 1) / seconds if seconds > 0 else 0.0,
    }
    held, whole = getattr(args, "param_bytes", (0, 0))
    if whole:  # parameter bytes loaded here (with --server, the edge side's where it can)
        report["param_bytes"], report["model_param_bytes"] = held, whole
    if args.server:
        report["server"] = args.server
        report["wire_bytes"] = wire_bytes  # both directions, frame and WebSocket headers too
        report["context_bytes"] = lm.context_bytes_sent  # codec context sent at OPEN (once)
        report["rebuilds"] = lm.rebuilds  # server sessions lost (restart, expiry) and replayed
    print(f"[{report['new_tokens']} tokens, prefill {prefill_bytes} B for "
          f"{len(prompt_ids)} tokens, {report['bytes_per_token']:.1f} B/token while decoding, "
          f"{report['bits_per_element']:.2f} bits/element, "
          f"{report['tokens_per_s']:.1f} tokens/s"
          + (f", codec context {report['context_bytes']} B at OPEN"
             if report.get("context_bytes") else "")
          + (f", server session rebuilt {report['rebuilds']}x" if report.get("rebuilds")
             else "")
          + (f", parameters held {held / 1e6:.1f} MB of {whole / 1e6:.1f} MB" if whole
             else "") + "]", file=sys.stderr)
    write_json(report, args.json, indent=2)
    return 0
