"""The ``train`` and ``serve`` sections of ``benchmarks/gpu_check.py`` (its entry point).

Not run on its own: ``gpu_check.py`` imports :func:`check_train`, :func:`reload_on_cpu` (what
``gpu_check.py --reload-on-cpu`` runs in its child process that sees no GPU),
:func:`check_serve` and :data:`RTOL` from here. See ``gpu_check.py``'s docstring for what each
section checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from splitcomp.bench.input_compression import decode_image, encode_image  # noqa: E402
from splitcomp.cli.serve import read_listening_url  # noqa: E402
from splitcomp.partition import split  # noqa: E402
from splitcomp.plan.channel import Channel  # noqa: E402
from splitcomp.plan.planfile import Plan, save_plan  # noqa: E402
from splitcomp.runtime import SplitClient  # noqa: E402
from splitcomp.runtime import protocol as P  # noqa: E402
from splitcomp.runtime.fulloffload import PixelsToLogits, image_request  # noqa: E402
from splitcomp.zoo import create_model, load_model, model_config  # noqa: E402

#: the largest output difference accepted between GPU and CPU, relative to the largest output
#: (torch's defaults are kept: cuDNN convolutions may use TF32)
RTOL = 1e-2
#: the entry point, which the train section runs again as its ``--reload-on-cpu`` child
SCRIPT = Path(__file__).resolve().with_name("gpu_check.py")
Result = dict[str, Any]


def _rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference over the largest absolute value (at least 1)."""
    diff = float((got.float().cpu() - want.float().cpu()).abs().max())
    return diff / max(1.0, float(want.float().abs().max()))


# ---------------------------------------------------------------------------- training


def _image_folder(root: Path, classes: int = 4, per_class: int = 24, seed: int = 0) -> Path:
    """``root/class<c>/<i>.png``: random 32x32 RGB images (the tests' tiny CIFAR layout)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                folder / f"{i:03d}.png")
    return root


def _train_argv(kind: str, data: Path, out: Path, device: str) -> list[str]:
    common = ["--model", "resnet20", "--weights", "random", "--data", str(data), "--split",
              "layer2", "--no-progress", "--device", device, "--out", str(out / "ck"),
              "--json", str(out / "r.json")]
    if kind == "bottleneck":  # 64 images, batches of 16, 15 epochs: 60 steps, 45 in stage 2
        return ["train", "bottleneck", *common, "--beta", "50", "--channels", "8", "--lr",
                "5e-3", "--epochs", "15", "--batch-size", "16", "--n-train", "64"]
    if kind == "adapter":  # 64 images, batches of 16, 15 epochs: 60 steps
        return ["train", "adapter", *common, "--shift", "gaussian_noise:3", "--epochs", "15",
                "--batch-size", "16", "--n-train", "64", "--pad", "0"]
    # exit: 64 images less 16 to calibrate, batches of 8, 8 epochs: 48 steps
    return ["train", "exit", *common, "--target-drop", "50", "--epochs", "8", "--batch-size",
            "8", "--n-train", "64", "--n-calib", "16"]


#: (CLI module, its trainer function's name) per kind
TRAINERS = {"bottleneck": ("splitcomp.cli.train", "train_bottleneck"),
            "adapter": ("splitcomp.cli.train_adapter", "train_adapter"),
            "exit": ("splitcomp.cli.train_exit", "train_exit")}


def _captured(kind: str, seen: dict[str, Any]) -> Callable[[], None]:
    """Wrap the CLI's trainer so that its arguments and results land in ``seen``; returns
    the function that puts the original back."""
    import importlib

    module = importlib.import_module(TRAINERS[kind][0])
    name = TRAINERS[kind][1]
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        seen.update(head=args[0], tail=args[1], module=out[0], hist=out[1])
        return out

    setattr(module, name, wrapper)
    return lambda: setattr(module, name, original)


def _loss_falls(kind: str, hist: Any) -> Result:
    """The logged losses (the bottleneck's: of stage 2, its rate weight ramps up through
    stage 1) and whether they fell: the mean of the last two below that of the first two
    (each is one batch's loss)."""
    steps, loss = list(hist.step), list(hist.loss)
    if kind == "bottleneck":
        start = next((i for i, s in enumerate(steps) if s > 0.25 * steps[-1]), 0)
        steps, loss = steps[start:], loss[start:]
    row: Result = {"steps": int(hist.steps), "logged_steps": steps,
                   "loss": [round(v, 5) for v in loss]}
    if getattr(hist, "bits_per_sample", None):
        row["bits_first_last"] = [round(hist.bits_per_sample[0], 2),
                                  round(hist.bits_per_sample[-1], 2)]
    row["loss_fell"] = len(loss) >= 3 and sum(loss[-2:]) < sum(loss[:2])
    return row


def _on_device(module: nn.Module | None, device: torch.device) -> bool:
    return module is not None and all(p.device.type == device.type
                                      for p in module.parameters())


@torch.no_grad()
def _probe(kind: str, seen: dict[str, Any], x: torch.Tensor, device: torch.device
           ) -> torch.Tensor:
    """The trained module's output on ``x`` where it was trained (adapter: features at the
    cut; exit: exit logits); to compare with the checkpoint run on the CPU."""
    x = x.to(device)
    if kind == "adapter":
        (feat,) = seen["module"].eval().to(device)(x)
        return feat.cpu()
    (feat,) = seen["head"].eval().to(device)(x)
    return seen["module"].eval().to(device)(feat).cpu()


def check_train(device: torch.device, work: Path) -> Result:
    """Each trainable kind's CLI run on ``device``; then its checkpoint reloaded on the CPU
    by a child process that sees no GPU."""
    from splitcomp.cli import main as cli

    data = _image_folder(work / "data")
    out: Result = {}
    probes: dict[str, torch.Tensor] = {}
    x = None
    for kind in TRAINERS:
        folder = work / kind
        folder.mkdir()
        seen: dict[str, Any] = {}
        restore = _captured(kind, seen)
        grad = torch.is_grad_enabled()
        t0 = time.perf_counter()
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                rc = cli(_train_argv(kind, data, folder, str(device)))
        except Exception as e:  # noqa: BLE001 - recorded: the check's finding
            rc, seen["error"] = -1, "".join(traceback.format_exception(e))[-3000:]
        finally:
            restore()
            torch.set_grad_enabled(grad)
        sys.stderr.write(err.getvalue())
        row: Result = {"returncode": rc, "seconds": round(time.perf_counter() - t0, 2)}
        if rc != 0:
            row["stderr_tail"] = err.getvalue()[-2500:]
        if "error" in seen:
            row["error"] = seen["error"]
        if "hist" in seen:
            row.update(_loss_falls(kind, seen["hist"]))
            trained = seen["module"]
            row["trained_on_device"] = _on_device(
                trained.bottleneck if kind == "bottleneck" else trained, device)
            if kind != "bottleneck":
                if x is None:
                    from splitcomp.cli._training import teacher_setup

                    ds = teacher_setup("resnet20", "random", str(data), "layer2", 0).dataset
                    x = torch.stack([ds[i][0] for i in range(8)])
                probes[kind] = _probe(kind, seen, x, device)
        if (folder / "r.json").exists():
            row["figures"] = json.loads((folder / "r.json").read_text())
        out[kind] = row
    if x is not None:
        torch.save({"x": x, **probes}, work / "probes.pt")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--reload-on-cpu",
                           str(work)], capture_output=True, text=True, env=env, timeout=300)
    try:
        reload = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        reload = {"error": (proc.stdout + proc.stderr)[-3000:]}
    for kind, row in out.items():
        back = reload.get(kind, {"error": reload.get("error", "not reloaded")})
        if kind == "bottleneck" and "figures" in back and "figures" in row:
            back.update(_same_figures(row.pop("figures"), back.pop("figures")))
        row["reload_on_cpu"] = back
        row["ok"] = (row["returncode"] == 0 and bool(row.get("loss_fell"))
                     and bool(row.get("trained_on_device")) and bool(back.get("ok")))
    out["ok"] = all(r["ok"] for r in out.values())
    out["reload_child_saw_cuda"] = reload.get("cuda_visible")
    return out


def _same_figures(gpu: Result, cpu: Result) -> Result:
    """The bottleneck's figures from its GPU run against ``eval --checkpoint`` on the CPU:
    top-1 within one eval image, bytes within 2 %, the same tables."""
    one = 100.0 / max(int(gpu["n_eval"]), 1)
    keys = ("top1", "top1_baseline", "bytes_per_sample", "tables_id", "n_eval")
    cmp = {k: [gpu.get(k), cpu.get(k)] for k in keys}
    ok = (abs(gpu["top1"] - cpu["top1"]) <= one + 1e-9
          and abs(gpu["top1_baseline"] - cpu["top1_baseline"]) <= one + 1e-9
          and abs(gpu["bytes_per_sample"] - cpu["bytes_per_sample"])
          <= 0.02 * gpu["bytes_per_sample"]
          and gpu["tables_id"] == cpu["tables_id"] and gpu["n_eval"] == cpu["n_eval"])
    return {"figures_gpu_vs_cpu": cmp, "figures_match": ok, "ok": ok}


def reload_on_cpu(work: Path) -> Result:
    """In a process without CUDA: load each checkpoint of :func:`check_train` on the CPU,
    run it there and compare with the GPU run's figures and outputs."""
    from splitcomp.cli import main as cli
    from splitcomp.cli._training import teacher_setup
    from splitcomp.train.adapters import load_adapter
    from splitcomp.train.exit_ckpt import load_exit

    out: Result = {"cuda_visible": torch.cuda.is_available()}
    probes = torch.load(work / "probes.pt") if (work / "probes.pt").exists() else {}
    setup = teacher_setup("resnet20", "random", str(work / "data"), "layer2", 0)
    for kind in TRAINERS:
        ck = work / kind / "ck"
        row: Result = {}
        try:
            if kind == "bottleneck":
                rc = cli(["eval", "--checkpoint", str(ck), "--data", str(work / "data"),
                          "--no-progress", "--json", str(work / "eval_cpu.json")])
                row["eval_returncode"] = rc
                if rc == 0:
                    row["figures"] = json.loads((work / "eval_cpu.json").read_text())
                row["ok"] = rc == 0
            else:
                with torch.no_grad():
                    x = probes["x"]
                    if kind == "adapter":
                        back = load_adapter(ck)
                        mods = [m for m in (back.adapter, back.input_adapter) if m is not None]
                        (got,) = back.edge_model(setup.head)(x)
                    else:
                        back = load_exit(ck)
                        mods = [back.exit.head]
                        (feat,) = setup.head.eval()(x)
                        got = back.exit.head(feat)
                on_cpu = all(p.device.type == "cpu" for m in mods for p in m.parameters())
                rel = _rel_diff(got, probes[kind])
                row.update(params_on_cpu=on_cpu, output_rel_diff=rel,
                           ok=on_cpu and rel <= RTOL)
        except Exception as e:  # noqa: BLE001 - recorded: the check's finding
            row.update(ok=False, error="".join(traceback.format_exception(e))[-3000:])
        out[kind] = row
    return out


# ---------------------------------------------------------------------------- serving


def _serve(argv: list[str], device: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "splitcomp.cli.serve", *argv, "--port", "0",
                             "--device", device, "--max-wait-ms", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = read_listening_url(proc.stdout, max_lines=50)
    if url is None:
        proc.kill()
        raise RuntimeError(f"serve did not start: {proc.stderr.read()[-2000:]}")
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _compare(got: list[torch.Tensor], want: list[torch.Tensor], ms: list[float]) -> Result:
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
    scale = max(1.0, max(float(w.abs().max()) for w in want))
    same = sum(int(g.argmax(-1).eq(w.argmax(-1)).all()) for g, w in zip(got, want, strict=True))
    return {"requests": len(got), "max_abs_diff": diff, "max_abs_logit": scale,
            "top1_same": same, "latency_ms_median": sorted(ms)[len(ms) // 2],
            "ok": diff <= RTOL * scale and same == len(got)}


def vision(requests: int, folder: Path, device: str) -> Result:
    """resnet20 split after layer2 and a JPEG input plan, each served on ``device``."""
    torch.manual_seed(0)
    weights = folder / "r20.pt"
    torch.save(create_model("resnet20", weights=None).state_dict(), weights)
    model = load_model("resnet20", str(weights)).eval()
    head, tail = split(model, "layer2", (torch.zeros(1, 3, 32, 32),))
    g = torch.Generator().manual_seed(1)
    pixels = [torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=g)
              for _ in range(requests)]
    whole = PixelsToLogits(model, model_config("resnet20").preprocess()).eval()
    out: Result = {}
    proc, url = _serve(["--model", "resnet20", "--split", "layer2", "--weights", str(weights),
                        "--deployment", "r20"], device)
    try:
        got, want, ms = [], [], []
        with SplitClient(url, head, "fp32", "r20", timeout_s=60) as client:
            for px in pixels:
                x = (px.float() - whole.mean) / whole.std
                t0 = time.perf_counter()
                got.append(client.infer(x))
                ms.append(1e3 * (time.perf_counter() - t0))
                with torch.inference_mode():
                    want.append(tail(*head(x)))
        out["split"] = _compare(got, want, ms)
    finally:
        _stop(proc)
    plan = folder / "input.plan.json"
    save_plan(Plan(model="resnet20", kind="input", split=None, codec="jpeg",
                   params={"quality": 90}, channel=Channel(10e6, 0.02).to_json(),
                   device={"name": "phone"}, objective="latency", max_drop=0.5,
                   predicted={"end_to_end_ms": 0.0}, weights=str(weights),
                   deployment="resnet20-jpeg"), plan)
    proc, url = _serve(["--plan", str(plan)], device)
    try:
        got, want, ms = [], [], []
        with SplitClient(url, None, "fp32", "resnet20-jpeg", timeout_s=60) as client:
            for px in pixels:
                data = encode_image(px[0], "jpeg", 90)
                t0 = time.perf_counter()
                got.append(client.infer_encoded(image_request(data)).output)
                ms.append(1e3 * (time.perf_counter() - t0))
                with torch.inference_mode():
                    want.append(whole(decode_image(data)[None]))
        out["jpeg_input"] = _compare(got, want, ms)
    finally:
        _stop(proc)
    out["ok"] = all(v["ok"] for v in out.values())
    return out


def llm(tokens: int, device: str) -> Result:
    """A tiny LLM's session with its server half on ``device``, against the CPU's greedy run."""
    from splitcomp.llm import ServerHalf, greedy_unsplit
    from splitcomp.runtime import Server
    from splitcomp.runtime.llm.client import RemoteLM
    from splitcomp.runtime.llm.service import LLMDeployment

    torch.manual_seed(0)
    model = create_model("llama_tiny").eval()
    prompt = torch.randint(0, 256, (12,), generator=torch.Generator().manual_seed(2))
    want, logits = greedy_unsplit(model, prompt, tokens)
    dep = LLMDeployment("lm", ServerHalf(model, 2), device=device)
    bg = Server(llm=[dep]).start_in_thread()
    try:
        t0 = time.perf_counter()
        with RemoteLM(model, 2, bg.url, "lm", "fp32", sampling=P.Sampling(logprobs=1)) as lm:
            steps = list(lm.generate(prompt, tokens))
        seconds = time.perf_counter() - t0
    finally:
        bg.stop(grace_s=2.0)
    got = [s.token for s in steps]
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    logp = torch.log_softmax(logits[0].float(), -1)
    lp_diff = abs(steps[0].logprob - float(logp[steps[0].token]))
    agree = sum(a == b for a, b in zip(got, want, strict=False)) / max(len(want), 1)
    return {"model": "llama_tiny", "split": 2, "tokens": len(got), "agreement": agree,
            "first_divergence": first, "first_step_logprob_diff": lp_diff,
            "on_device": str(dep.device), "seconds": seconds,
            "ok": got[:1] == want[:1] and lp_diff < 1e-2 and agree >= 0.75}


def check_serve(device: torch.device, work: Path, requests: int, tokens: int) -> Result:
    """The vision deployments and the LLM session, each recorded even if the other fails."""
    out: Result = {}
    for name, fn in (("vision", lambda: vision(requests, work, str(device))),
                     ("llm", lambda: llm(tokens, str(device)))):
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - recorded: the check's finding
            out[name] = {"ok": False, "error": "".join(traceback.format_exception(e))[-3000:]}
    out["ok"] = out["vision"]["ok"] and out["llm"]["ok"]
    return out
