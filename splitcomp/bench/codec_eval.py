"""Rate/accuracy of a codec at a cut, on real data, baseline and compressed in one run.

The head runs once over the data; its outputs (the IFs) are kept in memory. Each sample's
IFs are then encoded into *one bitstream per sample* - what an edge device would send for
one request - decoded, batched and fed to the tail. Every byte of every bitstream counts,
container header and CRC included.

:func:`evaluate_over_channel` sends each stream through a link that flips bits
(:func:`splitcomp.codecs.channel_errors.flip_bits`, seeded per sample) and decodes what
arrives as a server would: a ``resilient`` stream's failed slices are concealed, a rejected
stream is a lost request, scored wrong.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..codecs import BitstreamError, Codec, codec_class, get
from ..codecs.channel_errors import flip_bits, sample_rng
from ..codecs.resilient import decode_resilient

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class FeatureSet:
    """The IFs of every sample (one tuple of CPU tensors per cut tensor, batched) and labels."""

    tensors: tuple[torch.Tensor, ...]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def elements_per_sample(self) -> int:
        return sum(math.prod(t.shape[1:]) for t in self.tensors)

    def sample(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i : i + 1] for t in self.tensors)

    def subset(self, index: torch.Tensor) -> FeatureSet:
        return FeatureSet(tuple(t[index] for t in self.tensors), self.labels[index])


@dataclass
class EvalResult:
    """One row of a rate/accuracy table (the keys of ``splitcomp eval --json``)."""

    model: str
    split: str
    codec: str
    params: dict[str, Any]
    n_images: int
    top1_baseline: float
    top1: float
    drop_pp: float
    bits_per_element: float
    wire_bytes_per_sample: float
    encode_ms: float
    decode_ms: float
    elements_per_sample: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d


@torch.inference_mode()
def collect_features(
    head: nn.Module, batches: Iterable[Batch], progress: Callable[[int], None] | None = None
) -> FeatureSet:
    """Run the head over every batch; keep the IFs (on CPU) and the labels."""
    outs: list[tuple[torch.Tensor, ...]] = []
    labels: list[torch.Tensor] = []
    for x, y in batches:
        out = head(x)
        outs.append(tuple(t.detach().cpu() for t in (out if isinstance(out, tuple) else (out,))))
        labels.append(y.cpu())
        if progress:
            progress(len(y))
    if not outs:
        raise ValueError("no data")
    tensors = tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))
    return FeatureSet(tensors, torch.cat(labels))


@torch.inference_mode()
def top1(tail: nn.Module, tensors: Sequence[torch.Tensor], labels: torch.Tensor, batch: int = 256):
    """Top-1 accuracy (%) of the tail on batched IFs, and the per-sample correctness."""
    correct = []
    for s in range(0, len(labels), batch):
        logits = tail(*(t[s : s + batch] for t in tensors))
        correct.append(logits.argmax(-1) == labels[s : s + batch])
    hits = torch.cat(correct)
    return 100.0 * hits.float().mean().item(), hits


def _through_codec(
    codec: Codec, feats: FeatureSet, progress: Callable[[int], None] | None = None
) -> tuple[tuple[torch.Tensor, ...], int, float, float]:
    """Encode and decode every sample on its own; return decoded IFs, total bytes and times."""
    decoded: list[tuple[torch.Tensor, ...]] = []
    total = 0
    t_enc = t_dec = 0.0
    for i in range(len(feats)):
        sample = feats.sample(i)
        t0 = time.perf_counter()
        data = codec.encode(sample)
        t1 = time.perf_counter()
        out = codec.decode(data)
        t2 = time.perf_counter()
        t_enc += t1 - t0
        t_dec += t2 - t1
        total += len(data)
        decoded.append(out)
        if progress and i % 256 == 255:
            progress(256)
    tensors = tuple(torch.cat([d[j] for d in decoded]) for j in range(len(feats.tensors)))
    return tensors, total, t_enc, t_dec


def evaluate_codec(
    tail: nn.Module,
    feats: FeatureSet,
    codec: Codec,
    *,
    model: str = "",
    split: str = "",
    baseline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Top-1 with and without ``codec`` on the same samples, and the exact wire cost."""
    if baseline is None:
        baseline, _ = top1(tail, feats.tensors, feats.labels)
    decoded, total, t_enc, t_dec = _through_codec(codec, feats, progress)
    acc, _ = top1(tail, decoded, feats.labels)
    n = len(feats)
    elements = feats.elements_per_sample
    return EvalResult(
        model=model,
        split=split,
        codec=codec.name,
        params=dict(codec.params),
        n_images=n,
        top1_baseline=round(baseline, 4),
        top1=round(acc, 4),
        drop_pp=round(baseline - acc, 4),
        bits_per_element=8.0 * total / (n * elements) if elements else 0.0,
        wire_bytes_per_sample=total / n,
        encode_ms=1e3 * t_enc / n,
        decode_ms=1e3 * t_dec / n,
        elements_per_sample=elements,
    )


def evaluate_over_channel(
    tail: nn.Module,
    feats: FeatureSet,
    codec: Codec,
    ber: float,
    *,
    seed: int = 0,
    model: str = "",
    split: str = "",
    baseline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """:func:`evaluate_codec` with every sample's stream sent over a link flipping each bit
    with probability ``ber`` (sample ``i`` seeded by ``(seed, i)``). A stream the decoder
    rejects is a lost request and scores wrong; a ``resilient`` stream's failed slices are
    concealed. ``extra``: ``ber``, ``requests_lost``, ``concealed_slices``, ``streams_hit``
    (streams with a flipped bit), ``bytes_per_sample``, and ``top1_clean`` / ``ber_drop_pp``
    (the same streams without errors, and what the errors cost)."""
    if baseline is None:
        baseline, _ = top1(tail, feats.tensors, feats.labels)
    n = len(feats)
    received: list[tuple[torch.Tensor, ...]] = []
    clean: list[tuple[torch.Tensor, ...]] = []
    lost = torch.zeros(n, dtype=torch.bool)
    total = concealed = hit = 0
    t_enc = t_dec = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        data = codec.encode(feats.sample(i))
        t1 = time.perf_counter()
        noisy = flip_bits(data, ber, sample_rng(seed, i))
        t2 = time.perf_counter()
        try:
            out, k = decode_resilient(noisy)
            concealed += k
        except BitstreamError:
            out = None
        t_dec += time.perf_counter() - t2
        t_enc += t1 - t0
        total += len(data)
        hit += noisy != data
        ref = out if out is not None and noisy == data else codec.decode(data)
        lost[i] = out is None
        clean.append(ref)
        received.append(ref if out is None else out)
        if progress and i % 256 == 255:
            progress(256)
    stack = [tuple(torch.cat([d[j] for d in ds]) for j in range(len(feats.tensors)))
             for ds in (received, clean)]
    _, hits = top1(tail, stack[0], feats.labels)
    acc = 100.0 * float((hits & ~lost).float().mean())
    acc_clean, _ = top1(tail, stack[1], feats.labels)
    elements = feats.elements_per_sample
    return EvalResult(
        model=model, split=split, codec=codec.name, params=dict(codec.params), n_images=n,
        top1_baseline=round(baseline, 4), top1=round(acc, 4), drop_pp=round(baseline - acc, 4),
        bits_per_element=8.0 * total / (n * elements) if elements else 0.0,
        wire_bytes_per_sample=total / n, encode_ms=1e3 * t_enc / n, decode_ms=1e3 * t_dec / n,
        elements_per_sample=elements,
        extra={"ber": ber, "seed": seed, "requests_lost": int(lost.sum()),
               "requests_lost_pct": 100.0 * float(lost.sum()) / n,
               "concealed_slices": concealed, "streams_hit": int(hit),
               "bytes_per_sample": total / n, "top1_clean": round(acc_clean, 4),
               "ber_drop_pp": round(acc_clean - acc, 4)},
    )


def calibration_split(n: int, calib: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, disjoint (calibration, report) split of ``range(n)``."""
    if not 0 < calib < n:
        raise ValueError(f"calibration size {calib} must be in (0, {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:calib].sort().values, perm[calib:].sort().values


def search_quality(
    tail: nn.Module,
    calib: FeatureSet,
    codec_name: str,
    target_drop: float,
    fixed: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[EvalResult]]:
    """Lowest-rate setting of the codec's quality knob whose drop on ``calib`` <= target.

    Walks ``quality_grid`` down from the highest rate and stops at the first setting that
    misses the target: the choice is the lowest rate such that it and every higher-rate
    setting met the target on the calibration images. Unlike a bisection, a lucky low-rate
    setting (calibration drops are noisy: one image is 1 pp of 100) cannot be picked over a
    failing higher one. If even the highest setting misses, it is returned.
    """
    cls = codec_class(codec_name)
    fixed = dict(fixed or {})
    if not cls.quality_param:
        return fixed, []
    grid = cls.quality_grid
    baseline, _ = top1(tail, calib.tensors, calib.labels)
    trials: dict[int, EvalResult] = {}
    best = len(grid) - 1
    for i in range(len(grid) - 1, -1, -1):
        codec = get(codec_name, **fixed, **{cls.quality_param: grid[i]})
        trials[i] = evaluate_codec(tail, calib, codec, baseline=baseline)
        if trials[i].drop_pp > target_drop:
            break
        best = i
    params = {**fixed, cls.quality_param: grid[best]}
    return params, [trials[i] for i in sorted(trials)]


def summarize(results: Sequence[EvalResult]) -> str:
    """A fixed-width table of results."""
    head = (
        f"{'model':14s} {'split':12s} {'codec':11s} {'setting':18s} {'n':>6s} {'top1':>7s} "
        f"{'drop pp':>8s} {'bits/el':>8s} {'B/sample':>9s} {'enc ms':>7s} {'dec ms':>7s}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        inner = r.params.get("inner") if r.codec == "resilient" else None
        q = codec_class(inner or r.codec).quality_param
        setting = f"{q}={r.params[q]:g}" if q and q in r.params else ""
        if inner:
            setting = f"{inner} /{r.params['slices']} {setting}".strip()
        lines.append(
            f"{r.model:14s} {r.split:12s} {r.codec:11s} {setting:18s} {r.n_images:6d} "
            f"{r.top1:7.2f} {r.drop_pp:8.2f} {r.bits_per_element:8.3f} "
            f"{r.wire_bytes_per_sample:9.1f} {r.encode_ms:7.3f} {r.decode_ms:7.3f}"
        )
    return "\n".join(lines)

