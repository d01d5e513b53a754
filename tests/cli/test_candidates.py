"""``splitcomp candidates`` prints every module cut with its crossing tensors."""

from __future__ import annotations

from splitcomp.cli import main


def test_candidates_command_lists_module_cuts(capsys) -> None:
    assert main(["candidates", "--model", "resnet20"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines()[2:]}
    assert "1x32x16x16" in lines["layer2"] and "8,192" in lines["layer2"]
    assert "1x16x32x32" in lines["layer1"]
    assert "+" in lines["layer2.0.conv1"]  # inside a residual block both branches cross
