"""The SC2 report: tables, figures and the JSON round trip (``splitcomp report`` end to end:
tests/cli/test_report.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitcomp.bench.codec_eval import EvalResult
from splitcomp.bench.sc2_report import (
    EncoderCost,
    ModelReport,
    SplitReport,
    codec_settings,
    load_report_json,
    matched,
    png_name,
    write_report,
)

pytest.importorskip("matplotlib", reason="the report draws with matplotlib (splitcomp[plot])")


def result(codec: str, params: dict, nbytes: float, acc: float) -> EvalResult:
    return EvalResult(model="toy", split="s1", codec=codec, params=params, n_images=100,
                      top1_baseline=90.0, top1=acc, drop_pp=90.0 - acc,
                      bits_per_element=8 * nbytes / 1000, wire_bytes_per_sample=nbytes,
                      encode_ms=0.1, decode_ms=0.1, elements_per_sample=1000)


def toy_report() -> ModelReport:
    feats = [result("fp16", {}, 2000, 90.0)]
    feats += [result("rans", {"bits": b}, 100 * b, a)
              for b, a in ((2, 80.0), (3, 89.9), (4, 89.0), (8, 90.0))]
    inputs = [{"codec": "jpeg", "quality": q, "bytes_per_sample": 50 * q, "accuracy": a,
               "encode_ms": 0.1, "decode_ms": 0.1, "bits_per_element": 0.1, "n_images": 100}
              for q, a in ((10, 70.0), (50, 89.6), (90, 90.0))]
    split = SplitReport("s1", [[4, 10, 25]], 1000, EncoderCost(10, 40, 2_000_000, 5_000_000),
                        90.0, feats)
    return ModelReport("toy", ["synthetic"], 100, [3, 32, 32], 3072, 90.0, 100, 5_000_000,
                       inputs, [split], command="splitcomp report --model toy")


def test_codec_settings_sweep_the_quality_grid() -> None:
    assert codec_settings("fp16") == [{}]
    assert codec_settings("rans") == [{"bits": b} for b in (2, 3, 4, 5, 6, 8)]


def test_matched_walks_down_from_the_highest_rate() -> None:
    m = dict(matched(toy_report(), 0.5))
    assert m["split s1, rans"]["setting"] == "bits=8"  # bits=4 misses, so bits=3 is not taken
    assert dict(matched(toy_report(), 1.0))["split s1, rans"]["setting"] == "bits=3"
    assert m["full offload, JPEG input"]["quality"] == 50
    assert m["full offload, raw uint8"]["bytes_per_sample"] == 3072


def test_write_report_markdown_png_and_json(tmp_path: Path) -> None:
    rep = toy_report()
    md = write_report([rep], tmp_path).read_text()
    png = tmp_path / png_name("toy", "s1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 150_000
    assert f"]({png.name})" in md and "head MFLOPs" in md and "bits/element" in md
    assert png.with_suffix(".svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert "[SVG](toy_s1.svg) and [PDF](toy_s1.pdf)" in md and "Wilson" in md
    assert "MFLOPs per sample (FLOPs: a multiply-add counts 2)" in md
    assert "| rans | bits=3 | 300 |" in md and "uncompressed top-1" not in md
    back = load_report_json(tmp_path / "report.json")
    assert back[0].to_json() == rep.to_json()


def trained_row(name: str, nbytes: float, acc: float) -> dict:
    """The figures of ``evaluate_checkpoint`` a report keeps (toy values)."""
    return {"name": name, "checkpoint": f"/ck/{name}", "channels": 8, "stride": 2,
            "beta": 1.0, "bytes_per_sample": nbytes, "bytes_per_sample_full_header": nbytes + 11,
            "bits_per_element": 8 * nbytes / 1000, "top1_baseline": 90.0, "top1": acc,
            "drop_pp": 90.0 - acc, "encoder_params": 500, "encoder_mflops": 0.5,
            "head_mflops": 2.0, "tuned_blocks": ["layer2.2"], "n_train": 5000, "n_eval": 100}


def test_trained_rows_in_tables_figure_and_json(tmp_path: Path) -> None:
    rep = toy_report()
    rep.splits[0].trained = [trained_row("a", 150, 89.8), trained_row("b", 90, 88.0)]
    rep.images_note = "images: the eval part of the checkpoint's split, 100 images"
    md = write_report([rep], tmp_path).read_text()
    assert "| a (C=8, stride 2, beta=1) | 150.0 | 161.0 | 1.200 | 89.80 | +0.20 | 500 |" in md
    assert "| split s1, trained bottleneck | 150 (a (C=8, stride 2, beta=1)) |" in md
    assert "| split s1 + trained bottleneck b | 510 | 2,040 |" in md  # head + encoder
    assert "Images: the eval part of the checkpoint's split, 100 images" in md
    assert (tmp_path / png_name("toy", "s1")).exists()
    back = load_report_json(tmp_path / "report.json")
    assert back[0].to_json() == rep.to_json()
