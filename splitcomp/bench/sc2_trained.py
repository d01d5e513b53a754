"""Trained checkpoints in an SC2 report (``splitcomp report --checkpoint``): rows, points and
table lines beside the training-free codecs.

Honesty: a checkpoint's figures come from images it did not train on, and every other row of
the report is computed on the same images. :func:`report_images` therefore restricts the
whole report to the images outside every checkpoint's train part (on the checkpoint's own
dataset: the eval part of its split) before ``--limit`` picks among them; each checkpoint is
then evaluated (:meth:`~splitcomp.train.Trained.evaluate`, which refuses trained-on images by
their pixels) on exactly the report's images. A checkpoint's row is one dict of
:func:`~splitcomp.train.evaluate_checkpoint`'s figures (its bytes are compact streams: 9 bytes
of header and CRC a sample, the template agreed once per deployment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data import ImageFolderDataset
from ..train import Trained, check_untrained, untrained_part
from .plots import accuracy_yerr

#: what the figure's legend and the tables call a trained checkpoint
LABEL = "trained bottleneck"
_COLOR = "black"


def report_images(parts: Sequence[ImageFolderDataset], trained: Sequence[Trained],
                  limit: int | None) -> tuple[ImageFolderDataset, str]:
    """(the report's images, a line saying which they are): the sources ``parts`` without any
    checkpoint's train-part images, concatenated, then ``limit`` of them spread evenly, checked
    image by image (:class:`~splitcomp.train.TrainedOnError`) before anything runs."""
    records = [t.ckpt.split for t in trained]
    kept = [untrained_part(p, records) for p in parts]
    own = sum(o for _, o in kept)
    ds = ImageFolderDataset.concat([d for d, _ in kept])
    total = len(ds)
    if limit is not None and limit < total:
        ds = ds.subset(limit)
    check_untrained(ds, records)
    n = len(ds)
    of = f" ({n} of its {total})" if n < total else ""
    if own == 0:
        which = (f"{n} images outside the checkpoints' train parts (each image's pixels "
                 "checked against them)")
    elif len(trained) == 1:
        which = f"the eval part of the checkpoint's split, {n} images{of}"
    else:
        which = (f"the images in the eval part of every checkpoint's split, {n} "
                 f"images{of}")
    return ds, f"images: {which}; every row of this model uses them"


def evaluate_at(trained: Sequence[Trained], cut: str, ds: ImageFolderDataset,
                batch_size: int) -> list[dict[str, Any]]:
    """The figures of each checkpoint cut at ``cut``, on the report's images ``ds``."""
    rows = []
    for t in trained:
        if t.ckpt.cut != cut:
            continue
        r = t.evaluate(ds, batch_size)
        if r["n_eval"] != len(ds):  # the rule above, checked
            raise ValueError(f"{t.folder}: evaluated on {r['n_eval']} images, the report on "
                             f"{len(ds)}")
        rows.append({**r, "name": t.name})
    return rows


def setting(r: dict[str, Any]) -> str:
    """How a checkpoint's row is told apart: its folder, latent shape and rate weight."""
    return f"{r['name']} (C={r['channels']}, stride {r['stride']}, beta={r['beta']:g})"


def matched_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as :func:`~.input_compression.match_accuracy` takes them (plus the device's
    MFLOPs: tuned head and encoder)."""
    return [{"bytes_per_sample": r["bytes_per_sample"], "accuracy": r["top1"],
             "setting": setting(r), "edge_mflops": r["head_mflops"] + r["encoder_mflops"]}
            for r in rows]


def plot(ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    """One star per checkpoint, or a curve through several (``ax``: a matplotlib axis), with
    95 % Wilson intervals over each checkpoint's eval images."""
    if not rows:
        return
    rows = sorted(rows, key=lambda r: r["bytes_per_sample"])
    xs, ys = [r["bytes_per_sample"] for r in rows], [r["top1"] for r in rows]
    bars = {"yerr": accuracy_yerr(ys, int(rows[0]["n_eval"])), "capsize": 2, "elinewidth": 0.8}
    if len(rows) == 1:
        ax.errorbar(xs, ys, ls="none", marker="*", ms=13, color=_COLOR,
                    label=f"{LABEL} ({rows[0]['name']}, {xs[0]:,.0f} B)", **bars)
    else:
        ax.errorbar(xs, ys, ls="-", marker="*", ms=10, lw=1.6, color=_COLOR,
                    label=f"{LABEL} ({len(rows)} checkpoints)", **bars)


def encoder_rows(cut: str, head_params: int, head_bytes: int, head_flops: int,
                 total_flops: int, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows of the report's encoder table: the head (its tuned copy has the same size) plus
    each checkpoint's encoder (fp32)."""
    out = []
    for r in rows:
        params = head_params + r["encoder_params"]
        nbytes = head_bytes + 4 * r["encoder_params"]
        mflops = head_flops / 1e6 + r["encoder_mflops"]
        share = 100 * mflops * 1e6 / total_flops if total_flops else 0.0
        out.append((f"split {cut} + {LABEL} {r['name']}", f"{params:,}", f"{nbytes:,}",
                    f"{nbytes / 1e6:.3f}", f"{mflops:,.2f} ({share:.0f} %)"))
    return out


def table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The Markdown table of the checkpoints at one cut (empty without any)."""
    if not rows:
        return []
    head = ("checkpoint", "B/sample", "B/sample self-describing", "bits/element", "top-1 %",
            "drop pp", "encoder params", "encoder MFLOPs", "tuned head blocks", "trained on")
    lines = ["", f"{LABEL.capitalize()}s (`splitcomp train bottleneck`): bytes are compact "
             "`bottleneck` streams (9 B of header and CRC a sample, the header template "
             "agreed once per deployment); the self-describing size is given beside them.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (setting(r), f"{r['bytes_per_sample']:,.1f}",
                 f"{r['bytes_per_sample_full_header']:,.1f}", f"{r['bits_per_element']:.3f}",
                 f"{r['top1']:.2f}", f"{r['drop_pp']:+.2f}", f"{r['encoder_params']:,}",
                 f"{r['encoder_mflops']:.2f}", ", ".join(r.get("tuned_blocks") or []) or "-",
                 f"{r['n_train']} images")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
