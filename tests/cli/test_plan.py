"""``splitcomp plan`` end to end on a small model and the foolbox sample images."""

from __future__ import annotations

import json

import pytest

from splitcomp.cli import main
from splitcomp.plan import load_plan
from splitcomp.plan.plan_summary import render

pytestmark = pytest.mark.timeout(120)


def test_plan_cli_smoke(tmp_path, installed_package, single_thread, capsys) -> None:
    installed_package("foolbox")
    out, plan_path, prof = tmp_path / "r.json", tmp_path / "plan.json", tmp_path / "prof.json"
    args = ["plan", "--model", "resnet20", "--weights", "random", "--data", "foolbox-cifar10",
            "--calib", "12", "--splits", "layer1,layer2", "--codecs", "fp16,rans",
            "--input-codecs", "jpeg", "--repeats", "2", "--bandwidth", "1Mbit", "--rtt", "20ms",
            "--edge-profile", "phone", "--objective", "latency", "--json", str(out),
            "--plan-out", str(plan_path), "--profile-out", str(prof)]
    assert main(args) == 0
    text = capsys.readouterr().out
    for col in ("plan", "B/sample", "drop pp", "xfer ms", "e2e ms", "server ms", "edge mJ"):
        assert col in text
    assert "(all on edge)" in text and "raw" in text and "best for latency" in text
    # one unit, said: the same FLOPs as `splitcomp report` (ResNet-20: 81.1 M, not 40.6 M MACs)
    assert "whole model 81.1 MFLOPs per sample (FLOPs: a multiply-add counts 2)" in text
    assert "edge MFLOPs" in text
    res = json.loads(out.read_text())
    (device,) = [r for r in res["rows"] if r["kind"] == "device"]
    assert device["head_flops"] == 81_102_080 and "multiply-add counts 2" in res["flops_note"]
    kinds = {r["kind"] for r in res["rows"]}
    assert kinds == {"device", "offload", "input", "split"}
    assert {r["split"] for r in res["rows"] if r["kind"] == "split"} == {"layer1", "layer2"}
    assert set(res["best"]) == {"latency", "server", "uplink", "energy"}
    plan = load_plan(plan_path)
    assert plan.model == "resnet20" and plan.objective == "latency"
    assert plan.predicted_ms == pytest.approx(
        min(r["end_to_end_ms"] for r in res["rows"] if r["feasible"]))
    md = render([out])
    assert "| latency |" in md and "| plan | split |" in md
    # the saved profile re-costs on another channel without measuring again
    assert main(["plan", "--model", "resnet20", "--profile-in", str(prof), "--bandwidth",
                 "100Mbit", "--objective", "energy", "--offload-only"]) == 0
    assert "<- chosen" in capsys.readouterr().out
