"""What every splitcomp figure shares: accuracy confidence intervals and the file formats.

An accuracy measured on ``n`` images is a proportion; :func:`wilson` gives its 95 % Wilson
score interval (sound near 0 % and 100 % and for small ``n``, unlike the normal
approximation), and :func:`accuracy_yerr` turns a row of accuracies in percent into the
``yerr`` of ``Axes.errorbar``. :func:`save_figure` writes one figure as PNG (for Markdown),
SVG and PDF (vector, for papers and zooming): the same stem, three suffixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the formats every figure is written in; the first is the one Markdown links to
FORMATS = ("png", "svg", "pdf")

CI_NOTE = "error bars: 95 % Wilson score interval over the evaluated images"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials, as fractions in [0, 1]
    (``z`` = 1.96: 95 %)."""
    if n <= 0:
        raise ValueError(f"wilson: n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k must lie in [0, n={n}], got {k}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_yerr(accuracies_pct: Sequence[float], n: int,
                  z: float = 1.96) -> list[list[float]]:
    """``[below, above]`` distances (in percentage points) from each accuracy (percent, on
    ``n`` images) to its Wilson interval: the ``yerr`` argument of ``errorbar``."""
    below, above = [], []
    for acc in accuracies_pct:
        k = min(n, max(0, round(acc / 100 * n)))
        lo, hi = wilson(k, n, z)
        below.append(max(0.0, acc - 100 * lo))
        above.append(max(0.0, 100 * hi - acc))
    return [below, above]


def save_figure(fig: Any, path: Path, *, formats: Sequence[str] = FORMATS,
                dpi: float | None = None) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix of ``formats``; returns the paths written
    (the first is ``path`` itself when its suffix is the first format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, dpi=dpi, format=fmt)
        out.append(target)
    return out
