"""GPU check: every ``--device cuda`` path of splitcomp answers as its CPU path does.

    python benchmarks/gpu_check.py [--sections pytest,batch_decode,timing,train,serve]
                                   [--device cuda|cpu] [--requests 16] [--tokens 16]

Sections (``--sections``, comma-separated; default: all of them):

``pytest``
    The tests that exercise a device (``tests/runtime/test_batch_decode.py``,
    ``tests/runtime/test_device.py`` and every test file that mentions ``cuda``), run by pytest
    in a child process: counts, failures, and the CUDA cases that ran rather than skipped.
``batch_decode``
    Real streams (a random-weight resnet20's ``layer2`` features, and mixed float32 / float16 /
    int64 requests) of every codec, decoded as one batch by
    :class:`~splitcomp.runtime.batch_decode.BatchDecoder` with the tail on the GPU and on the
    CPU: every tensor on the GPU, and equal to the CPU's bit for bit (``torch.equal`` after
    ``.cpu()``); codecs with a raw form (``fp32``, ``fp16``, ``int8``, ``blockwise8``) are
    dequantized on the GPU. Then whole deployments (a tail that doubles its inputs, so the
    answer is exact) on the GPU and the CPU answer a mixed batch with the same bytes.
``timing``
    One batched decode of 64 requests (resnet20 ``layer2`` features) on the GPU and on the CPU:
    median wall time of a few calls after warm-ups, per codec (figures only, no verdict).
``train``
    ``splitcomp train bottleneck|adapter|exit --device cuda`` on a tiny random image folder with
    random weights (every trainable kind with a ``--device`` flag; ``train gate`` has none):
    the logged loss falls, the trained modules are on the GPU, and a child process that sees no
    GPU (``CUDA_VISIBLE_DEVICES=``) loads each checkpoint on the CPU: the bottleneck's
    ``splitcomp eval --checkpoint`` reproduces the figures the GPU run reported, and the
    adapter's and the exit's outputs on the CPU match the GPU-trained modules'.
``serve``
    ``splitcomp serve --device cuda`` as a process (resnet20 split after ``layer2``, fp32
    streams; and a JPEG ``input`` plan) against the tail run here on the CPU, and a tiny LLM
    session (``llama_tiny``, random weights, split after block 2) with its server half on the
    GPU against the whole model's greedy tokens on the CPU.

The ``pytest``, ``batch_decode`` and ``timing`` sections live here, with the command line and
the JSON output; the ``train`` and ``serve`` sections live in the sibling module
``benchmarks/gpu_check_parts.py``, which this script imports.

Prints one JSON document and writes it to ``$OUT/gpu_check.json`` when ``$OUT`` is set
(rewritten after each section, so a run cut short keeps what it finished; the pytest log goes
to ``$OUT/gpu_check_pytest.log``); strict JSON: a non-finite figure (NaN, infinity) is written
as ``null``. Exits 0 when every section that ran passed, 1 otherwise. Without CUDA every
section is skipped with its reason (exit 0); ``--device cpu`` runs the same checks with the
CPU standing in for the GPU, to test this script on a machine without one.

Needs the ``torch`` and ``test`` extras (the device machine: carry ``constriction``, ``pcodec``,
``zstandard`` and ``websockets`` as wheels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the sibling gpu_check_parts.py, also when this file is imported rather than run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_parts import RTOL, check_serve, check_train, reload_on_cpu  # noqa: E402

from splitcomp import codecs  # noqa: E402
from splitcomp.partition import split  # noqa: E402
from splitcomp.runtime import Deployment  # noqa: E402
from splitcomp.runtime.batch_decode import BatchDecoder  # noqa: E402
from splitcomp.zoo import load_model  # noqa: E402

SECTIONS = ("pytest", "batch_decode", "timing", "train", "serve")
#: test files run by the ``pytest`` section (besides them: every test file that names cuda)
TEST_FILES = ("tests/runtime/test_batch_decode.py", "tests/runtime/test_device.py")
#: codecs (name, parameters) whose batch decode is compared; the first ones have a raw form
BATCH_CODECS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fp32", {}), ("fp16", {}), ("int8", {}), ("int8", {"per_channel": True, "axis": 1}),
    ("int8", {"per_channel": True, "axis": -1}), ("blockwise8", {}),
    ("blockwise8", {"block": 7}), ("bf16", {}), ("zstd", {}), ("rans", {}), ("slicer", {}),
    ("resilient", {}),
)
TIMED_CODECS = ("fp32", "int8", "blockwise8", "zstd")
Result = dict[str, Any]


def _out_dir() -> Path | None:
    out = os.environ.get("OUT")
    return Path(out) if out else None


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, infinity) as ``None``: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _dumps(result: Result, indent: int | None = None) -> str:
    """``result`` as strict JSON: non-finite floats written as ``null``."""
    return json.dumps(_finite(result), indent=indent, allow_nan=False)


def _save(result: Result) -> None:
    out = _out_dir()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(_dumps(result, indent=1) + "\n")


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- pytest


def _test_files() -> list[str]:
    """TEST_FILES and every test file under tests/ that mentions cuda."""
    files = list(TEST_FILES)
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = str(path.relative_to(ROOT))
        if rel not in files and "cuda" in path.read_text(encoding="utf-8"):
            files.append(rel)
    return files


def check_pytest(device: torch.device, timeout_s: float = 300) -> Result:
    """The device tests in a child pytest: counts, failures, skips, the CUDA cases that ran."""
    files = _test_files()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={xml}", *files]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        seconds = time.perf_counter() - t0
        out = _out_dir()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "gpu_check_pytest.log").write_text(proc.stdout + proc.stderr)
        if not xml.exists():
            return {"ok": False, "returncode": proc.returncode, "files": files,
                    "error": (proc.stdout + proc.stderr)[-3000:]}
        cases = list(ET.parse(xml).getroot().iter("testcase"))
    failed, skipped, cuda_ran = [], [], []
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            failed.append({"test": name, "message": (bad.get("message") or "")[:600]})
        elif skip is not None:
            skipped.append({"test": name, "reason": (skip.get("message") or "")[:200]})
        elif "cuda" in name.lower() and "without_cuda" not in name:
            cuda_ran.append(name)
    return {"ok": proc.returncode == 0 and not failed, "returncode": proc.returncode,
            "files": files, "device_visible": device.type, "seconds": round(seconds, 1),
            "tests": len(cases), "passed": len(cases) - len(failed) - len(skipped),
            "failed": failed, "skipped": skipped, "cuda_cases_passed": cuda_ran}


# ---------------------------------------------------------------------------- batch decode


class Doubler(nn.Module):
    """A tail that answers its inputs (float ones times two): exact on any device."""

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x * 2 if x.is_floating_point() else x for x in xs)


def _resnet20_features(n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` crossing tensors (1, 32, 16, 16) of a random-weight resnet20 cut at layer2."""
    torch.manual_seed(seed)
    model = load_model("resnet20", "random").eval()
    head, _ = split(model, "layer2", (torch.zeros(1, 3, 32, 32),))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 3, 32, 32, generator=g)
    with torch.inference_mode():
        (feat,) = head(x)
    return [f.unsqueeze(0).clone() for f in feat]


def _mixed(seed: int, batch: int) -> list[torch.Tensor]:
    """A request of three tensors: float32 (ReLU'd), float16, int64."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 6, 5, 3, generator=g).relu() * 3,
            torch.randn(batch, 7, generator=g).to(torch.float16),
            torch.arange(batch * 2).reshape(batch, 2)]


def _streams(codec: codecs.Codec, feats: list[torch.Tensor]) -> list[bytes]:
    """Per request one stream: the resnet20 features, then a few mixed requests."""
    blobs = [codec.encode(f) for f in feats]
    blobs += [codec.encode(_mixed(i, 1 + i % 2)) for i in range(4)]
    return blobs


def _compare_batches(gpu: Any, cpu: Any, device: torch.device) -> Result:
    """Tensors of two :class:`DecodedBatch`: on the device, equal bit for bit to the CPU's."""
    tensors = equal = wrong_device = 0
    worst = 0.0
    errors = [str(e) for e in gpu.errors + cpu.errors if e is not None]
    for g_in, c_in in zip(gpu.inputs, cpu.inputs, strict=True):
        if g_in is None or c_in is None:
            continue
        for g, c in zip(g_in, c_in, strict=True):
            tensors += 1
            wrong_device += g.device.type != device.type
            same = g.dtype == c.dtype and g.shape == c.shape and torch.equal(g.cpu(), c)
            equal += same
            if not same and g.shape == c.shape:
                worst = max(worst, float((g.cpu().double() - c.double()).abs().max()))
    return {"tensors": tensors, "equal": equal, "not_on_device": wrong_device,
            "max_abs_diff": worst, "errors": errors[:4],
            "ok": tensors > 0 and equal == tensors and not wrong_device and not errors}


def check_batch_decode(device: torch.device) -> Result:
    """BatchDecoder on ``device`` against the CPU, per codec; then deployments' answers."""
    feats = _resnet20_features(12)
    per_codec: Result = {}
    mixed: list[bytes] = []
    for name, params in BATCH_CODECS:
        label = name + "".join(f",{k}={v}" for k, v in params.items())
        codec = codecs.get(name, **params)
        blobs = _streams(codec, feats)
        mixed += blobs[:2] + blobs[-2:]
        raw = type(codec).decode_raw is not codecs.Codec.decode_raw
        cpu = BatchDecoder(torch.device("cpu")).decode(blobs, codecs.DEFAULT_LIMITS)
        row: Result = {"raw_form": raw, "streams": len(blobs)}
        for threads in (0, 2):
            dec = BatchDecoder(device, threads)
            try:
                got = dec.decode(blobs, codecs.DEFAULT_LIMITS)
                _sync(device)
                row[f"threads{threads}"] = _compare_batches(got, cpu, device)
            finally:
                dec.close()
        row["ok"] = all(row[f"threads{t}"]["ok"] for t in (0, 2))
        per_codec[label] = row
    bad = bytearray(mixed[5])
    bad[len(bad) // 2] ^= 0x10
    mixed[5:5] = [bytes(bad), b"not a bitstream"]
    answers = {}
    for where in ("cpu", str(device)):
        dep = Deployment("d", Doubler(), input_specs=None, device=where, max_batch_size=64)
        try:
            replies = dep.run_batch(mixed).replies
        finally:
            dep.close()
        answers[where] = [(int(r.error.code), r.error.message) if r.error else
                          (r.result, r.batch_size) for r in replies]
    got, want = answers[str(device)], answers["cpu"]
    same = sum(a == b for a, b in zip(got, want, strict=True))
    deployment = {"requests": len(mixed), "same_answers": same,
                  "errors_cpu": sum(isinstance(a[0], int) for a in want),
                  "ok": same == len(mixed)}
    return {"codecs": per_codec, "deployment": deployment,
            "ok": all(r["ok"] for r in per_codec.values()) and deployment["ok"]}


def check_timing(device: torch.device, requests: int = 64, reps: int = 15) -> Result:
    """Median seconds of one batched decode of ``requests`` streams, GPU and CPU."""
    feats = _resnet20_features(requests, seed=3)
    out: Result = {"requests": requests, "shape": list(feats[0].shape), "reps": reps}
    for name in TIMED_CODECS:
        codec = codecs.get(name)
        blobs = [codec.encode(f) for f in feats]
        row: Result = {"bytes_per_request": sum(map(len, blobs)) / len(blobs)}
        for where in ("cpu", str(device)):
            dev = torch.device(where)
            dec = BatchDecoder(dev)
            try:
                for _ in range(3):
                    dec.decode(blobs, codecs.DEFAULT_LIMITS)
                    _sync(dev)
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    dec.decode(blobs, codecs.DEFAULT_LIMITS)
                    _sync(dev)
                    times.append(time.perf_counter() - t0)
            finally:
                dec.close()
            row[f"{dev.type}_ms_median"] = round(1e3 * statistics.median(times), 3)
            row[f"{dev.type}_ms_min"] = round(1e3 * min(times), 3)
        out[name] = row
    return out




# ---------------------------------------------------------------------------- main


def _run_section(name: str, fn: Callable[[], Result]) -> Result:
    """``fn()`` timed; an exception is the section's failure, with its traceback."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - recorded: the check's finding
        out = {"ok": False, "error": "".join(traceback.format_exception(e))[-4000:]}
    out["section_seconds"] = round(time.perf_counter() - t0, 2)
    print(f"[gpu_check] {name}: ok={out.get('ok')} in {out['section_seconds']} s",
          file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="where the checked paths run (cpu: a dry run of this script)")
    p.add_argument("--requests", type=int, default=16, help="serve: requests per deployment")
    p.add_argument("--tokens", type=int, default=16, help="serve: LLM tokens generated")
    p.add_argument("--reload-on-cpu", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reload_on_cpu is not None:  # the train section's child
        torch.set_num_threads(4)
        print(_dumps(reload_on_cpu(args.reload_on_cpu)))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {', '.join(sorted(unknown))}")
    result: Result = {"device": args.device, "torch": torch.__version__,
                      "transformers": _version("transformers"), "numba": _version("numba"),
                      "cuda_available": torch.cuda.is_available(), "rtol": RTOL}
    if args.device == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA on this machine (torch.cuda.is_available() is False)"
        result.update({s: {"skipped": reason} for s in sections}, skipped=reason, ok=True)
        _save(result)
        print(_dumps(result, indent=1))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checks: dict[str, Callable[[], Result]] = {
            "pytest": lambda: check_pytest(device),
            "batch_decode": lambda: check_batch_decode(device),
            "timing": lambda: check_timing(device),
            "train": lambda: check_train(device, work / "train"),
            "serve": lambda: check_serve(device, work / "serve", args.requests, args.tokens),
        }
        (work / "train").mkdir()
        (work / "serve").mkdir()
        for name in sections:
            result[name] = _run_section(name, checks[name])
            _save(result)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["ok"] = all(result[s].get("ok", True) for s in sections)
    _save(result)
    print(_dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
