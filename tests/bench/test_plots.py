"""The figure helpers: Wilson intervals against known values, error bars in points, every
figure written as PNG, SVG and PDF."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from splitcomp.bench.plots import FORMATS, accuracy_yerr, save_figure, wilson


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (5, 10, 0.2366, 0.7634),       # the textbook example: 5 of 10
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),     # 81 of 263, z = 1.96
    (0, 200, 0.0, 3.8416 / 203.8416),  # k = 0: the upper end is z^2 / (n + z^2)
])
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_is_symmetric_narrows_with_n_and_widens_with_z() -> None:
    lo, hi = wilson(30, 100)
    lo2, hi2 = wilson(70, 100)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert hi - lo > wilson(300, 1000)[1] - wilson(300, 1000)[0]
    assert wilson(30, 100, z=2.576)[1] > hi
    # large n: close to the normal approximation
    half = 1.96 * math.sqrt(0.3 * 0.7 / 100_000)
    assert wilson(30_000, 100_000) == pytest.approx((0.3 - half, 0.3 + half), abs=1e-5)


def test_wilson_refuses_impossible_counts() -> None:
    for k, n in ((1, 0), (-1, 10), (11, 10)):
        with pytest.raises(ValueError):
            wilson(k, n)


def test_accuracy_yerr_in_points() -> None:
    below, above = accuracy_yerr([50.0, 100.0], 10)
    assert below[0] == pytest.approx(50 - 23.66, abs=0.01)
    assert above[0] == pytest.approx(76.34 - 50, abs=0.01)
    assert above[1] == 0.0 and below[1] == pytest.approx(100 - 72.25, abs=0.01)


def test_save_figure_writes_each_format(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib", reason="figures need matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.errorbar([1, 2], [50.0, 60.0], yerr=accuracy_yerr([50.0, 60.0], 200))
    paths = save_figure(fig, tmp_path / "sub" / "fig.png")
    plt.close(fig)
    assert [p.suffix for p in paths] == [f".{f}" for f in FORMATS]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    assert paths[1].read_text().find("<svg") >= 0
    assert paths[2].read_bytes()[:5] == b"%PDF-"
