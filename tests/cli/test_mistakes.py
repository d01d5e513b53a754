"""A user's first hour (#14): each command with each kind of mistake exits with status 2 and one
line on stderr (``splitcomp: error: ...``), no traceback, before any heavy work, and replaces
no file. Tiny data (10 random classes, 3 images each) and random weights: seconds in all."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from splitcomp import __version__
from splitcomp.cli import main
from splitcomp.cli._checks import label_mismatch, open_data, with_unit
from splitcomp.cli._common import (
    UsageError,
    check_output,
    check_output_folder,
    guarded,
    write_json,
)
from splitcomp.runtime.client import AsyncSplitClient, unreachable
from splitcomp.runtime.errors import ConnectionLost, RuntimeTimeout
from splitcomp.zoo import model_config
from tests.train.tiny import image_folder

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.timeout(120)]

EXISTING = '{"keep": true}\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Paths the argument templates name: data, an empty folder, bad weights and tokens files,
    an existing output file and folder, a port nobody listens on and one that is taken."""
    root = tmp_path_factory.mktemp("mistakes")
    image_folder(root / "data", classes=10, per_class=3)
    (root / "empty").mkdir()
    (root / "text.pt").write_text("not a checkpoint\n")
    torch.save({"w": Fraction(1, 3)}, root / "object.pt")  # refused by weights_only loading
    (root / "short").write_text("edge short-token\n")
    (root / "exists.json").write_text(EXISTING)
    (root / "report").mkdir()
    (root / "report" / "notes.md").write_text(EXISTING)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    yield {"data": str(root / "data"), "empty": str(root / "empty"), "tmp": str(root),
           "free": str(_free_port()), "busy": str(busy.getsockname()[1])}
    busy.close()


EVAL = "eval --model resnet20 --weights random --data {data} --split layer2 --no-progress"
TRAIN = ("train bottleneck --model resnet20 --weights random --data {data} --split layer2 "
         "--beta 1 --epochs 1 --no-progress --out {tmp}/ck")
LOAD = ("load --model resnet20 --weights random --data {data} --split layer2 --codec int8 "
        "--requests 4 --clients 2")
SERVE = "serve --model resnet20 --split layer2 --weights random --port 0"
PLAN = "plan --model resnet20 --weights random --data {data} --calib 10 --repeats 1"
REPORT = "report --model resnet20 --weights random --data {data} --no-progress"

#: (id, command line, what the one line must mention)
MISTAKES = [
    ("no-command", "", "required"),
    ("unknown-command", "evaluate", "invalid choice"),
    ("unknown-flag", f"{EVAL} --codec int8 --bogus", "unrecognized"),
    ("eval-model", EVAL.replace("resnet20", "resnet2O") + " --codec int8", "resnet20"),
    ("eval-split", EVAL.replace("layer2", "layer9") + " --codec int8", "layer9"),
    ("eval-codec", f"{EVAL} --codec slicr", "invalid choice"),
    ("eval-no-data", EVAL.replace("{data}", "{tmp}/nope") + " --codec int8", "nope"),
    ("eval-empty-data", EVAL.replace("{data}", "{empty}") + " --codec int8", "no images"),
    ("eval-quality", f"{EVAL} --codec slicer --quality 7", "--quality"),
    ("eval-quality-knob", f"{EVAL} --codec int8 --quality 0.5", "quality knob"),
    ("eval-param-type", f"{EVAL} --codec rans --param bits=4x", "bits"),
    ("eval-param-name", f"{EVAL} --codec int8 --param nope=1", "no parameter"),
    ("eval-param-form", f"{EVAL} --codec int8 --param bits", "key=value"),
    ("eval-param-range", f"{EVAL} --codec rans --param bits=40", "bits"),
    ("eval-weights-text", f"{EVAL} --codec int8 --weights {{tmp}}/text.pt",
     "not a file torch.save wrote"),
    ("eval-weights-object", f"{EVAL} --codec int8 --weights {{tmp}}/object.pt",
     "Python objects"),
    ("eval-weights-missing", f"{EVAL} --codec int8 --weights {{tmp}}/none.pt", "no such file"),
    ("eval-limit", f"{EVAL} --codec int8 --limit 0", "--limit"),
    ("eval-calibration", f"{EVAL} --codec rans --target-drop 0.5 --limit 20", "--calib"),
    ("eval-json-exists", f"{EVAL} --codec int8 --json {{tmp}}/exists.json", "--force"),
    ("eval-json-folder", f"{EVAL} --codec int8 --json {{tmp}}", "folder"),
    ("eval-json-under-file", f"{EVAL} --codec int8 --json {{tmp}}/exists.json/r.json",
     "not a folder"),
    ("report-split", f"{REPORT} --split layer9 --out {{tmp}}/rep", "layer9"),
    ("report-model", f"{REPORT.replace('resnet20', 'resnet2O')} --split layer2 --out {{tmp}}/r",
     "no such model"),
    ("report-out-exists", f"{REPORT} --split layer2 --out {{tmp}}/report", "--force"),
    ("report-limit", f"{REPORT} --split layer2 --limit 0 --out {{tmp}}/rep", "--limit"),
    ("plan-bandwidth", f"{PLAN} --bandwidth 10", "unit"),
    ("plan-rtt", f"{PLAN} --rtt 20", "unit"),
    ("plan-rate", f"{PLAN} --bandwidth 10MBps", "10MBps"),
    ("plan-codec", f"{PLAN} --codecs slicr", "slicer"),
    ("plan-split", f"{PLAN} --splits layer9", "layer9"),
    ("plan-json-exists", f"{PLAN} --json {{tmp}}/exists.json", "--force"),
    ("load-clients", f"{LOAD} --clients 0", "--clients"),
    ("load-limit", f"{LOAD} --limit 0", "--limit"),
    ("load-url", f"{LOAD} --url ws://127.0.0.1:{{free}}", "refused"),
    ("load-url-form", f"{LOAD} --url 127.0.0.1:8765", "ws://HOST:PORT"),
    ("load-quality", f"{LOAD} --codec slicer --quality 7", "--quality"),
    ("load-split", f"{LOAD} --split layer9", "layer9"),
    ("serve-tokens", f"{SERVE} --tokens {{tmp}}/short", "16 characters"),
    ("serve-tokens-missing", f"{SERVE} --tokens {{tmp}}/none", "--tokens"),
    ("serve-port", SERVE.replace("--port 0", "--port {busy}"), "in use"),
    ("serve-model", SERVE.replace("resnet20", "resnet2O"), "no such model"),
    ("serve-weights", SERVE.replace("random", "{tmp}/text.pt"), "not a weights"),
    ("serve-split", SERVE.replace("layer2", "layer9"), "layer9"),
    ("serve-tls", f"{SERVE} --tls-cert {{tmp}}/c.pem --tls-key {{tmp}}/k.pem", "no such file"),
    ("serve-nothing", "serve --port 0", "nothing to serve"),
    ("candidates-model", "candidates --model resnet2O", "resnet20"),
    ("models-pattern", "models 'nomodel*' --no-cuts", "no model"),
    ("generate-server", "generate --model llama_tiny --split 1 --server ws://127.0.0.1:{free} "
     "hello", "refused"),
    ("generate-model", "generate --model llama_tin --split 1 hello", "llama_tiny"),
    ("generate-param", "generate --model llama_tiny --split 1 --codec rans --param bits=4x hi",
     "bits"),
    ("eval-lm-param", "eval-lm --model llama_tiny --split 1 --codec rans --param bits=x", "bits"),
    ("eval-lm-json", "eval-lm --model llama_tiny --split 1 --json {tmp}/exists.json", "--force"),
    ("train-json-exists", f"{TRAIN} --json {{tmp}}/exists.json", "--force"),
    ("demo-clients", "demo --clients 0", "--clients"),
]


def _argv(line: str, env: dict[str, str]) -> list[str]:
    import shlex

    return shlex.split(line.format(**env))


@pytest.mark.parametrize(("line", "mention"), [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_and_status_2(line: str, mention: str, env, capsys) -> None:
    t0 = time.perf_counter()
    assert main(_argv(line, env)) == 2
    seconds = time.perf_counter() - t0
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("splitcomp: error: ") and "Traceback" not in out.err
    assert mention in lines[0], lines[0]
    assert seconds < 20  # before any heavy work (the slowest check traces a model)
    assert (Path(env["tmp"]) / "exists.json").read_text() == EXISTING  # nothing replaced
    assert (Path(env["tmp"]) / "report" / "notes.md").read_text() == EXISTING
    assert sorted(p.name for p in (Path(env["tmp"]) / "report").iterdir()) == ["notes.md"]


def test_debug_shows_the_traceback_instead(env) -> None:
    argv = _argv(EVAL.replace("resnet20", "resnet2O") + " --codec int8", env)
    with pytest.raises(UsageError, match="no such model"):
        main(["--debug", *argv])
    with pytest.raises(UsageError):
        main([*argv, "--debug"])  # after the command too


def test_a_bug_is_a_traceback_and_status_1(capsys) -> None:
    def bug() -> int:
        raise AttributeError("oops")

    assert guarded(bug) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "AttributeError: oops" in err and "bug" in err
    with pytest.raises(AttributeError):
        guarded(bug, debug=True)

    def old_style() -> int:
        raise SystemExit("--x: a message\non two lines")

    assert guarded(old_style) == 2
    assert capsys.readouterr().err == "splitcomp: error: --x: a message on two lines\n"


def test_version_and_models(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"splitcomp {__version__}"
    assert main(["models", "resnet2*"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("resnet20 "))
    assert row[1:5] == ["image-classification", "cifar10", "3x32x32", "10"]
    assert int(row[-1]) > 5  # cut candidates
    assert main(["models", "--no-cuts"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2" in out and "llama_tiny" in out and "causal-lm" in out


def test_force_replaces_atomically_and_makes_folders(env, tmp_path, capsys) -> None:
    target = tmp_path / "a" / "b" / "r.json"
    argv = _argv(f"{EVAL} --codec int8 --limit 10 --json {target}", env)
    assert main(argv) == 0
    first = json.loads(target.read_text())
    assert first["n_images"] == 10
    assert main(argv) == 2  # exists now
    assert main([*argv, "--force"]) == 0
    assert json.loads(target.read_text())["n_images"] == 10
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temporary left
    assert "warning" not in capsys.readouterr().err  # 10 classes: the labels fit resnet20


def test_target_drop_is_flagged(env, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert main(_argv(f"{EVAL} --codec rans --target-drop -50 --calib 10 --json {out}",
                      env)) == 0
    r = json.loads(out.read_text())
    assert r["target_met"] is False and r["calibration_met"] is False  # -50 pp: never met
    assert "MISSED" in capsys.readouterr().out


def test_labels_that_do_not_fit_the_model_are_flagged(env, capsys) -> None:
    ds = open_data(env["data"], model_config("mobilenet_v2"))
    assert "10 classes, but mobilenet_v2 predicts 1000" in capsys.readouterr().err
    assert label_mismatch(model_config("resnet20"), ds) is None
    four = image_folder(Path(env["tmp"]) / "four", classes=4, per_class=1)
    assert "4 classes" in label_mismatch(model_config("resnet20"), open_data(four))


def test_output_checks(tmp_path) -> None:
    f = tmp_path / "x.json"
    check_output(f)  # new: fine
    write_json({"a": 1}, f)
    with pytest.raises(UsageError, match="--force"):
        check_output(f)
    check_output(f, force=True)
    check_output(tmp_path / "new" / "deeper" / "x.json")
    with pytest.raises(UsageError, match="not a folder"):
        check_output(f / "y.json")
    check_output_folder(tmp_path / "fresh")
    with pytest.raises(UsageError, match="not empty"):
        check_output_folder(tmp_path)
    check_output_folder(tmp_path, keep=lambda p: True)
    assert with_unit("--rtt", "20ms", "ms") == "20ms"
    for bare in ("20", "1e6", " 0.5 "):
        with pytest.raises(UsageError, match="give a unit"):
            with_unit("--bandwidth", bare, "Mbit")


def test_a_server_never_reached_fails_at_once() -> None:
    url = f"ws://127.0.0.1:{_free_port()}"

    async def connect(**options) -> None:
        client = AsyncSplitClient(url, timeout_s=3.0, backoff_s=0.01, **options)
        try:
            await client.infer_encoded(b"x")
        finally:
            await client.close()

    t0 = time.perf_counter()
    with pytest.raises(ConnectionLost, match="connection refused"):
        asyncio.run(connect())
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(RuntimeTimeout, match="Refused|Connect call failed"):  # not "None"
        asyncio.run(connect(wait_for_server=True))
    assert unreachable(ConnectionRefusedError(111, "refused")) == "connection refused"
    assert unreachable(TimeoutError()) is None
