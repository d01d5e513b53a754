"""Evaluation machinery: exact byte accounting, calibration kept apart (the ``eval`` command
end to end: tests/cli/test_eval.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitcomp import codecs
from splitcomp.bench.codec_eval import (
    FeatureSet,
    calibration_split,
    evaluate_codec,
    search_quality,
    top1,
)


def toy_problem(n: int = 300) -> tuple[nn.Module, FeatureSet]:
    """A linear 'tail' that classifies ReLU features; labels are its clean predictions."""
    g = torch.Generator().manual_seed(0)
    feats = (torch.randn(n, 4, 6, 6, generator=g) - 0.2).relu()
    tail = nn.Sequential(nn.Flatten(), nn.Linear(144, 5))
    with torch.no_grad():
        tail[1].weight.copy_(torch.randn(5, 144, generator=g))
        labels = tail(feats).argmax(-1)
    return tail.eval(), FeatureSet((feats,), labels)


def test_lossless_codec_exact_accounting() -> None:
    tail, fs = toy_problem()
    res = evaluate_codec(tail, fs, codecs.get("fp32"))
    assert res.top1_baseline == res.top1 == 100.0 and res.drop_pp == 0.0
    per_sample = len(codecs.get("fp32").encode(fs.sample(0)))
    assert res.wire_bytes_per_sample == per_sample  # header and CRC included
    assert res.bits_per_element == pytest.approx(8 * per_sample / 144)
    assert res.bits_per_element > 32  # never reports less than what is sent


def test_lossy_codec_costs_accuracy_and_bits() -> None:
    tail, fs = toy_problem()
    coarse = evaluate_codec(tail, fs, codecs.get("rans", bits=2, clip=1.0))
    fine = evaluate_codec(tail, fs, codecs.get("rans", bits=8))
    assert coarse.bits_per_element < fine.bits_per_element < 32
    assert coarse.drop_pp >= fine.drop_pp


def test_calibration_split_is_disjoint_and_fixed() -> None:
    cal, rep = calibration_split(1000, 100)
    assert len(cal) == 100 and len(rep) == 900
    assert not set(cal.tolist()) & set(rep.tolist())
    assert torch.equal(cal, calibration_split(1000, 100)[0])
    with pytest.raises(ValueError):
        calibration_split(10, 10)


def test_search_picks_lowest_rate_meeting_target() -> None:
    tail, fs = toy_problem()
    params, trials = search_quality(tail, fs, "rans", target_drop=1.0, fixed={"clip": 1.0})
    grid = codecs.codec_class("rans").quality_grid
    chosen = grid.index(params["bits"])
    by_bits = {t.params["bits"]: t for t in trials}
    assert by_bits[params["bits"]].drop_pp <= 1.0 or chosen == len(grid) - 1
    if chosen > 0 and grid[chosen - 1] in by_bits:
        assert by_bits[grid[chosen - 1]].drop_pp > 1.0
    acc, hits = top1(tail, fs.tensors, fs.labels)
    assert acc == 100.0 and hits.all()
