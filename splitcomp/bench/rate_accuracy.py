"""Rate/accuracy table: every codec at every cut, at the lowest rate within a top-1 drop.

Features are computed once per cut. Codecs with a quality knob are tuned on a fixed
calibration subset and reported on the disjoint rest; codecs without one are reported on
the same rest, so every row of a cut shares its images and its baseline.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .. import codecs
from .codec_eval import (
    EvalResult,
    calibration_split,
    collect_features,
    evaluate_codec,
    search_quality,
    top1,
)
from .setup import load_eval_setup

#: codecs compared by default, with the fixed parameters of each row
DEFAULT_ROWS: tuple[tuple[str, dict], ...] = (
    ("fp32", {}),
    ("fp16", {}),
    ("bf16", {}),
    ("zstd", {}),
    ("int8", {}),
    ("int8", {"per_channel": True}),
    ("blockwise8", {}),
    ("rans", {}),
    ("slicer", {}),
)


def rate_accuracy(
    model: str,
    data: str | Path,
    cuts: Sequence[str],
    *,
    weights: str | Path | None = None,
    rows: Sequence[tuple[str, dict]] = DEFAULT_ROWS,
    target_drop: float = 0.5,
    limit: int | None = None,
    calib: int | None = None,
    progress: bool = True,
) -> list[EvalResult]:
    """One :class:`EvalResult` per (cut, row); rows whose codec is not registered are skipped."""
    results: list[EvalResult] = []
    for cut in cuts:
        setup = load_eval_setup(model, weights, data, cut, limit=limit)
        bar = tqdm(total=len(setup.dataset), desc=f"{model}@{cut} head", disable=not progress,
                   file=sys.stderr)
        feats = collect_features(setup.head, setup.batches(128), bar.update)
        bar.close()
        n_cal = calib or max(100, len(feats) // 10)
        cal_idx, rep_idx = calibration_split(len(feats), n_cal)
        cal, rep = feats.subset(cal_idx), feats.subset(rep_idx)
        baseline, _ = top1(setup.tail, rep.tensors, rep.labels)
        for name, fixed in rows:
            if name not in codecs.available():
                continue
            params, trials = search_quality(setup.tail, cal, name, target_drop, fixed=fixed)
            res = evaluate_codec(setup.tail, rep, codecs.get(name, **params), model=model,
                                 split=cut, baseline=baseline)
            res.extra.update(target_drop=target_drop, calibration_images=len(cal),
                             calibration_trials=len(trials))
            results.append(res)
            if progress:
                print(f"  {model}@{cut} {name} {params}: {res.bits_per_element:.3f} bits/el, "
                      f"drop {res.drop_pp:.2f} pp", file=sys.stderr)
    return results
