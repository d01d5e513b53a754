"""A deployment: one tail served under a name (the vision :class:`~.service.Service`). Decodes a
batch of bitstreams, groups them by per-sample shapes, runs the tail once per group, splits the
outputs and encodes each result.

:meth:`Deployment.run_batch` is synchronous, transport-free and thread-confined (one call at a
time), so the embedded server runs it in a worker thread (:meth:`Deployment.run`) and a Ray
Serve replica calls it the same way (:func:`~.handler.handle_frames`). It only reads bitstream
headers before handing the bytes to the codec, and checks them first: a request may cost the
server no more than the largest input its tail takes (:attr:`Deployment.decode_limits`). A
batch decodes in one call (:mod:`.batch_decode`): every header of the batch is checked before
any payload, and codecs with a raw form are dequantized in torch on the tail's device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import codecs as _codecs
from ..codecs import BitstreamError, DecodeLimits, Header
from ..codecs.resilient import concealing
from . import protocol as P
from .batch_decode import BatchDecoder, request_error
from .batch_encode import encode_rows
from .device import OnDevice, resolve_device
from .errors import RequestError
from .protocol import ErrorCode
from .service import BatchResult, QueueCheck, Service, Work, register_service

#: threads of a deployment's decode pool (0: decode in its worker thread): see
#: ``benchmarks/serve_load.py`` for what a pool gains with each codec
DECODE_THREADS = 0


@dataclass(frozen=True)
class InputSpec:
    """What the tail takes for one crossing tensor: dtype, and the per-sample shape (the shape
    without the batch dimension), or None when it may vary (e.g. sequence length)."""

    dtype: torch.dtype
    sample_shape: tuple[int, ...] | None
    ndim: int


@dataclass
class Reply:
    """One request's outcome: ``result`` (a codec bitstream) or ``error``, and its figures."""

    result: bytes | None = None
    error: RequestError | None = None
    batch_size: int = 0  #: samples in the tail call that computed it
    decode_s: float = 0.0  #: this request's header check and decode
    tail_s: float = 0.0  #: the whole tail call it took part in


@dataclass
class BatchReport:
    """What one :meth:`Deployment.run_batch` did, for accounting (seconds, wall unless cpu)."""

    replies: list[Reply]
    tail_calls: list[int] = field(default_factory=list)  #: samples per tail call
    decode_s: float = 0.0
    decode_cpu_s: float = 0.0  #: CPU of the calling thread (and the decode pool) decoding
    tail_s: float = 0.0
    tail_cpu_s: float = 0.0  #: CPU of the calling thread during tail calls
    encode_s: float = 0.0  #: stacking, splitting and result encoding
    worker_cpu_s: float = 0.0  #: filled in by a caller that measures its whole batch


def _as_outputs(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, Mapping):
        out = tuple(out.values())
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(out)
    raise TypeError(f"tail returned {type(out).__name__}, not tensors")


def cat_rows(parts: Sequence[torch.Tensor], rows: int) -> torch.Tensor:
    """``torch.cat(parts)`` of ``parts`` of one dtype and one per-sample shape (``rows`` rows
    in all), without the copy when they are adjacent contiguous views of one contiguous
    tensor, in order (a batch decoded in one call, :mod:`.batch_decode`): a view of it."""
    first = parts[0]
    base = first._base
    if base is None or first.dim() == 0 or not base.is_contiguous():
        return torch.cat(parts)
    end = first.data_ptr()
    for p in parts:
        if p._base is not base or p.data_ptr() != end or not p.is_contiguous():
            return torch.cat(parts)
        end += p.nbytes
    shape, strides, step = (rows, *first.shape[1:]), [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return first.as_strided(shape, strides[::-1])


def limits_for(specs: Sequence[InputSpec] | None, max_samples: int,
               base: DecodeLimits = _codecs.DEFAULT_LIMITS) -> DecodeLimits:
    """Decode limits of a tail taking ``specs`` with at most ``max_samples`` samples a request,
    within ``base``: as many tensors and dimensions as the tail takes, and, when every per-sample
    shape is fixed, as many elements as ``max_samples`` samples hold.

    What bounds a hostile stream: an entropy-coded payload of a few bytes may claim any shape
    (an all-zero tensor costs no bits), and decoding costs what the shape claims.
    """
    if not specs:
        return base
    elements = base.max_elements
    if all(s.sample_shape is not None for s in specs):
        per_sample = sum(math.prod(s.sample_shape) for s in specs)  # type: ignore[arg-type]
        elements = min(elements, max(per_sample, 1) * max(max_samples, 1))
    return DecodeLimits(max_elements=elements, max_tensors=min(base.max_tensors, len(specs)),
                        max_ndim=min(base.max_ndim, max(s.ndim for s in specs)),
                        max_bytes=base.max_bytes)


def specs_from_split(tail: nn.Module) -> tuple[InputSpec, ...] | None:
    """Input specs from a tail made by :func:`splitcomp.partition.split` (None otherwise).

    Per-sample shapes are enforced for fx-traced tails (vision models, fixed input size);
    exported tails (language models) may take other sequence lengths, so only dtypes and
    ranks are checked there.
    """
    info = getattr(tail, "split_info", None)
    if info is None:
        return None
    fixed = info.backend == "fx"
    return tuple(InputSpec(c.dtype, tuple(c.shape[1:]) if fixed else None, len(c.shape))
                 for c in info.crossing)


@register_service
class Deployment(Service):
    """A named tail with its batching and acceptance rules.

    ``codecs``: names of the codecs whose bitstreams are accepted (None: any registered one).
    ``limits``: decode limits per bitstream, tightened to what the tail takes
    (:attr:`decode_limits`). ``input_specs``: ``"auto"`` (from the tail's
    ``split_info``), None (no check) or one :class:`InputSpec` per tail input.
    ``max_request_samples``: the largest batch one request may carry (TOO_LARGE beyond).
    ``result_codec``: how results travel back; ``fp32`` (lossless, the default) or ``fp16``.
    ``allowed_clients``: client ids (from the tokens file) allowed to use it (None: all).
    ``device``: where the tail runs, ``cpu`` (default), ``cuda`` or ``auto``
    (:func:`~.device.resolve_device`; :class:`~.device.DeviceError` for a missing GPU);
    off the CPU each batch travels through pinned memory and its outputs come back to the
    CPU for encoding (:class:`~.device.OnDevice`).
    ``batch_decode``: decode each batch in one call (:mod:`.batch_decode`: headers checked
    first, raw codecs dequantized on ``device``, the rest in a pool of ``decode_threads``,
    0: none); False decodes request by request (the former path, kept to compare).
    """

    def __init__(self, name: str, tail: nn.Module | Callable[..., Any], *,
                 codecs: Iterable[str] | None = None,
                 limits: DecodeLimits | None = None,
                 max_batch_size: int = 32, max_wait_ms: float = 2.0,
                 max_request_samples: int = 256,
                 input_specs: Sequence[InputSpec] | str | None = "auto",
                 result_codec: str = "fp32",
                 allowed_clients: Iterable[str] | None = None,
                 device: str | torch.device | None = "cpu",
                 batch_decode: bool = True, decode_threads: int = DECODE_THREADS) -> None:
        super().__init__(name, codecs=codecs, limits=limits, max_batch_size=max_batch_size,
                         max_wait_ms=max_wait_ms, allowed_clients=allowed_clients)
        self.device = resolve_device(device)
        self.tail = tail
        if isinstance(tail, nn.Module):
            tail.eval()
        elif self.device.type != "cpu":
            raise ValueError(f"{name}: only an nn.Module tail can run on {self.device}")
        self.max_request_samples = max_request_samples
        self.concealed_slices = 0  #: resilient slices concealed so far (bit errors survived)
        if input_specs == "auto":
            self.input_specs = specs_from_split(tail) if isinstance(tail, nn.Module) else None
        elif isinstance(input_specs, str):
            raise ValueError(f"input_specs: 'auto', None or a sequence, not {input_specs!r}")
        else:
            self.input_specs = tuple(input_specs) if input_specs is not None else None
        if self.device.type != "cpu":
            self.tail = OnDevice(tail, self.device)  # type: ignore[arg-type]
        if result_codec not in ("fp32", "fp16"):
            raise ValueError("result_codec must be 'fp32' (lossless) or 'fp16'")
        self.result_codec = _codecs.get(result_codec)
        self.batch_decode = batch_decode
        self.decoder = BatchDecoder(self.device, decode_threads)

    frame_type = P.TYPE_REQUEST

    def __repr__(self) -> str:
        return (f"Deployment({self.name!r}, max_batch_size={self.max_batch_size}, "
                f"max_wait_ms={self.max_wait_ms}, codecs={sorted(self.codecs or []) or 'any'}, "
                f"device={self.device})")

    # -- the Service interface -------------------------------------------------------
    parse = staticmethod(P.parse_request)

    @classmethod
    def route(cls, request: P.Request, services: Sequence[Service]) -> Service | RequestError:
        for s in services:
            if s.name == request.deployment:
                return s
        return RequestError(ErrorCode.UNKNOWN_DEPLOYMENT, f"no deployment {request.deployment!r} "
                            f"(serving {', '.join(s.name for s in services)})")

    @classmethod
    def dedup_scope(cls, request: P.Request) -> str:
        return request.deployment

    def admit(self, client_id: str, request: P.Request, check_queue: QueueCheck) -> memoryview:
        check_queue()
        return request.bitstream

    def run(self, batch: Sequence[Work], start: float) -> BatchResult:
        """Run one batch; the answer frames carry each request's time in the queue."""
        return self.answer([w.request_id for w in batch], [w.payload for w in batch],
                           [start - w.arrival for w in batch])

    def answer(self, request_ids: Sequence[int], bitstreams: Sequence[bytes | memoryview],
               queue_s: Sequence[float] | None = None) -> BatchResult:
        """:meth:`run_batch`, then one response frame per request (result or typed error), in
        order. ``queue_s``: how long each waited (sent back)."""
        c0 = time.thread_time()
        report = self.run_batch(bitstreams)
        frames, errors = [], []
        for i, (rid, r) in enumerate(zip(request_ids, report.replies, strict=True)):
            if r.error is None:
                assert r.result is not None
                frames.append(P.encode_result(rid, r.result, r.batch_size,
                                              queue_s[i] if queue_s is not None else 0.0,
                                              r.decode_s, r.tail_s))
                errors.append(None)
            else:
                frames.append(P.encode_error(rid, r.error.code, r.error.message))
                errors.append(r.error.code)
        return BatchResult(frames, errors, report.tail_calls, report.decode_s,
                           report.decode_cpu_s, report.tail_s, report.tail_cpu_s,
                           report.encode_s, time.thread_time() - c0)

    # -- one request -----------------------------------------------------------------
    @property
    def decode_limits(self) -> DecodeLimits:
        """The limits a bitstream must fit, checked on its header before any payload is
        decoded: :attr:`limits` tightened to the tail's inputs and ``max_request_samples``
        (:func:`limits_for`). A tail without fixed per-sample shapes keeps ``limits``' element
        bound: pass tighter ``limits`` to bound it."""
        return limits_for(self.input_specs, self.max_request_samples, self.limits)

    def check_header(self, header: Header) -> int:
        """Validate a bitstream header against this deployment (codec, tensors, batch size,
        then the elements of :attr:`decode_limits`); returns its batch size."""
        self.check_codec(header)
        batch = self.check_inputs([(t.dtype, tuple(t.shape)) for t in header.tensors])
        elements = sum(t.numel for t in header.tensors)
        limit = self.decode_limits.max_elements
        if elements > limit:
            raise RequestError(ErrorCode.TOO_LARGE, f"{elements} elements exceed the {limit} "
                               f"this deployment takes per request")
        return batch

    def check_inputs(self, tensors: Sequence[tuple[torch.dtype, tuple[int, ...]]]) -> int:
        """Validate (dtype, shape) of each tensor sent against the tail's inputs; returns the
        request's batch size."""
        if not tensors or any(len(shape) == 0 for _, shape in tensors):
            raise RequestError(ErrorCode.BAD_INPUT, "expected batched tensors (ndim >= 1)")
        specs = self.input_specs
        if specs is not None:
            if len(tensors) != len(specs):
                raise RequestError(ErrorCode.BAD_INPUT,
                                   f"{len(tensors)} tensors sent, the tail takes {len(specs)}")
            for i, ((dtype, shape), s) in enumerate(zip(tensors, specs, strict=True)):
                if dtype != s.dtype or len(shape) != s.ndim or (
                        s.sample_shape is not None and shape[1:] != s.sample_shape):
                    want = ("B", *s.sample_shape) if s.sample_shape is not None else f"{s.ndim}-d"
                    raise RequestError(ErrorCode.BAD_INPUT, f"tensor {i}: got {dtype} {shape}, "
                                       f"the tail takes {s.dtype} {want}")
        batch = tensors[0][1][0]
        if batch > self.max_request_samples:
            raise RequestError(ErrorCode.TOO_LARGE, f"batch of {batch} samples exceeds "
                               f"{self.max_request_samples} per request")
        return batch

    def decode(self, data: bytes | memoryview) -> tuple[torch.Tensor, ...]:
        """Decode one bitstream that fits the tail; raises :class:`RequestError`.

        The header (parsed under :attr:`limits`) is checked by :meth:`check_header` before
        any payload is decoded, allow-list or not: no decoder of a codec not accepted runs, and
        none works on more than the tail takes (the decoded shapes are the header's). A
        ``resilient`` stream's slices that fail their checks are concealed (a bit error costs
        a slice, not the request), counted in :attr:`concealed_slices`.
        """
        try:
            with concealing() as counter:
                out = _codecs.decode(data, self.limits, check=self.check_header)
            self.concealed_slices += counter.slices
            return out
        except BitstreamError as e:
            raise RequestError(ErrorCode.BAD_BITSTREAM, str(e)) from None

    def close(self) -> None:
        """Stop the decode pool's threads."""
        self.decoder.close()

    # -- a batch ---------------------------------------------------------------------
    def run_batch(self, bitstreams: Sequence[bytes | memoryview]) -> BatchReport:
        """Decode, group, run the tail once per group (at most ``max_batch_size`` samples a
        call), split and encode. Never raises for a bad request: each gets its own error.

        A subclass that overrides :meth:`decode` keeps it: its batches decode request by
        request, as with ``batch_decode=False``."""
        replies = [Reply() for _ in bitstreams]
        report = BatchReport(replies)
        groups: dict[Any, list[int]] = {}
        c0 = time.thread_time()
        if self.batch_decode and type(self).decode is Deployment.decode:
            t0 = time.perf_counter()
            batch = self.decoder.decode(bitstreams, self.limits, self.check_header)
            self.concealed_slices += batch.concealed
            inputs = batch.inputs
            report.decode_s = time.perf_counter() - t0
            for r, e in zip(replies, batch.errors, strict=True):
                r.error, r.decode_s = e, report.decode_s / max(len(replies), 1)
            pool_cpu_s = batch.pool_cpu_s
        else:
            inputs = [self._decode_one(data, r, report) for data, r in zip(bitstreams, replies,
                                                                           strict=True)]
            pool_cpu_s = 0.0
        for i, tensors in enumerate(inputs):
            if tensors is None:
                continue
            n = tensors[0].shape[0]
            if all(t.dim() >= 1 and t.shape[0] == n for t in tensors):
                key: Any = tuple((t.dtype, tuple(t.shape[1:])) for t in tensors)
            else:
                key = ("alone", i)  # not batch-first: never stacked with others
            groups.setdefault(key, []).append(i)
        report.decode_cpu_s = time.thread_time() - c0 + pool_cpu_s
        for members in groups.values():
            for call in self._chunks(members, inputs):
                self._run_call(call, inputs, report, bitstreams)
        return report

    def _decode_one(self, data: bytes | memoryview, reply: Reply,
                    report: BatchReport) -> tuple[torch.Tensor, ...] | None:
        """One request by :meth:`decode`: its tensors, or None with ``reply.error`` set."""
        t0 = time.perf_counter()
        try:
            tensors = self.decode(data)
        except Exception as e:  # a codec bug must not take the batch down
            reply.error, tensors = request_error(e), None
        reply.decode_s = time.perf_counter() - t0
        report.decode_s += reply.decode_s
        return tensors

    def _chunks(self, members: list[int], inputs: list) -> list[list[int]]:
        calls: list[list[int]] = [[]]
        size = 0
        for i in members:
            n = inputs[i][0].shape[0]
            if calls[-1] and size + n > self.max_batch_size:
                calls.append([])
                size = 0
            calls[-1].append(i)
            size += n
        return calls

    def _run_call(self, call: list[int], inputs: list, report: BatchReport,
                  bitstreams: Sequence[bytes | memoryview] = ()) -> None:
        replies = report.replies
        t0 = time.perf_counter()
        sizes = [inputs[i][0].shape[0] for i in call]
        if len(call) == 1:
            stacked = inputs[call[0]]
        else:
            rows = sum(sizes)
            stacked = tuple(cat_rows(parts, rows) for parts in zip(*(inputs[i] for i in call),
                                                                       strict=True))
        t1 = time.perf_counter()
        c1 = time.thread_time()
        try:
            with torch.inference_mode():
                outputs = _as_outputs(self.tail(*stacked))
            error = None
        except Exception as e:
            outputs, error = (), e
        t2 = time.perf_counter()
        report.tail_cpu_s += time.thread_time() - c1
        report.tail_s += t2 - t1
        total = sum(sizes)
        report.tail_calls.append(total)
        if error is not None or (len(call) > 1 and not all(
                o.dim() >= 1 and o.shape[0] == total for o in outputs)):
            if len(call) > 1:  # isolate the request that breaks the tail: run each alone
                report.encode_s += t1 - t0
                report.tail_calls.pop()
                if bitstreams and any(t._base is not None for t in stacked):
                    for i in call:  # the tail had their rows, not a copy: decode them again
                        inputs[i] = self._decode_one(bitstreams[i], Reply(), report) or inputs[i]
                for i in call:
                    self._run_call([i], inputs, report)
                return
            replies[call[0]].error = RequestError(ErrorCode.INTERNAL,
                                                  f"tail failed: {error!r}"[:300])
            replies[call[0]].batch_size, replies[call[0]].tail_s = total, t2 - t1
            return
        try:
            streams = encode_rows(self.result_codec, outputs, sizes)
        except Exception:  # noqa: BLE001 - the per-row path below reports it per request
            streams = None
        if streams is not None:
            for i, stream in zip(call, streams, strict=True):
                r = replies[i]
                r.batch_size, r.tail_s, r.result = total, t2 - t1, stream
            report.encode_s += (t1 - t0) + (time.perf_counter() - t2)
            return
        parts = [outputs] if len(call) == 1 else list(
            zip(*(torch.split(o, sizes) for o in outputs), strict=True))
        for i, out in zip(call, parts, strict=True):
            r = replies[i]
            r.batch_size, r.tail_s = total, t2 - t1
            try:
                r.result = self.result_codec.encode(list(out))
            except Exception as e:
                r.error = RequestError(ErrorCode.INTERNAL, f"result encoding failed: {e!r}"[:300])
        report.encode_s += (t1 - t0) + (time.perf_counter() - t2)


def split_deployment(model: nn.Module, at: str, example_inputs: Any, name: str,
                     **options: Any) -> tuple[Deployment, nn.Module]:
    """Cut ``model`` at ``at`` and serve its tail as ``name``; returns (deployment, head).

    ``options`` go to :class:`Deployment` (codecs, max_batch_size, max_wait_ms, ...).
    """
    from ..partition import split

    model.eval()
    head, tail = split(model, at, example_inputs)
    return Deployment(name, tail, **options), head


def zoo_deployment(model_name: str, at: str, *, weights: str | None = "default",
                   name: str | None = None, **options: Any) -> tuple[Deployment, nn.Module]:
    """A zoo image model cut at ``at``: (deployment named ``name`` or the model's, head).

    ``weights``: ``"default"`` (the offline default weights), ``"random"`` / None (random
    initialisation) or a path.
    """
    from ..zoo import load_model, model_config

    cfg = model_config(model_name)
    if cfg.input_size is None:
        raise ValueError(f"{model_name} does not take images: build it and use split_deployment")
    model = load_model(model_name, None if weights == "default" else (weights or "random"))
    example = torch.zeros(1, *cfg.input_size)
    return split_deployment(model, at, (example,), name or model_name, **options)
