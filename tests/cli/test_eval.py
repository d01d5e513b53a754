"""``splitcomp eval`` end to end: exact figures in the JSON, calibration kept apart."""

from __future__ import annotations

import json

import pytest

from splitcomp.cli import main

KEYS = {
    "model", "split", "codec", "params", "n_images", "top1_baseline", "top1", "drop_pp",
    "bits_per_element", "wire_bytes_per_sample", "encode_ms", "decode_ms",
}


@pytest.mark.requires_shared_data
def test_cli_eval_on_real_cifar(tmp_path, shared_path, single_thread) -> None:
    shared_path("weights")
    out = tmp_path / "r.json"
    rc = main([
        "eval", "--model", "resnet20", "--data", "cifar10", "--split", "layer2",
        "--codec", "int8", "--limit", "300", "--no-progress", "--json", str(out),
    ])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert KEYS <= set(rep)
    assert rep["n_images"] == 300 and rep["top1_baseline"] > 80
    assert abs(rep["drop_pp"]) < 3 and 8 < rep["bits_per_element"] < 8.2


@pytest.mark.requires_shared_data
def test_cli_target_drop_reports_on_unseen_images(tmp_path, shared_path, single_thread) -> None:
    shared_path("weights")
    out = tmp_path / "r.json"
    main([
        "eval", "--model", "resnet20", "--data", "cifar10", "--split", "layer2",
        "--codec", "rans", "--target-drop", "0.5", "--limit", "400", "--calib", "150",
        "--no-progress", "--json", str(out),
    ])
    rep = json.loads(out.read_text())
    assert rep["n_images"] == 250 and rep["calibration_images"] == 150
    assert rep["calibration_trials"] and rep["bits_per_element"] < 8


def test_cli_eval_without_weights_on_packaged_images(tmp_path, installed_package) -> None:
    installed_package("foolbox")
    out = tmp_path / "r.json"
    main([
        "eval", "--model", "resnet20", "--weights", "random", "--data", "foolbox-cifar10",
        "--split", "layer1", "--codec", "fp16", "--no-progress", "--json", str(out),
    ])
    rep = json.loads(out.read_text())
    assert rep["n_images"] == 20 and rep["bits_per_element"] > 16


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", [
    ["eval", "--model", "resnet20", "--data", "cifar10", "--split", "layer2", "--codec", "int8"],
    ["eval-lm", "--model", "llama_tiny", "--split", "1"],
], ids=["eval", "eval-lm"])
def test_device_cuda_without_cuda_is_one_line(argv, capsys) -> None:
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device" in err and "CUDA is not available" in err


@pytest.mark.requires_shared_data
def test_eval_on_device_auto_equals_cpu(tmp_path, shared_path, single_thread) -> None:
    """``--device auto`` (the CPU here) gives the figures ``cpu`` gives."""
    shared_path("weights")
    rep = {}
    for device in ("cpu", "auto"):
        out = tmp_path / f"{device}.json"
        assert main(["eval", "--model", "resnet20", "--data", "cifar10", "--split", "layer2",
                     "--codec", "int8", "--limit", "40", "--no-progress", "--device", device,
                     "--json", str(out)]) == 0
        rep[device] = json.loads(out.read_text())
    keys = ("top1_baseline", "top1", "bits_per_element", "wire_bytes_per_sample")
    assert {k: rep["cpu"][k] for k in keys} == {k: rep["auto"][k] for k in keys}
