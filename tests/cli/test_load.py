"""``splitcomp load`` against an embedded server (ResNet-20, random weights, a few foolbox CIFAR
images): the JSON report and the summary."""

from __future__ import annotations

import json

import pytest

from splitcomp.cli import load
from splitcomp.data import foolbox_data_dir

from .commands import run_command

pytestmark = pytest.mark.skipif(foolbox_data_dir() is None, reason="foolbox images missing")


def test_cli_load_json(tmp_path, capsys) -> None:
    out = tmp_path / "load.json"
    assert run_command(load, ["--clients", "2", "--requests", "6", "--data", "foolbox-cifar10",
                              "--model", "resnet20", "--split", "layer2", "--codec", "slicer",
                              "--weights", "random", "--limit", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["split"]["requests"] == 6 and "server_light_ratio" in report
    assert "requests/s" in capsys.readouterr().out
