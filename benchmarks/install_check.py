"""Installed like a library (#14): build the wheel, install it outside the checkout, and run
``splitcomp eval`` and ``serve`` (with the README's Python clients) from there.

The wheel goes into a fresh folder with ``pip install --no-deps --target SITE`` (the
dependencies are the repo venv's), every command runs from a temporary working folder with
``PYTHONPATH=SITE``, ``HOME`` pointed at a temporary folder and no ``SPLITCOMP_*``/``XDG_*``
variables, so the installed copy (not the checkout) is what runs, with the data passed by path.
It checks that the installed copy is the one imported, that ``py.typed`` and the package data
shipped, that nothing was written into SITE, and lists what was written under HOME.

    python benchmarks/install_check.py [--data ../shared/data] [--llm] [--json PATH]

``--llm`` also serves SmolLM2 split at block 15 and runs the README's ``RemoteLM`` snippet
(converting the GGUF into the temporary cache: about a minute). Prints a JSON summary; exit
status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime in ns) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def readme_snippets() -> list[str]:
    """The ``python`` code blocks of the README's "Use it from Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


class Env:
    """Runs commands as an installed copy would: from ``work``, ``PYTHONPATH=site``, a fresh
    ``HOME``, no splitcomp or XDG variables."""

    def __init__(self, root: Path, site: Path) -> None:
        self.work, self.home, self.site = root / "work", root / "home", site
        self.work.mkdir()
        self.home.mkdir()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SPLITCOMP_", "XDG_", "PYTHON"))}
        self.env.update(HOME=str(self.home), PYTHONPATH=str(site), OMP_NUM_THREADS="1",
                        PYTHONNOUSERSITE="1")

    def run(self, *argv: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, *argv], cwd=self.work, env={**self.env, **extra},
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *argv: str, **extra: str) -> subprocess.Popen:
        return subprocess.Popen([PYTHON, *argv], cwd=self.work, env={**self.env, **extra},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stdout.read() if proc.stdout else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"no server on port {port} after {timeout:g} s")


def _served(env: Env, serve: list[str], snippet: str, port: int, default_port: str,
            **client_env: str) -> dict[str, Any]:
    """Start ``splitcomp serve``, run ``snippet`` (its port replaced; ``client_env`` added to
    its environment) against it, stop it."""
    proc = env.start("-m", "splitcomp.cli", "serve", *serve, "--port", str(port))
    t0 = time.perf_counter()
    try:
        _wait_listening(proc, port)
        started = time.perf_counter() - t0
        code = snippet.replace(f"127.0.0.1:{default_port}", f"127.0.0.1:{port}")
        done = env.run("-c", "import torch; torch.set_num_threads(1)\n" + code, **client_env)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"ok": done.returncode == 0, "server_start_s": round(started, 1),
            "stdout": done.stdout.strip().splitlines()[-3:],
            "stderr_tail": done.stderr.strip().splitlines()[-3:]}


def check(data: Path, llm: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="splitcomp-install-") as tmp:
        root = Path(tmp)
        wheels, src = root / "wheels", root / "src"
        # from a clean copy: no stale build/ folder of the checkout can slip into the wheel
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", ".cache", "__pycache__", "results",
            "docs", "tests", "benchmarks", "examples", ".*_cache", ".hypothesis"))
        build = subprocess.run([PYTHON, "-m", "pip", "wheel", str(src), "--no-deps",
                                "--no-build-isolation", "-w", str(wheels), "-q"],
                               capture_output=True, text=True, timeout=600)
        (wheel,) = wheels.glob("splitcomp-*.whl")
        out["wheel"] = {"ok": build.returncode == 0, "name": wheel.name,
                        "bytes": wheel.stat().st_size}
        site = root / "site"
        subprocess.run([PYTHON, "-m", "pip", "install", "--no-deps", "--target", str(site),
                        str(wheel), "-q"], check=True, capture_output=True, timeout=600)
        before = _snapshot(site)
        env = Env(root, site)
        probe = env.run("-c", "import sys, splitcomp; print(splitcomp.__file__); "
                        "print('torch' in sys.modules)")
        where, torch_loaded = probe.stdout.split()
        out["imported_from_site"] = Path(where).is_relative_to(site)
        out["import_loads_torch"] = torch_loaded == "True"
        out["ships"] = {f: (site / "splitcomp" / f).is_file()
                        for f in ("py.typed", "llm/prompts.json")}
        weights = next((data / "weights").glob("resnet20-*.th"))
        eval_json = env.work / "eval.json"
        t0 = time.perf_counter()
        ev = env.run("-m", "splitcomp.cli", "eval", "--model", "resnet20", "--weights",
                     str(weights), "--data", str(data / "cifar10-test"), "--split", "layer2",
                     "--codec", "int8", "--limit", "50", "--no-progress", "--json",
                     str(eval_json))
        r = json.loads(eval_json.read_text()) if eval_json.is_file() else {}
        out["eval_by_path"] = {"ok": ev.returncode == 0, "s": round(time.perf_counter() - t0, 1),
                               **{k: r.get(k) for k in ("n_images", "top1_baseline", "top1",
                                                        "wire_bytes_per_sample")},
                               "git_in_provenance": "git" in r.get("provenance", {}),
                               "stderr_tail": ev.stderr.strip().splitlines()[-2:]}
        named = env.run("-m", "splitcomp.cli", "eval", "--model", "resnet20", "--data",
                        "cifar10", "--split", "layer2", "--codec", "int8", "--limit", "50",
                        "--no-progress")
        out["eval_without_data_folder"] = {"status": named.returncode,
                                           "stderr": named.stderr.strip()[-300:]}
        named = env.run("-m", "splitcomp.cli", "eval", "--model", "resnet20", "--data",
                        "cifar10", "--split", "layer2", "--codec", "int8", "--limit", "50",
                        "--no-progress", SPLITCOMP_DATA=str(data))
        out["eval_with_SPLITCOMP_DATA"] = {"status": named.returncode}
        vision, lm = readme_snippets()
        # the server: weights by path; the README client loads the data and the default
        # weights by name, so it is told where the data folder is
        out["serve_vision_readme_client"] = _served(
            env, ["--model", "resnet20", "--split", "layer2", "--codec", "int8", "--weights",
                  str(weights)], vision, _free_port(), "8765", SPLITCOMP_DATA=str(data))
        if llm:
            out["serve_llm_readme_client"] = _served(
                env, ["--llm", "smollm2", "--llm-split", "15"], lm, _free_port(), "8766")
        after = _snapshot(site)
        out["site_unchanged"] = after == before
        out["site_changes"] = sorted(set(after.items()) ^ set(before.items()))[:10]
        out["written_under_home"] = sorted({str(Path(p).parent) for p in
                                            _snapshot(env.home)})[:20]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                   help="the shared data folder (CIFAR-10 test set and ResNet weights)")
    p.add_argument("--llm", action="store_true", help="also serve SmolLM2 and run RemoteLM")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not (args.data / "cifar10-test").is_dir():
        print(f"no CIFAR-10 test set under {args.data}: nothing to check", file=sys.stderr)
        return 0
    result = check(args.data.resolve(), args.llm)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = (result["wheel"]["ok"] and result["imported_from_site"] and result["site_unchanged"]
          and all(result["ships"].values()) and result["eval_by_path"]["ok"]
          and result["serve_vision_readme_client"]["ok"]
          and result.get("serve_llm_readme_client", {"ok": True})["ok"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
