"""Serve model tails to edge clients: ``splitcomp serve --model mobilenet_v2 --split S``.

Each deployment is a zoo model cut at a split point; clients run the head, send the codec
bitstream, and get the tail's output back (protocol: docs/protocol.md). ``--deploy`` adds
more deployments to the same server; ``--checkpoint CKPT_DIR`` serves a trained bottleneck
(``splitcomp train bottleneck``: the edge sends compact ``bottleneck`` streams).
``--llm smollm2 --llm-split 15`` serves the server half of a causal LM to
``splitcomp generate --server`` clients (LLM sessions: docs/protocol.md).
``--plan FILE`` serves what ``splitcomp plan`` chose, whatever its kind; ``--device cuda``
(or ``auto``) runs tails, decoders and LLM sessions on the GPU.
Prometheus metrics: ``GET /metrics`` on the same port (with ``--tokens``, for a valid token
unless ``--metrics-public``). Clients share the worker fairly; the limits per client (requests
and bytes in flight) and per connection (answer bytes left unread) are flags below.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import re
import sys
from typing import IO, TYPE_CHECKING

import torch

from ..runtime.deployment import Deployment, zoo_deployment
from ..runtime.llm.contexts import MAX_CONTEXT_BYTES
from ..runtime.server import Server
from ._checks import (
    bind_problem,
    check_port_free,
    check_splits,
    check_weights,
    codec_name,
    lm_name,
    load_tokens,
    require_file,
    zoo_config,
)
from ._common import UsageError, standalone
from ._device import add_device, checked_device
from ._llm_args import add_session_limits, session_limits

if TYPE_CHECKING:
    from ..plan.planfile import Plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo model name (e.g. mobilenet_v2, resnet20)")
    p.add_argument("--split", help="where to cut: a module path such as features.14")
    p.add_argument("--codec", default=None,
                   help="comma-separated codecs the deployment accepts (default: any; the "
                        "bitstream names its codec)")
    p.add_argument("--deployment", default=None,
                   help="name clients use for this deployment (default: the model name)")
    p.add_argument("--weights", default="default",
                   help="'default' (offline default weights), 'random', or a weights file")
    p.add_argument("--plan", default=None, metavar="FILE",
                   help="serve what a plan file from `splitcomp plan --plan-out` chose: a "
                        "split (its cut and codec), a trained checkpoint, raw-pixel offload "
                        "(MODEL-full) or JPEG/WebP input (MODEL-jpeg: the server decodes the "
                        "file and runs the whole model). A device plan (all on the edge) needs "
                        "no server: serve says so in one line and exits 0 (nothing failed)")
    add_device(p, "tails, decoders and LLM sessions")
    p.add_argument("--checkpoint", action="append", default=[], metavar="CKPT_DIR",
                   help="serve a trained bottleneck checkpoint (repeatable), named after its "
                        "folder; clients run its edge model and send compact bottleneck streams")
    p.add_argument("--tail", default=None, metavar="NAME",
                   help="which tail of a multi-tail (--also) checkpoint to serve (default: the "
                        "primary model's); 'all': one deployment FOLDER.MODEL per tail, each "
                        "taking the same bitstream; 'A+B': one deployment running both tails "
                        "on one decoded latent, answering with both outputs")
    p.add_argument("--deploy", action="append", default=[], metavar="NAME=MODEL:SPLIT[:CODECS]",
                   help="another deployment (repeatable), e.g. r20=resnet20:layer2:slicer")
    g = p.add_argument_group("LLM sessions")
    g.add_argument("--llm", default=None, metavar="MODEL",
                   help="serve the server half of this causal LM (smollm2, llama_tiny, gpt2_tiny "
                        "or a Hugging Face folder). From a folder of safetensors (smollm2's "
                        "converted one, or a folder given by path) only the server side is "
                        "loaded: blocks [K, L), norm, LM head (the embeddings only as a tied "
                        "head); models built in code (llama_tiny, gpt2_tiny) and "
                        "--llm-weights random load whole. The startup line shows the "
                        "parameter bytes held of the whole model's")
    g.add_argument("--llm-split", type=int, default=None, metavar="K",
                   help="the server runs blocks [K, L), norm and LM head")
    g.add_argument("--llm-deployment", default=None, help="its name (default: the model name)")
    g.add_argument("--codec-context", action="append", default=[], metavar="FILE",
                   help="a codec context file the server holds (from `splitcomp calibrate-lm`): "
                        "sessions naming it by digest need not upload it (repeatable)")
    g.add_argument("--param", action="append", default=[], metavar="context=FILE",
                   help="the same as --codec-context FILE, in the form generate and eval-lm "
                        "take (repeatable)")
    add_session_limits(g)
    g.add_argument("--llm-weights", default="auto",
                   help="'auto' (real weights where the model has them), 'random', or a path")
    g.add_argument("--llm-codec", default=None,
                   help="comma-separated codecs the LLM deployment accepts (default: any)")
    g.add_argument("--max-kv-bytes", type=int, default=2 << 30,
                   help="cap on the KV caches of all sessions together (0: no cap)")
    g.add_argument("--session-idle-timeout", type=float, default=300.0,
                   help="seconds before an unused session is freed")
    g.add_argument("--max-sessions", type=int, default=4096)
    g.add_argument("--max-context-bytes", type=int, default=MAX_CONTEXT_BYTES,
                   help="largest codec context (tokenwise) a client may send at OPEN")
    g.add_argument("--max-contexts", type=int, default=64,
                   help="distinct codec contexts held at most (kept or in use)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8765, help="port (0: pick a free one)")
    p.add_argument("--tokens", default=None, help="tokens file: one 'client_id token' a line, "
                   "tokens of 16 characters or more (docs/protocol.md)")
    p.add_argument("--tls-cert", default=None, help="certificate (PEM) to serve wss://")
    p.add_argument("--tls-key", default=None, help="private key (PEM) of --tls-cert")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--max-frame-bytes", type=int, default=16 << 20)
    p.add_argument("--transport", choices=("websockets", "picows", "asyncio"), default=None,
                   help="WebSocket implementation, same wire bytes (default: the fastest "
                        "installed; docs/transport.md)")
    g = p.add_argument_group("limits and fairness (docs/protocol.md)")
    g.add_argument("--max-inflight-per-client", type=int, default=256,
                   help="requests a client (token; without tokens: session or connection) may "
                        "have queued or running; OVERLOADED beyond")
    g.add_argument("--max-inflight-bytes-per-client", type=int, default=64 << 20,
                   help="request bytes a client may have queued or running; OVERLOADED beyond")
    g.add_argument("--max-batch-bytes", type=int, default=8 << 20,
                   help="request bytes per batch (at least one request)")
    g.add_argument("--fair-grace-ms", type=float, default=5.0,
                   help="how long a client just served keeps its fair turn while its next "
                        "request travels (0: batches fill in fair order regardless)")
    g.add_argument("--output-pause-bytes", type=int, default=1 << 20,
                   help="unread answer bytes on a connection above which its requests are "
                        "no longer read")
    g.add_argument("--max-output-bytes", type=int, default=32 << 20,
                   help="unread answer bytes on a connection above which it is closed (1008)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds in the queue")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 makes per-request CPU accounting exact)")
    p.add_argument("--metrics-public", action="store_true",
                   help="serve /metrics without a token (with --tokens it needs one otherwise)")
    p.add_argument("--metrics-private", action="store_true", help=argparse.SUPPRESS)  # default
    p.add_argument("--backend", choices=("embedded", "ray"), default="embedded",
                   help="embedded (one asyncio process) or ray (Ray Serve; pip install .[ray]; "
                        "docs/scale-out.md)")
    p.add_argument("--num-replicas", type=int, default=1, help="ray: replicas of the tails")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="ray: CPUs per replica")
    p.add_argument("--ray-address", default=None,
                   help="ray: cluster to join (e.g. auto, or HEAD_IP:6379; default: start one)")
    p.add_argument("--route", default="/splitcomp", help="ray: HTTP route taking request frames")


def _deploy_specs(args: argparse.Namespace) -> list[tuple[str, str, str, list[str] | None]]:
    specs = []
    if args.model or args.split:
        if not (args.model and args.split):
            raise SystemExit("--model and --split go together")
        codecs = args.codec.split(",") if args.codec else None
        specs.append((args.deployment or args.model, args.model, args.split, codecs))
    plan = _plan(args)
    if plan is not None and plan.kind == "split":
        specs.append(_plan_spec(args))
    for spec in args.deploy:
        name, eq, rest = spec.partition("=")
        parts = rest.split(":")
        if not eq or len(parts) not in (2, 3) or not all(parts[:2]):
            raise SystemExit(f"--deploy {spec!r}: expected NAME=MODEL:SPLIT[:CODECS]")
        codecs = parts[2].split(",") if len(parts) == 3 and parts[2] else None
        specs.append((name, parts[0], parts[1], codecs))
    if not specs and not getattr(args, "llm", None) and not _checkpoints(args) \
            and not (plan is not None and plan.kind in _WHOLE_MODEL):
        if plan is not None and plan.kind == "device":
            raise SystemExit(device_plan_line(args))
        raise SystemExit("nothing to serve: give --model and --split, --deploy, --checkpoint "
                         "or --llm")
    return specs


#: plan kinds served as the whole model on what the edge sends (raw pixels, an image file)
_WHOLE_MODEL = ("offload", "input")


def _plan(args: argparse.Namespace) -> Plan | None:
    """The ``--plan`` file, read once (None without one); a file that is not a plan is a
    usage error."""
    path = getattr(args, "plan", None)
    if not path:
        return None
    cached = getattr(args, "_plan_file", None)
    if cached is not None:
        return cached
    from ..plan.planfile import load_plan

    require_file(path, "--plan")
    try:
        plan = load_plan(path)
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"--plan {path}: not a plan file of `splitcomp plan --plan-out` "
                         f"({str(e).splitlines()[0][:160]})") from None
    known = ("split", "trained", "device", *_WHOLE_MODEL)
    if plan.kind not in known:
        raise UsageError(f"--plan {path}: unknown plan kind {plan.kind!r} (one of "
                         f"{', '.join(known)})")
    args._plan_file = plan
    return plan


def device_plan_line(args: argparse.Namespace) -> str:
    """What serve says of a device plan: nothing leaves the edge, so nothing is served."""
    plan = _plan(args)
    return (f"--plan {args.plan}: {plan.model} runs entirely on the edge device (a 'device' "
            "plan): there is nothing to serve")


def _device_only(args: argparse.Namespace) -> bool:
    """A device plan and nothing else asked for."""
    plan = _plan(args)
    return (plan is not None and plan.kind == "device" and not args.model and not args.split
            and not args.deploy and not getattr(args, "llm", None)
            and not getattr(args, "checkpoint", None))


def _plan_spec(args: argparse.Namespace) -> tuple[str, str, str, list[str] | None]:
    """The deployment a split plan file describes (its model and weights, split and codec)."""
    plan = _plan(args)
    if plan.kind != "split" or not plan.split or not plan.codec:
        raise SystemExit(f"--plan {args.plan}: a {plan.kind!r} plan has no split to serve")
    if plan.weights:
        args.weights = plan.weights
    return (plan.deployment or plan.model, plan.model, plan.split, [plan.codec])


def _plan_whole_model(args: argparse.Namespace) -> list[Deployment]:
    """The deployment of an ``offload`` plan (raw pixels) or an ``input`` plan (JPEG/WebP
    files decoded on the server), each running the whole model; none for other plans."""
    plan = _plan(args)
    if plan is None or plan.kind not in _WHOLE_MODEL:
        return []
    from ..plan.planfile import deployment_name
    from ..runtime.fulloffload import zoo_full_offload, zoo_image_input

    weights = _check_whole_model(args, plan)
    name = plan.deployment or deployment_name(plan.kind, plan.model, plan.codec)
    opts = dict(weights=weights, name=name, max_batch_size=args.max_batch_size,
                max_wait_ms=args.max_wait_ms, device=args.device)
    if plan.kind == "offload":
        return [zoo_full_offload(plan.model, **opts)]
    return [zoo_image_input(plan.model, (plan.codec,), **opts)]


def _check_whole_model(args: argparse.Namespace, plan: Plan) -> str:
    """An offload or input plan's model, weights and image format, checked before any model
    loads; returns the weights to load."""
    from ..runtime.fulloffload import IMAGE_FORMATS

    zoo_config(plan.model)
    weights = plan.weights or args.weights
    check_weights(plan.model, weights)
    if plan.kind == "input" and plan.codec not in IMAGE_FORMATS:
        raise UsageError(f"--plan {args.plan}: input format {plan.codec!r} is not one the "
                         f"server decodes ({', '.join(IMAGE_FORMATS)})")
    return weights


def _plan_checkpoint(args: argparse.Namespace) -> str | None:
    """The checkpoint folder a ``trained`` plan file chose (None: another plan, or none)."""
    plan = _plan(args)
    if plan is None or (plan.kind != "trained" and not plan.checkpoint):
        return None
    if not plan.checkpoint:
        raise SystemExit(f"--plan {args.plan}: a trained plan without its checkpoint folder")
    return plan.checkpoint


def _checkpoints(args: argparse.Namespace) -> list[str]:
    """``--checkpoint`` folders, then the one a trained ``--plan`` chose."""
    plan = _plan_checkpoint(args)
    return [*getattr(args, "checkpoint", []), *([plan] if plan else [])]


def _checkpoint_deployments(args: argparse.Namespace) -> list[Deployment]:
    """One deployment per checkpoint (per tail with ``--tail all``)."""
    from ..runtime.trained import checkpoint_deployments
    from ..train import CheckpointError

    tail = getattr(args, "tail", None)
    if tail and not _checkpoints(args):
        raise SystemExit("--tail picks a tail of a --checkpoint")
    out: list[Deployment] = []
    for folder in _checkpoints(args):
        try:
            deps, _edge, _codec = checkpoint_deployments(
                folder, "all" if tail == "all" else (tail,),
                max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                device=args.device)
        except (CheckpointError, ValueError) as e:
            raise SystemExit(f"--checkpoint {folder}: {e}") from None
        out.extend(deps)
    return out


def _check(args: argparse.Namespace, specs: list[tuple[str, str, str, list[str] | None]]
           ) -> None:
    """What can be checked before any model is built: names and files (the port: in
    :func:`run`, which binds it)."""
    plan = _plan(args)
    if plan is not None and plan.kind in _WHOLE_MODEL:
        _check_whole_model(args, plan)
    for _name, model, _at, codecs in specs:
        zoo_config(model)
        for c in codecs or ():
            codec_name(c)
    for model in dict.fromkeys(m for _, m, _, _ in specs):
        check_weights(model, args.weights)
        check_splits(model, [at for _, m, at, _ in specs if m == model])
    if getattr(args, "llm", None):
        if args.llm_split is None:
            raise UsageError("--llm needs --llm-split K")
        lm_name(args.llm, "--llm")
    for c in (getattr(args, "llm_codec", None) or "").split(","):
        if c:
            codec_name(c, "--llm-codec")
    require_file(args.tls_cert, "--tls-cert")
    require_file(args.tls_key, "--tls-key")


def build_server(args: argparse.Namespace) -> Server:
    """The server the arguments describe (models built and split, not started)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    specs = _deploy_specs(args)
    tokens = load_tokens(args.tokens)  # a bad tokens file: before any model is loaded
    _check(args, specs)
    args.device = checked_device(getattr(args, "device", "cpu"))
    deployments: list[Deployment] = []
    for name, model, at, codecs in specs:
        dep, _head = zoo_deployment(model, at, weights=args.weights, name=name, codecs=codecs,
                                    max_batch_size=args.max_batch_size,
                                    max_wait_ms=args.max_wait_ms, device=args.device)
        deployments.append(dep)
    deployments.extend(_plan_whole_model(args))
    deployments.extend(_checkpoint_deployments(args))
    return Server(deployments, args.host, args.port, tokens=tokens, llm=_llm(args),
                  tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
                  max_frame_bytes=args.max_frame_bytes,
                  max_inflight_per_client=args.max_inflight_per_client,
                  max_inflight_bytes_per_client=args.max_inflight_bytes_per_client,
                  max_batch_bytes=args.max_batch_bytes, fair_grace_ms=args.fair_grace_ms,
                  output_pause_bytes=args.output_pause_bytes,
                  max_output_bytes=args.max_output_bytes,
                  request_timeout_s=args.request_timeout, transport=args.transport,
                  metrics_public=args.metrics_public and not args.metrics_private)


def _llm(args: argparse.Namespace) -> list:
    """The LLM deployment ``--llm`` describes (none without it)."""
    if not getattr(args, "llm", None):
        return []
    if args.llm_split is None:
        raise SystemExit("--llm needs --llm-split K")
    from pathlib import Path

    from ..llm.halves import ServerHalf
    from ..llm.partial import held_bytes, partial_model, side_bytes, side_folder
    from ..llm.text import load_lm
    from ..runtime.llm.service import LLMDeployment
    from ._llm_args import context_files, load_codec_contexts

    load_codec_contexts(args.codec_context + context_files(args.param))
    weights = None if args.llm_weights == "random" else args.llm_weights
    folder = side_folder(args.llm, weights)
    try:
        if folder is not None:  # only blocks [K, L), the norm and the head are read
            model = partial_model(folder, args.llm_split, "server")
        else:  # a model built in code, or random weights: the whole model
            model, _ = load_lm(args.llm, weights)
        half = ServerHalf(model, args.llm_split)
    except ValueError as e:
        flag = "--llm-split" if str(e).startswith("split ") else f"--llm {args.llm}"
        raise SystemExit(f"{flag}: {e}") from None
    return [LLMDeployment(args.llm_deployment or Path(args.llm).name, half,
                          codecs=args.llm_codec.split(",") if args.llm_codec else None,
                          max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                          max_kv_bytes=args.max_kv_bytes or None,
                          idle_timeout_s=args.session_idle_timeout,
                          max_sessions=args.max_sessions,
                          max_context_bytes=args.max_context_bytes,
                          max_contexts=args.max_contexts, **session_limits(args),
                          device=getattr(args, "device", "cpu"), held_bytes=held_bytes(model),
                          model_bytes=side_bytes(model, args.llm_split)["whole"])]


def read_listening_url(stream: IO[str], max_lines: int = 50) -> str | None:
    """The URL a ``splitcomp serve`` process announces (``listening on URL ...``), read from
    its stdout; None when it did not say so within ``max_lines`` lines (it failed to start)."""
    for _ in range(max_lines):
        m = re.match(r"listening on (\S+)", stream.readline())
        if m:
            return m.group(1)
    return None


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if _device_only(args):  # nothing leaves the edge: no server, and that is no failure
        print(device_plan_line(args))
        return 0
    args.device = checked_device(getattr(args, "device", "cpu"))
    check_port_free(args.host, args.port)  # before any model is loaded
    if getattr(args, "backend", "embedded") == "ray":
        if args.device != "cpu":
            raise UsageError(f"--device {args.device}: the embedded backend only (Ray "
                             "replicas run on the CPU here)")
        plan = _plan(args)
        if plan is not None and plan.kind in _WHOLE_MODEL:
            raise UsageError(f"--plan {args.plan}: an {plan.kind!r} plan is served by the "
                             "embedded backend only")
        from ..runtime.ray_backend import run_cli

        llm = None
        if getattr(args, "llm", None):
            if args.llm_split is None:
                raise SystemExit("--llm needs --llm-split K")
            if args.num_replicas != 1:
                raise SystemExit("--llm on Ray: LLM sessions live in the replica that opened "
                                 "them; use --num-replicas 1")
            llm = functools.partial(_llm, args)  # built in the replica
        if _checkpoints(args):
            raise SystemExit("--checkpoint / a trained --plan: the embedded backend only")
        specs = _deploy_specs(args)
        load_tokens(args.tokens)
        _check(args, specs)
        return run_cli(args, specs, llm)
    try:
        server = build_server(args)
    except ValueError as e:  # e.g. two deployments under one name
        raise UsageError(str(e)) from None
    try:
        asyncio.run(server.serve_forever(announce=True))
    except OSError as e:  # the port taken since the check
        if e.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise UsageError(bind_problem(args.host, args.port, e)) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m splitcomp.cli.serve`` (same as ``splitcomp serve``)."""
    return standalone("serve", sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
