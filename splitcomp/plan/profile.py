"""Measure what each cut costs on this machine: head and tail compute, codec time, wire bytes.

For each profiled cut the head and tail are timed at batch 1 (median of ``repeats`` after a
warm-up); the head's IFs on a calibration subset go through every codec, and for codecs with
a quality knob :func:`~splitcomp.bench.codec_eval.search_quality` walks the settings down to the
lowest rate within ``max_drop`` (every setting it tried is kept: the planner trades them
off). Bytes are exact container byte counts per sample; drops are top-1 percentage points on
the calibration images. The two extremes (whole model, raw input) and input compression
(:mod:`.input_codec`) are profiled too. A trained checkpoint (:class:`TrainedProfile`) is
one more option at its cut, with its own edge model (tuned head + encoder) and server model
(decoder + tail) timed in the same rounds as the heads and tails, and its compact
``bottleneck`` stream and drop measured on the calibration images (which must then lie
outside its train part). Nothing here depends on the network or the device: see
:mod:`.planner` for those.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from .. import codecs
from ..bench.codec_eval import FeatureSet, collect_features, evaluate_codec, search_quality
from ..data import ImageFolderDataset
from ..data.dataset import spread_indices
from ..data.transforms import Preprocess
from ..partition import CutPoint, Partitioner
from ..runtime import protocol as P
from ..train import Trained
from ..train.ckpt_eval import checkpoint_codec
from .input_codec import INPUT_FORMATS, sweep_input_codec

DEFAULT_CODECS = ("fp16", "int8", "rans", "slicer")


@dataclass
class CodecOption:
    """One way of sending: a codec (or input format) at one setting, measured here."""

    codec: str
    params: dict[str, Any]
    wire_bytes: float  #: bitstream bytes per sample (container included)
    drop_pp: float  #: top-1 drop on the calibration images
    encode_ms: float
    decode_ms: float


@dataclass
class CutProfile:
    """One cut: compute either side (ms, this machine, batch 1) and its codec options."""

    split: str
    position: int
    head_ms: float
    tail_ms: float
    head_params: int
    head_flops: int
    total_flops: int
    fp32_bytes: int
    options: list[CodecOption] = field(default_factory=list)


@dataclass
class TrainedProfile:
    """A trained bottleneck at a cut (``plan --checkpoint``): ``edge_ms`` is its tuned head
    and encoder, ``server_ms`` its decoder and the frozen tail (ms, this machine, batch 1);
    ``option`` its compact ``bottleneck`` stream (bytes, encode and decode times) and its drop
    on the calibration images; ``edge_params`` / ``edge_flops`` the head plus the encoder."""

    checkpoint: str  #: the checkpoint folder (absolute)
    split: str
    edge_ms: float
    server_ms: float
    edge_params: int
    edge_flops: int
    option: CodecOption
    n_train: int = 0  #: images it trained on (none of them among the calibration images)


@dataclass
class ModelProfile:
    """Everything the planner needs about one model on this machine."""

    model: str
    input_shape: tuple[int, ...]
    n_calib: int
    top1: float  #: uncompressed top-1 on the calibration images
    full_ms: float  #: whole model (from uint8 pixels), batch 1
    raw: CodecOption  #: the uint8 input as it is (full offload)
    response_bytes: int  #: the result frame (fp32 logits) the server sends back
    cuts: list[CutProfile] = field(default_factory=list)
    inputs: list[CodecOption] = field(default_factory=list)  #: JPEG / WebP of the input
    trained: list[TrainedProfile] = field(default_factory=list)  #: ``--checkpoint`` options
    threads: int = 1
    repeats: int = 0
    data: str = ""  #: where the calibration images came from

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelProfile:
        d = dict(d)
        d.pop("provenance", None)  # where the file came from (splitcomp.cli._provenance)
        d["raw"] = CodecOption(**d["raw"])
        d["inputs"] = [CodecOption(**o) for o in d.get("inputs", [])]
        d["cuts"] = [CutProfile(**{**c, "options": [CodecOption(**o) for o in c["options"]]})
                     for c in d.get("cuts", [])]
        d["trained"] = [TrainedProfile(**{**t, "option": CodecOption(**t["option"])})
                        for t in d.get("trained", [])]
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)


def median_ms(*fns: Callable[[], Any], repeats: int = 10, warmup: int = 2) -> list[float]:
    """Median wall time of each ``fn()`` in milliseconds. The functions run interleaved
    (one call of each per round), so a burst of load from elsewhere hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(repeats, 1)):
        for fn, out in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times]


def pick_cuts(cands: Sequence[CutPoint], n: int) -> list[CutPoint]:
    """``n`` cuts spread over the graph among those that end a module, send one tensor and
    leave work on both sides (the usual split points)."""
    usable = [c for c in cands if c.modules and len(c.crossing) == 1
              and 0 < c.head_flops < c.total_flops]
    return [usable[i] for i in spread_indices(len(usable), n)] if usable else []


class Profiler:
    """Profile ``model`` on calibration ``images`` (uint8 NCHW, as the edge holds them after
    resize and crop) with ``labels``; ``preprocess`` normalises them for the model."""

    def __init__(self, model: nn.Module, name: str, images: torch.Tensor, labels: torch.Tensor,
                 preprocess: Preprocess, *, codec_names: Sequence[str] = DEFAULT_CODECS,
                 input_formats: Sequence[str] = INPUT_FORMATS, max_drop: float = 0.5,
                 repeats: int = 10, batch_size: int = 64,
                 log: Callable[[str], None] | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be uint8 NCHW")
        self.model = model.eval()
        self.name = name
        self.images = images
        self.labels = labels
        self.preprocess = preprocess
        self.codec_names = tuple(codec_names)
        self.input_formats = tuple(input_formats)
        self.max_drop = max_drop
        self.repeats = repeats
        self.batch_size = batch_size
        self.log = log or (lambda _msg: None)
        self.example = preprocess.normalize(images[:1])
        self.parts = Partitioner(self.model, (self.example,))

    # -- pieces ------------------------------------------------------------------------
    def candidates(self) -> list[CutPoint]:
        return self.parts.candidates(modules_only=True)

    def _batches(self) -> Any:
        for s in range(0, len(self.labels), self.batch_size):
            x = self.images[s : s + self.batch_size]
            yield self.preprocess.normalize(x), self.labels[s : s + self.batch_size]

    @torch.inference_mode()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> predicted labels (whole model)."""
        preds = [self.model(self.preprocess.normalize(images[s : s + self.batch_size])).argmax(-1)
                 for s in range(0, len(images), self.batch_size)]
        return torch.cat(preds)

    @torch.inference_mode()
    def time_compute(self, cuts: Sequence[CutPoint], trained: Sequence[Trained] = ()
                     ) -> tuple[float, list[tuple[float, float]]]:
        """Whole model and each cut's (head, tail), then each checkpoint's (edge model, server
        model), in ms at batch 1, all in the same interleaved rounds so that every figure
        sees the same background load."""
        img = self.images[:1]
        fns: list[Callable[[], Any]] = [lambda: self.model(self.preprocess.normalize(img))]
        for cut in cuts:
            head, tail = self.parts.split(cut.name)
            feats = head(self.example)
            fns += [partial(head, self.example), partial(tail, *feats)]
        for t in trained:
            edge, server = t.ckpt.edge_model(), t.ckpt.server_model(t.tail)
            fns += [partial(edge, self.example), partial(server, edge(self.example))]
        ms = median_ms(*fns, repeats=self.repeats)
        return ms[0], [(ms[i], ms[i + 1]) for i in range(1, len(ms), 2)]

    @torch.inference_mode()
    def profile_cut(self, cut: CutPoint, head_ms: float, tail_ms: float) -> CutProfile:
        """Codec options at ``cut`` (compute times measured by :meth:`time_compute`)."""
        head, tail = self.parts.split(cut.name)
        prof = CutProfile(cut.name, cut.position, head_ms, tail_ms, cut.head_params,
                          cut.head_flops, cut.total_flops, cut.fp32_bytes)
        feats = collect_features(head, self._batches())
        for name in self.codec_names:
            prof.options.extend(self._codec_options(tail, feats, name))
        self.log(f"  {cut.name}: head {head_ms:.2f} ms, tail {tail_ms:.2f} ms, "
                 f"{len(prof.options)} codec settings")
        return prof

    def _codec_options(self, tail: nn.Module, feats: FeatureSet, name: str) -> list[CodecOption]:
        if codecs.codec_class(name).quality_param:
            _params, trials = search_quality(tail, feats, name, self.max_drop)
            results = sorted(trials, key=lambda r: -r.wire_bytes_per_sample)
        else:
            results = [evaluate_codec(tail, feats, codecs.get(name))]
        return [CodecOption(r.codec, r.params, r.wire_bytes_per_sample, r.drop_pp, r.encode_ms,
                            r.decode_ms) for r in results]

    @torch.inference_mode()
    def profile_trained(self, t: Trained, data: ImageFolderDataset, cut: CutPoint,
                        edge_ms: float, server_ms: float) -> TrainedProfile:
        """A checkpoint's option at ``cut`` (compute times measured by :meth:`time_compute`):
        its figures on ``data``, the calibration images as a dataset (trained-on images
        refused), and its codec timed on one sample."""
        fig = t.evaluate(data, self.batch_size)
        if fig["n_eval"] != len(self.labels):
            raise ValueError(f"{t.folder}: evaluated on {fig['n_eval']} images, not the "
                             f"{len(self.labels)} calibration images")
        codec, contexts = checkpoint_codec(t.ckpt)
        latent = t.ckpt.edge_model()(self.example)
        stream = codec.encode(latent, compact=True)
        enc_ms, dec_ms = median_ms(partial(codec.encode, latent, compact=True),
                                   partial(codecs.decode, stream, contexts=contexts),
                                   repeats=self.repeats)
        params = {k: fig[k] for k in ("channels", "stride", "beta")}
        opt = CodecOption("bottleneck", params, fig["bytes_per_sample"],
                          round(fig["drop_pp"], 4), enc_ms, dec_ms)
        self.log(f"  {cut.name} checkpoint {t.name}: edge {edge_ms:.2f} ms, server "
                 f"{server_ms:.2f} ms, {opt.wire_bytes:.0f} B, drop {opt.drop_pp:.2f}")
        return TrainedProfile(str(t.folder.resolve()), cut.name, edge_ms, server_ms,
                              cut.head_params + fig["encoder_params"],
                              cut.head_flops + round(1e6 * fig["encoder_mflops"]), opt,
                              fig["n_train"])

    @torch.inference_mode()
    def profile_extremes(self) -> tuple[CodecOption, int, float]:
        """The raw-input option, the response size, calibration top-1."""
        img = self.images[:1]
        raw_codec = codecs.get("fp32")
        data = raw_codec.encode([img])
        enc_ms, dec_ms = median_ms(lambda: raw_codec.encode([img]),
                                   lambda: raw_codec.decode(data), repeats=self.repeats)
        raw = CodecOption("raw", {"dtype": "uint8"}, float(len(data)), 0.0, enc_ms, dec_ms)
        logits = self.model(self.preprocess.normalize(img))
        response = len(P.encode_result(1, codecs.get("fp32").encode([logits])))
        top1 = 100.0 * (self.classify(self.images) == self.labels).float().mean().item()
        return raw, response, top1

    def profile_inputs(self) -> list[CodecOption]:
        out = []
        for fmt in self.input_formats:
            for r in sweep_input_codec(self.model, self.images, self.labels, self.preprocess,
                                       fmt, self.max_drop):
                out.append(CodecOption(fmt, {"quality": r["quality"]}, r["wire_bytes"],
                                       r["drop_pp"], r["encode_ms"], r["decode_ms"]))
        return out

    # -- all of it ---------------------------------------------------------------------
    def profile(self, splits: Sequence[str] | None = None, max_splits: int = 4,
                trained: Sequence[Trained] = (), data: ImageFolderDataset | None = None
                ) -> ModelProfile:
        """Profile the named cuts (or ``max_splits`` spread over the model), the extremes and
        input compression; and the ``trained`` checkpoints (opened beside this model, their
        cuts profiled too) on ``data``, the calibration images as a dataset."""
        cands = self.candidates()
        by_name = {m: c for c in cands for m in (c.name, c.node, *c.modules)}
        wanted = [*(splits or []), *(t.ckpt.cut for t in trained)]
        missing = [s for s in wanted if s not in by_name]
        if missing:
            raise ValueError(f"unknown cut(s) {missing}; see `splitcomp candidates`")
        cuts = [by_name[s] for s in splits] if splits else pick_cuts(cands, max_splits)
        for c in (by_name[t.ckpt.cut] for t in trained):
            if all(c is not k for k in cuts):
                cuts.append(c)
        if trained and data is None:
            raise ValueError("profiling checkpoints needs the calibration images (data=)")
        full_ms, times = self.time_compute(cuts, trained)
        raw, response, top1 = self.profile_extremes()
        self.log(f"{self.name}: whole model {full_ms:.2f} ms, top-1 {top1:.2f} on "
                 f"{len(self.labels)} calibration images; profiling {len(cuts)} cuts")
        prof = ModelProfile(self.name, tuple(self.images.shape[1:]), len(self.labels), top1,
                            full_ms, raw, response, threads=torch.get_num_threads(),
                            repeats=self.repeats)
        prof.cuts = [self.profile_cut(c, *t) for c, t in zip(cuts, times, strict=False)]
        prof.trained = [self.profile_trained(t, data, by_name[t.ckpt.cut], *ms)
                        for t, ms in zip(trained, times[len(cuts):], strict=True)]
        prof.inputs = self.profile_inputs()
        return prof

