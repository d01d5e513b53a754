"""SC2-style results for a model: rate/accuracy curves per cut, baselines, edge encoder cost.

The SC2 criteria (Matsubara et al., "SC2 Benchmark") are what the edge pays and what the
server gets back: encoder size (head parameters and bytes) and FLOPs on the device, bytes on
the wire per sample, and accuracy. For every cut each codec is swept over its quality grid
(``Codec.quality_grid``; codecs without a knob give one point), using
:func:`~.codec_eval.collect_features` once per cut and :func:`~.codec_eval.evaluate_codec` per
setting, next to the baselines: the uncompressed accuracy, full offload of the raw uint8
input, and the input compressed as JPEG, WebP (swept) or PNG (lossless). All rows of a model
share its images; the feature codecs' bytes are whole bitstreams (header and CRC included),
the input codecs' bytes whole image files. Trained checkpoints (:mod:`.sc2_trained`) add
their rows at their cuts; the report's images are then those none of them trained on.

:func:`build_report` computes, :func:`~.sc2_plot.plot_split` draws one figure per cut (PNG, SVG
and PDF, accuracies with 95 % Wilson intervals), :func:`write_report` writes ``report.md``,
``report.json`` and the figures.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import codecs
from ..data import ImageFolderDataset, load_dataset
from ..partition import candidates, split
from ..train import Trained
from ..zoo import load_model
from . import sc2_trained
from .codec_eval import EvalResult, collect_features, evaluate_codec, top1
from .input_compression import (
    DEFAULT_QUALITIES,
    match_accuracy,
    raw_bytes_per_sample,
    sweep_input_codec,
    uncompressed_accuracy,
)
from .plots import CI_NOTE, FORMATS
from .sc2_plot import plot_split

#: feature codecs swept by default (fixed-rate ones are the fp16 / int8 baselines)
DEFAULT_CODECS: tuple[str, ...] = ("fp16", "int8", "zstd", "rans", "slicer")
#: input codecs of the full-offload baseline
INPUT_CODECS: tuple[str, ...] = ("jpeg", "webp", "png")
#: top-1 drops (pp) at which the summary matches every option
DROPS: tuple[float, ...] = (0.5, 1.0, 2.0)


@dataclass
class EncoderCost:
    """What the edge runs for one cut: head parameters, their bytes, and FLOPs per sample."""

    head_params: int
    head_bytes: int
    head_flops: int
    total_flops: int


@dataclass
class SplitReport:
    """One cut: its crossing tensors, encoder cost, one result per codec setting and the
    figures of each trained checkpoint at this cut."""

    split: str
    shapes: list[list[int]]
    elements_per_sample: int
    encoder: EncoderCost
    baseline: float
    features: list[EvalResult] = field(default_factory=list)
    trained: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ModelReport:
    """A model on a set of images: baselines shared by every cut, then the cuts."""

    model: str
    data: list[str]
    n_images: int
    input_shape: list[int]
    raw_input_bytes: int
    baseline: float
    total_params: int
    total_flops: int
    inputs: list[dict[str, Any]] = field(default_factory=list)
    splits: list[SplitReport] = field(default_factory=list)
    command: str = ""
    threads: int = 0  #: torch intra-op threads the times were measured with
    images_note: str = ""  #: which images, when checkpoints restrict them

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["splits"] = [{**asdict(s), "features": [r.to_json() for r in s.features]}
                       for s in self.splits]
        return d


def load_images(model_name: str, model: torch.nn.Module, data: Sequence[str | Path],
                limit: int | None = None, trained: Sequence[Trained] = ()
                ) -> tuple[ImageFolderDataset, str]:
    """The model's preprocessing over one or more sources, concatenated, without any image of
    the ``trained`` checkpoints' train parts, ``limit`` spread evenly; and a line saying which
    images they are when there are checkpoints.

    Sources must share a label space (e.g. ``imagenet`` and ``foolbox-imagenet``).
    """
    prep = model.default_cfg.preprocess()
    parts = [load_dataset(d, prep) for d in data]
    if not parts:
        raise ValueError(f"no data for {model_name}")
    if trained:
        ds, note = sc2_trained.report_images(parts, trained, limit)
        return ds.preload(), note
    ds = ImageFolderDataset.concat(parts)
    return (ds.subset(limit) if limit is not None and limit < len(ds) else ds).preload(), ""


def codec_settings(name: str) -> list[dict[str, Any]]:
    """Parameter sets to sweep for a codec: its quality grid, or its defaults."""
    cls = codecs.codec_class(name)
    if not cls.quality_param:
        return [{}]
    return [{cls.quality_param: q} for q in cls.quality_grid]


def _cut_cost(cands: Sequence[Any], cut: str, model: torch.nn.Module) -> EncoderCost:
    for c in cands:
        if cut == c.name or cut == c.node or cut in c.modules:
            elem = next(model.parameters()).element_size()
            return EncoderCost(c.head_params, c.head_params * elem, c.head_flops, c.total_flops)
    raise ValueError(f"cut {cut!r} not among the model's cut points")


def build_report(
    model_name: str,
    data: Sequence[str | Path],
    splits: Sequence[str],
    *,
    codec_names: Sequence[str] = DEFAULT_CODECS,
    input_codecs: Sequence[str] = INPUT_CODECS,
    weights: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    trained: Sequence[Trained] = (),
) -> ModelReport:
    """Sweep every codec at every cut, and the input codecs once, on the same images.

    ``trained``: checkpoints opened beside ``model`` (their teacher, which the report then
    uses): a row each at its cut (added to ``splits`` when missing), every row on images none
    of them trained on (:func:`.sc2_trained.report_images`)."""
    model = load_model(model_name, weights) if model is None else model
    ds, note = load_images(model_name, model, data, limit, trained)
    splits = list(dict.fromkeys([*splits, *(t.ckpt.cut for t in trained)]))
    images = torch.stack([ds.image_uint8(i) for i in range(len(ds))])
    labels = ds.labels
    example = ds[0][0].unsqueeze(0)

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr)

    baseline = uncompressed_accuracy(model, images, labels, batch_size=batch_size)
    cands = candidates(model, (example,), modules_only=True)
    rep = ModelReport(
        model=model_name, data=[str(d) for d in data], n_images=len(ds),
        input_shape=list(images.shape[1:]), raw_input_bytes=raw_bytes_per_sample(images),
        baseline=baseline, total_params=sum(p.numel() for p in model.parameters()),
        total_flops=cands[0].total_flops if cands else 0, threads=torch.get_num_threads(),
        images_note=note,
    )
    log(f"{model_name}: {len(ds)} images, top-1 {baseline:.2f} %")
    for fmt in input_codecs:
        rep.inputs += sweep_input_codec(model, images, labels, fmt, DEFAULT_QUALITIES[fmt],
                                        batch_size=batch_size)
        log(f"  input {fmt}: " + ", ".join(f"q{r['quality']} {r['bytes_per_sample']:.0f} B "
                                           f"{r['accuracy']:.1f} %" for r in rep.inputs
                                           if r["codec"] == fmt))
    for cut in splits:
        head, tail = split(model, cut, (example,))
        bar = tqdm(total=len(ds), desc=f"{model_name}@{cut} head", disable=not progress,
                   file=sys.stderr)
        feats = collect_features(head, ds.batches(batch_size), bar.update)
        bar.close()
        cut_base, _ = top1(tail, feats.tensors, feats.labels)
        sr = SplitReport(cut, [list(t.shape[1:]) for t in feats.tensors],
                         feats.elements_per_sample, _cut_cost(cands, cut, model), cut_base)
        for name in codec_names:
            for params in codec_settings(name):
                res = evaluate_codec(tail, feats, codecs.get(name, **params), model=model_name,
                                     split=cut, baseline=cut_base)
                sr.features.append(res)
                log(f"  {cut} {name} {params}: {res.wire_bytes_per_sample:.0f} B, "
                    f"{res.top1:.2f} %")
        sr.trained = sc2_trained.evaluate_at(trained, cut, ds, batch_size)
        for r in sr.trained:
            log(f"  {cut} {sc2_trained.LABEL} {r['name']}: {r['bytes_per_sample']:.0f} B, "
                f"{r['top1']:.2f} %")
        rep.splits.append(sr)
    return rep


# -- summaries ------------------------------------------------------------------------------


def setting_label(r: EvalResult) -> str:
    """``quality=0.5``, ``bits=3`` or ``-`` for a codec's swept knob."""
    q = codecs.codec_class(r.codec).quality_param
    return f"{q}={r.params[q]:g}" if q and q in r.params else "-"


def _feature_rows(sr: SplitReport, name: str) -> list[dict[str, Any]]:
    return [{"bytes_per_sample": r.wire_bytes_per_sample, "accuracy": r.top1,
             "setting": setting_label(r)} for r in sr.features if r.codec == name]


_FORMAT_NAMES = {"jpeg": "JPEG", "webp": "WebP", "png": "PNG"}


def matched(rep: ModelReport, drop: float) -> list[tuple[str, dict[str, Any] | None]]:
    """Per option (input codec, or cut + feature codec): the lowest-rate setting within ``drop``
    (monotone walk from the highest rate, so a lucky low-rate setting is not picked)."""
    out: list[tuple[str, dict[str, Any] | None]] = []
    raw = {"bytes_per_sample": rep.raw_input_bytes, "accuracy": rep.baseline, "setting": "-"}
    out.append(("full offload, raw uint8", raw))
    for fmt in dict.fromkeys(r["codec"] for r in rep.inputs):
        rows = [{**r, "setting": f"quality={r['quality']}" if fmt != "png" else "lossless"}
                for r in rep.inputs if r["codec"] == fmt]
        out.append((f"full offload, {_FORMAT_NAMES.get(fmt, fmt)} input",
                    match_accuracy(rows, rep.baseline, drop, monotone=True)))
    for sr in rep.splits:
        for name in dict.fromkeys(r.codec for r in sr.features):
            out.append((f"split {sr.split}, {name}",
                        match_accuracy(_feature_rows(sr, name), sr.baseline, drop, monotone=True)))
        if sr.trained:
            out.append((f"split {sr.split}, {sc2_trained.LABEL}",
                        match_accuracy(sc2_trained.matched_rows(sr.trained), sr.baseline, drop,
                                       monotone=True)))
    return out


# -- Markdown -------------------------------------------------------------------------------


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return lines


def png_name(model: str, cut: str) -> str:
    return f"{model}_{cut.replace('.', '_')}.png"


def _also(png: str) -> str:
    """Links to a figure's vector copies (same stem, see :data:`~.plots.FORMATS`)."""
    stem = png.removesuffix(".png")
    return " and ".join(f"[{f.upper()}]({stem}.{f})" for f in FORMATS[1:])


def _highlight(best: dict[str, dict[str, Any] | None], drop: float, rep: ModelReport) -> str:
    """One sentence: the cheapest input-compression and feature options at a matched drop."""
    def pick(prefix: str) -> tuple[str, dict[str, Any]] | None:
        found = [(n, m) for n, m in best.items() if n.startswith(prefix) and m is not None]
        return min(found, key=lambda nm: nm[1]["bytes_per_sample"]) if found else None

    inp, feat = pick("full offload"), pick("split")
    parts = []
    if inp:
        parts.append(f"input compression needs {_fmt_int(inp[1]['bytes_per_sample'])} B "
                     f"({inp[0].removeprefix('full offload, ')}, {inp[1].get('setting', '-')})")
    if feat:
        cut = feat[0].removeprefix("split ").split(",")[0]
        sr = next(s for s in rep.splits if s.split == cut)
        mflops = feat[1].get("edge_mflops", sr.encoder.head_flops / 1e6)
        parts.append(f"the best split needs {_fmt_int(feat[1]['bytes_per_sample'])} B "
                     f"({feat[0].removeprefix('split ')}, {feat[1].get('setting', '-')}) and "
                     f"{mflops:,.1f} MFLOPs on the device")
    return f"**At <= {drop:g} pp:** " + "; ".join(parts) + "." if parts else ""


def model_markdown(rep: ModelReport) -> list[str]:
    """The Markdown section of one model (figures referenced by :func:`png_name`)."""
    L = [f"## {rep.model}", ""]
    shape = "x".join(map(str, rep.input_shape))
    L.append(f"{rep.n_images} images ({', '.join(rep.data)}), input {shape} uint8 "
             f"({rep.raw_input_bytes:,} B raw). Uncompressed top-1: **{rep.baseline:.2f} %** "
             f"(one image = {100 / rep.n_images:.2f} pp). Whole model: "
             f"{rep.total_params:,} parameters, {rep.total_flops / 1e6:,.1f} MFLOPs per "
             f"sample (FLOPs: a multiply-add counts 2). "
             f"Times: {rep.threads or '?'} torch thread(s).")
    if rep.images_note:
        L += ["", f"**{rep.images_note[0].upper()}{rep.images_note[1:]}.**"]
    if rep.command:
        L += ["", f"`{rep.command}`"]
    L += ["", "### Encoder on the device (SC2: encoder size and FLOPs)", ""]
    rows = [("full offload (input codec only)", 0, 0, "0.00", "0 (0 %)")]
    for sr in rep.splits:
        e = sr.encoder
        share = 100 * e.head_flops / e.total_flops if e.total_flops else 0.0
        rows.append((f"split {sr.split} (+ feature codec)", f"{e.head_params:,}",
                     f"{e.head_bytes:,}", f"{e.head_bytes / 1e6:.3f}",
                     f"{e.head_flops / 1e6:,.2f} ({share:.0f} %)"))
        rows += sc2_trained.encoder_rows(sr.split, e.head_params, e.head_bytes, e.head_flops,
                                         e.total_flops, sr.trained)
    rows.append(("whole model on the device", f"{rep.total_params:,}",
                 f"{4 * rep.total_params:,}", f"{4 * rep.total_params / 1e6:.3f}",
                 f"{rep.total_flops / 1e6:,.2f} (100 %)"))
    L += _table(("deployment", "head params", "head bytes (fp32)", "head size MB",
                 "head MFLOPs / sample (share)"), rows)
    L += ["", "### Matched accuracy: fewest bytes per sample within a top-1 drop", "",
          "Lowest-rate setting such that it and every higher-rate setting of the same codec "
          "stay within the drop (- when none does).", ""]
    cols = {d: dict(matched(rep, d)) for d in DROPS}
    names = list(cols[DROPS[0]])
    rows = []
    for n in names:
        cells = []
        for d in DROPS:
            m = cols[d][n]
            cells.append("-" if m is None else
                         f"{_fmt_int(m['bytes_per_sample'])} ({m.get('setting', '-')})")
        rows.append((n, *cells))
    L += _table(("option", *(f"<= {d:g} pp: B/sample (setting)" for d in DROPS)), rows)
    L += ["", _highlight(cols[DROPS[1]], DROPS[1], rep)]
    for sr in rep.splits:
        shapes = " + ".join("x".join(map(str, s)) for s in sr.shapes)
        L += ["", f"### Cut {sr.split}: {shapes} ({sr.elements_per_sample:,} elements)", "",
              f"![{rep.model} {sr.split} rate/accuracy]({png_name(rep.model, sr.split)})", "",
              f"({CI_NOTE}; also as {_also(png_name(rep.model, sr.split))})", ""]
        rows = [(r.codec, setting_label(r), _fmt_int(r.wire_bytes_per_sample),
                 f"{r.bits_per_element:.3f}", f"{r.top1:.2f}", f"{r.drop_pp:+.2f}",
                 f"{r.encode_ms:.2f}", f"{r.decode_ms:.2f}") for r in sr.features]
        L += _table(("codec", "setting", "B/sample", "bits/element", "top-1 %", "drop pp",
                     "enc ms", "dec ms"), rows)
        L += sc2_trained.table_lines(sr.trained)
    L += ["", "### Input compression (full offload; the server runs the whole model)", ""]
    elements = math.prod(rep.input_shape)
    rows = [("raw uint8", "-", _fmt_int(rep.raw_input_bytes), "8.000", f"{rep.baseline:.2f}",
             "+0.00", "0", "0")]
    rows += [(r["codec"], r["quality"] if r["codec"] != "png" else "lossless",
              _fmt_int(r["bytes_per_sample"]), f"{8 * r['bytes_per_sample'] / elements:.3f}",
              f"{r['accuracy']:.2f}", f"{rep.baseline - r['accuracy']:+.2f}",
              f"{r['encode_ms']:.2f}", f"{r['decode_ms']:.2f}") for r in rep.inputs]
    L += _table(("codec", "quality", "B/sample", "bits/input value", "top-1 %", "drop pp",
                 "enc ms", "dec ms"), rows)
    return L


def write_report(reports: Sequence[ModelReport], out: Path, *, title: str = "",
                 preamble: str = "") -> Path:
    """``report.md``, ``report.json`` and one figure per model and cut (PNG, SVG, PDF) under
    ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for rep in reports:
        for sr in rep.splits:
            plot_split(rep, sr, out / png_name(rep.model, sr.split))
    L = [f"# {title or 'Split-computing report'}", ""]
    L += [
        "SC2 criteria per cut: encoder size (head parameters and bytes) and FLOPs on the "
        "device, bytes per sample on the wire, top-1 accuracy. Feature bytes are whole "
        "per-sample bitstreams (container header and CRC included); input bytes are whole "
        "image files after the model's resize/crop. Every row of a model uses the same "
        "images. Drops are in percentage points (pp) against the uncompressed model; a "
        "negative drop means the codec fixed more predictions than it broke. Times are "
        "means per sample on the machine that ran the report: indicative only.",
        "",
    ]
    if preamble:
        L += [preamble, ""]
    for rep in reports:
        L += model_markdown(rep) + [""]
    path = out / "report.md"
    path.write_text("\n".join(L))
    (out / "report.json").write_text(
        json.dumps([r.to_json() for r in reports], indent=1) + "\n")
    return path


def load_report_json(path: Path) -> list[ModelReport]:
    """Read back ``report.json`` (to redraw or re-render without re-running)."""
    out = []
    for d in json.loads(Path(path).read_text()):
        splits = []
        for s in d.pop("splits"):
            feats = []
            for r in s.pop("features"):
                base = {k: r.pop(k) for k in list(r) if k in EvalResult.__dataclass_fields__}
                feats.append(EvalResult(**base, extra=r))
            splits.append(SplitReport(**{**s, "encoder": EncoderCost(**s["encoder"])},
                                      features=feats))
        out.append(ModelReport(**d, splits=splits))
    return out
