"""``splitcomp run FILE`` (#14): an experiment file is checked whole before anything runs (a
mistake: one line naming the file and the key, exit 2, nothing written), runs through the
commands' own parsers, and every JSON result carries its provenance; the examples reproduce
the committed results in docs/results/."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from splitcomp.cli import _provenance as prov
from splitcomp.cli import main
from splitcomp.cli._common import write_json
from splitcomp.data import paths
from tests.train.tiny import image_folder, train_args

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RESULTS = ROOT / "docs" / "results"

#: a tiny experiment: train a bottleneck around a random resnet20 (9 steps), evaluate it
TINY = """\
description = "tiny"
model = "resnet20"
data = "{data}"
no_progress = true

[[run]]
command = "train bottleneck"
weights = "random"
{train}
out = "{root}/ck"
json = "{root}/train.json"

[[run]]
command = "eval"
checkpoint = "{root}/ck"
json = "{root}/eval.json"
"""

#: the figures two runs of one experiment must share
SAME = ("top1_baseline", "top1", "drop_pp", "bytes_per_sample", "bits_per_element", "n_eval")


def _train_keys() -> str:
    """``train_args``'s options (those the shared keys do not give) as TOML lines."""
    argv = train_args(Path("D"), Path("O"))[2:]
    lines, i = [], 0
    while i < len(argv):
        key = argv[i][2:].replace("-", "_")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 2
        else:
            value, i = "true", i + 1
        if key not in ("model", "weights", "data", "out", "no_progress"):
            lines.append(f"{key} = {value if value[0].isdigit() else json.dumps(value)}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("run") / "data", classes=4, per_class=12)


def _one_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("splitcomp: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


BAD = [  # (id, file text, words the one line must hold)
    ("toml", 'command = "eval"\nmodel = \n', ["not valid TOML", "line 2"]),
    ("no-command", 'model = "resnet20"\n', ["command"]),
    ("unrunnable", 'command = "serve"\n', ["serve", "cannot run"]),
    ("no-component", 'command = "train"\n', ["bottleneck"]),
    ("unknown-key", 'command = "eval"\nmodel = "resnet20"\nmodle = 1\n', ["'modle'", "eval"]),
    ("bad-int", 'command = "eval"\nmodel = "resnet20"\ndata = "d"\nlimit = "ten"\n',
     ["--limit", "ten"]),
    ("bad-choice", 'command = "eval"\nmodel = "resnet20"\ndata = "d"\ncodec = "gzip"\n',
     ["--codec", "gzip"]),
    ("switch", 'command = "eval"\ndata = "d"\nno_progress = "yes"\n', ["no_progress", "switch"]),
    ("required", 'command = "eval"\nmodel = "resnet20"\n', ["--data"]),
    ("model", 'command = "eval"\nmodel = "resnet2O"\ndata = "d"\n', ["resnet2O", "resnet20"]),
    ("later-run", '[[run]]\ncommand = "eval"\ndata = "d"\n[[run]]\ncommand = "plan"\n'
     'model = "resnet20"\nobjective = "fast"\n', ["[run 2]", "--objective", "fast"]),
    ("twice", '[[run]]\ncommand = "eval"\ndata = "d"\njson = "x.json"\n[[run]]\n'
     'command = "eval"\ndata = "d"\njson = "x.json"\n', ["[run 2]", "also written"]),
]


@pytest.mark.parametrize("text,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_file_is_one_line_and_runs_nothing(text, words, tmp_path, capsys,
                                                 monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "exp.toml"
    f.write_text(text)
    assert main(["run", str(f)]) == 2
    _one_error(capsys, str(f), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]


def test_missing_file_existing_output_and_bad_set(tmp_path, capsys) -> None:
    assert main(["run", str(tmp_path / "none.toml")]) == 2
    _one_error(capsys, "none.toml")
    out = tmp_path / "r.json"
    out.write_text("{}\n")
    f = tmp_path / "exp.toml"
    f.write_text(f'command = "eval"\nmodel = "resnet20"\ndata = "d"\njson = "{out}"\n')
    assert main(["run", str(f)]) == 2
    _one_error(capsys, str(f), "exists", "--force")
    assert out.read_text() == "{}\n"
    assert main(["run", str(f), "--set", "bogus=1"]) == 2
    _one_error(capsys, "--set bogus")
    assert main(["run", str(f), "--set", "nothing"]) == 2
    _one_error(capsys, "KEY=VALUE")


def test_dry_run_prints_the_command_lines(tmp_path, capsys) -> None:
    f = tmp_path / "exp.toml"
    f.write_text('model = "resnet20"\n[[run]]\ncommand = "eval"\ndata = "d"\ncodec = "rans"\n'
                 'param = { bits = 3, clip = 0.99 }\ntarget_drop = -1\n[[run]]\n'
                 'command = "report"\nsplit = ["layer1", "layer2"]\ncodecs = ["int8", "rans"]\n'
                 'out = "rep"\n[[run]]\ncommand = "plan"\ndata = ["a", "b"]\n')
    assert main(["run", str(f), "--dry-run", "--set", "limit=50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "splitcomp eval --model=resnet20 --data=d --codec=rans --param=bits=3 "
        "--param=clip=0.99 --target-drop=-1 --limit=50",
        "splitcomp report --model=resnet20 --split=layer1 --split=layer2 --codecs int8 rans "
        "--out=rep --limit=50",
        "splitcomp plan --model=resnet20 --data=a,b"]


def test_every_example_is_a_valid_file(capsys) -> None:
    files = sorted(EXAMPLES.glob("*.toml"))
    assert {f.stem.split("_")[0] for f in files} >= {"eval", "plan", "train"}
    for f in files:
        assert main(["run", str(f), "--dry-run"]) == 0, capsys.readouterr().err


def _figures(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_tiny_experiment_records_provenance_and_reproduces(data, tmp_path, capsys) -> None:
    root = tmp_path / "r"
    f = tmp_path / "tiny.toml"
    f.write_text(TINY.format(data=data, root=root, train=_train_keys()))
    assert main(["run", str(f)]) == 0
    assert "2/2: splitcomp eval" in capsys.readouterr().err
    first = {n: _figures(root / f"{n}.json") for n in ("train", "eval")}
    for name, r in first.items():
        p = r["provenance"]
        assert {"config", "started", "versions", "python", "platform"} <= set(p)
        assert {"splitcomp", "torch", "numpy", "constriction"} <= set(p["versions"])
        assert p["experiment"]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert p["experiment"]["text"] == f.read_text()
        assert p["experiment"]["run"] == {"train": 1, "eval": 2}[name]
        assert p["config"]["args"]["weights"] == {"train": "random", "eval": None}[name]
        assert ("git" in p) == (prov.git_state() is not None)
    assert first["train"]["provenance"]["config"]["argv"][:2] == ["train", "bottleneck"]
    assert first["eval"]["provenance"]["config"]["args"]["checkpoint"] == str(root / "ck")
    assert main(["run", str(f)]) == 2  # the results exist now
    assert main(["run", str(f), "--force"]) == 0
    again = {n: _figures(root / f"{n}.json") for n in ("train", "eval")}
    for name in first:
        assert {k: again[name][k] for k in SAME} == {k: first[name][k] for k in SAME}
    assert {k: first["eval"][k] for k in SAME} == {k: first["train"][k] for k in SAME}


def test_the_command_line_records_its_config_and_git_is_optional(data, tmp_path, monkeypatch
                                                                 ) -> None:
    out = tmp_path / "e.json"
    assert main(["eval", "--model", "resnet20", "--weights", "random", "--data", str(data),
                 "--split", "layer2", "--codec", "int8", "--limit", "8", "--no-progress",
                 "--json", str(out)]) == 0
    p = _figures(out)["provenance"]
    assert p["config"]["argv"][0] == "eval" and p["config"]["args"]["codec"] == "int8"
    assert "experiment" not in p
    if paths.checkout_root() is not None and (ROOT / ".git").exists():
        assert len(p["git"]["commit"]) == 40 and isinstance(p["git"]["dirty"], bool)
    # outside a checkout (an installed package) there is no git block, and no failure
    monkeypatch.setattr(prov, "checkout_root", lambda: None)
    prov.git_state.cache_clear()
    try:
        write_json({"x": 1}, tmp_path / "plain.json")
    finally:
        prov.git_state.cache_clear()
    plain = _figures(tmp_path / "plain.json")["provenance"]
    assert "git" not in plain and plain["config"] is None  # no run recorded here


@pytest.mark.requires_shared_data
def test_the_eval_example_reproduces_its_committed_result(tmp_path) -> None:
    out = tmp_path / "e.json"
    f = EXAMPLES / "eval_resnet20_layer2_rans.toml"
    assert main(["run", str(f), "--set", f'json="{out}"']) == 0
    got, want = _figures(out), _figures(RESULTS / "example_eval_resnet20_layer2_rans.json")
    keys = ("n_images", "top1_baseline", "top1", "drop_pp", "bits_per_element",
            "wire_bytes_per_sample", "params")
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert got["provenance"]["experiment"]["sha256"] == \
        want["provenance"]["experiment"]["sha256"]  # the committed file came from this one


def test_the_plan_example_reproduces_the_committed_plan(tmp_path) -> None:
    out, plan = tmp_path / "p.json", tmp_path / "p.plan.json"
    f = EXAMPLES / "plan_resnet20_10Mbit.toml"
    assert main(["run", str(f), "--set", f'json="{out}"', "--set", f'plan_out="{plan}"']) == 0
    got, want = _figures(out), _figures(RESULTS / "plan_resnet20_10Mbit.json")
    assert got["best"] == want["best"] and got["best_offload"] == want["best_offload"]
    assert [{k: r[k] for k in w} for r, w in zip(got["rows"], want["rows"], strict=True)] \
        == want["rows"]
    assert plan.is_file()


def test_a_yaml_file_means_what_the_toml_one_does(tmp_path, capsys) -> None:
    pytest.importorskip("yaml")
    toml, yaml = tmp_path / "e.toml", tmp_path / "e.yaml"
    toml.write_text('model = "resnet20"\n[[run]]\ncommand = "eval"\ndata = "d"\n'
                    'param = { bits = 3 }\n[[run]]\ncommand = "plan"\nrtt = "20ms"\n')
    yaml.write_text("model: resnet20\nrun:\n  - command: eval\n    data: d\n    param: "
                    "{bits: 3}\n  - command: plan\n    rtt: 20ms\n")
    assert main(["run", str(toml), "--dry-run"]) == 0
    want = capsys.readouterr().out
    assert main(["run", str(yaml), "--dry-run"]) == 0
    assert capsys.readouterr().out == want and "--param=bits=3" in want
    yaml.write_text("a: [\n")
    assert main(["run", str(yaml)]) == 2
    _one_error(capsys, str(yaml), "not valid YAML")


def test_a_result_folder_keeps_the_provenance_of_each_command(tmp_path) -> None:
    """``report --out``'s folder (its report.json is a list): ``provenance.json`` beside it
    gains one record per command that wrote into the folder."""
    import argparse

    from splitcomp.cli._common import write_folder

    out = tmp_path / "rep"
    for model in ("resnet20", "resnet44"):
        args = argparse.Namespace(command="report", model=model, out=out)
        with prov.recording(args, ["report", "--model", model]):
            write_folder(out, lambda tmp: (tmp / "report.json").write_text("[]\n"))
    runs = _figures(out / prov.FOLDER_FILE)["runs"]
    assert [r["config"]["args"]["model"] for r in runs] == ["resnet20", "resnet44"]
    assert runs[0]["config"]["args"]["out"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["provenance.json", "report.json"]


def test_a_profile_with_provenance_reads_back(tmp_path) -> None:
    """``plan --profile-out`` files carry provenance now; ``--profile-in`` still reads them."""
    from splitcomp.plan.profile import ModelProfile

    d = _figures(RESULTS / "plan_resnet20.profile.json")
    write_json(d, tmp_path / "p.json")
    back = _figures(tmp_path / "p.json")
    assert "provenance" in back
    assert ModelProfile.from_json(back) == ModelProfile.from_json(d)
