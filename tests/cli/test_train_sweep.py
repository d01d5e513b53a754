"""``splitcomp train bottleneck --sweep``: a family of tiny runs, their figures and front."""

from __future__ import annotations

import json

import pytest

from splitcomp.cli import main
from tests.train.tiny import image_folder, train_args


def test_sweep_trains_each_run_and_writes_the_front(tmp_path, single_thread, capsys) -> None:
    data = image_folder(tmp_path / "data", classes=4, per_class=12)
    out, front = tmp_path / "family", tmp_path / "front.json"
    argv = train_args(data, out, "--sweep", "beta=1,10", "--json", str(front))
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["beta1", "beta10"]
    rep = json.loads(front.read_text())
    assert set(rep["runs"]) == {"beta1", "beta10"} and rep["swept"] == {"beta": [1.0, 10.0]}
    assert [rep["runs"][n]["beta"] for n in ("beta1", "beta10")] == [1.0, 10.0]
    assert rep["front"] and set(rep["front"]) <= set(rep["runs"])
    for name in ("beta1", "beta10"):
        meta = json.loads((out / name / "checkpoint.json").read_text())
        assert meta["config"]["seed"] == 0 and meta["info"]["figures"]["top1"] == \
            rep["runs"][name]["top1"]
    assert "front" in capsys.readouterr().out


@pytest.mark.parametrize("sweep, message", [
    ("lr=1,2", "not a field that can be swept"),
    ("channels=8,x", "bad value"),
    ("stride=3", "bad or repeated value"),
    ("beta", "FIELD=V1,V2"),
])
def test_bad_sweep_is_a_one_line_error(tmp_path, sweep, message, capsys) -> None:
    assert main(train_args(tmp_path, tmp_path / "ck", "--sweep", sweep)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
