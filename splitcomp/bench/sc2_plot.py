"""The SC2 report's figure: top-1 against bytes per sample at one cut, every codec and
baseline, each accuracy with its 95 % Wilson interval over the report's images (error bars),
written as PNG, SVG and PDF (:func:`~.plots.save_figure`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import codecs
from . import sc2_trained
from .plots import CI_NOTE, accuracy_yerr, save_figure

if TYPE_CHECKING:
    from .sc2_report import ModelReport, SplitReport

#: fixed colours so that a codec looks the same in every figure
_CODEC_COLORS = {"fp32": "tab:cyan", "fp16": "tab:blue", "bf16": "tab:pink", "int8": "tab:orange",
                 "blockwise8": "gold", "zstd": "tab:green", "rans": "tab:red",
                 "slicer": "tab:purple"}
_INPUT_STYLE = {"jpeg": ("JPEG input (full offload)", "tab:gray", "s"),
                "webp": ("WebP input (full offload)", "tab:brown", "D"),
                "png": ("PNG input, lossless (full offload)", "tab:olive", "P")}


def _points(ax: Any, xs: Sequence[float], ys: Sequence[float], n: int, **style: Any) -> None:
    """One series with Wilson error bars (``n``: images behind each accuracy)."""
    ax.errorbar(xs, ys, yerr=accuracy_yerr(ys, n), capsize=2, elinewidth=0.8, **style)


def plot_split(rep: ModelReport, sr: SplitReport, path: Path) -> Path:
    """Top-1 (%) against bytes per sample (log x) for every codec and baseline; two panels,
    the whole range and a zoom near the uncompressed accuracy. Writes ``path`` (PNG) and its
    SVG and PDF siblings; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=90)
    colors = plt.get_cmap("tab10").colors
    zoom_lo = rep.baseline - 8
    n = rep.n_images
    for k, ax in enumerate(axes):
        ax.axhline(rep.baseline, color="black", lw=1.2, ls="-",
                   label=f"uncompressed top-1 ({rep.baseline:.1f} %)")
        ax.axvline(rep.raw_input_bytes, color="tab:red", lw=1.2, ls=":",
                   label=f"raw uint8 input, full offload ({rep.raw_input_bytes:,} B)")
        for fmt in dict.fromkeys(r["codec"] for r in rep.inputs):
            rows = sorted((r for r in rep.inputs if r["codec"] == fmt),
                          key=lambda r: r["bytes_per_sample"])
            label, color, marker = _INPUT_STYLE.get(fmt, (fmt, "gray", "o"))
            _points(ax, [r["bytes_per_sample"] for r in rows], [r["accuracy"] for r in rows],
                    int(rows[0].get("n_images", n)), ls="--" if len(rows) > 1 else "none",
                    color=color, marker=marker, ms=4 if len(rows) > 1 else 8, lw=1.2,
                    label=label)
        for i, name in enumerate(dict.fromkeys(r.codec for r in sr.features)):
            rows = sorted((r for r in sr.features if r.codec == name),
                          key=lambda r: r.wire_bytes_per_sample)
            xs = [r.wire_bytes_per_sample for r in rows]
            ys = [r.top1 for r in rows]
            color = _CODEC_COLORS.get(name, colors[(i + 5) % len(colors)])
            if len(rows) == 1:
                _points(ax, xs, ys, rows[0].n_images, ls="none", marker="o", ms=7,
                        color=color, label=f"{name} features ({xs[0]:,.0f} B)")
            else:
                knob = codecs.codec_class(name).quality_param
                _points(ax, xs, ys, rows[0].n_images, ls="-", marker="o", ms=4, lw=1.6,
                        color=color, label=f"{name} features (swept {knob})")
        sc2_trained.plot(ax, sr.trained)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per sample on the wire (log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
        if k == 0:
            ax.set_title("full range")
            ax.set_ylim(bottom=0, top=max(100.0, rep.baseline + 2))
        else:
            ax.set_title("zoom: within 8 pp of uncompressed")
            ax.set_ylim(zoom_lo, rep.baseline + 2)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    shapes = " + ".join("x".join(map(str, s)) for s in sr.shapes)
    held = ", none trained on" if rep.images_note else ""
    fig.suptitle(f"{rep.model} cut at {sr.split} ({shapes}): top-1 vs bytes per sample, "
                 f"{n} images ({'+'.join(rep.data)}{held})\n{CI_NOTE}", fontsize=10)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    save_figure(fig, path)
    plt.close(fig)
    return path
