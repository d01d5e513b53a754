"""GPU serving check: the CUDA path answers as the CPU path does.

    python benchmarks/gpu_check.py [--requests 16] [--tokens 16]

Where CUDA is available:

1. ``splitcomp serve --model resnet20 --split layer2 --device cuda`` runs as a process (random
   weights saved to a file, so this side loads the same model); a client here runs the head
   on the CPU and sends ``--requests`` fp32 feature streams; each answer is compared with the
   tail run here on the CPU: largest absolute difference, same top-1 class. The same is done
   against ``--device cuda`` serving a JPEG ``input`` plan (the server decodes the file on the
   CPU and runs the whole model on the GPU).
2. An LLM session (``llama_tiny``, random weights, split after block 2) served in this
   process with its server half on the GPU: greedy tokens through the server against the
   whole model's on the CPU (agreement, first divergence, largest logit difference of the
   first step).

Prints one JSON document; exits 0 when every check passes, 1 otherwise, and 0 with
``{"skipped": "no CUDA"}`` where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp.bench.input_compression import decode_image, encode_image  # noqa: E402
from splitcomp.cli.serve import read_listening_url  # noqa: E402
from splitcomp.partition import split  # noqa: E402
from splitcomp.plan.channel import Channel  # noqa: E402
from splitcomp.plan.planfile import Plan, save_plan  # noqa: E402
from splitcomp.runtime import SplitClient  # noqa: E402
from splitcomp.runtime import protocol as P  # noqa: E402
from splitcomp.runtime.fulloffload import PixelsToLogits, image_request  # noqa: E402
from splitcomp.zoo import create_model, load_model, model_config  # noqa: E402

#: the largest logit difference accepted between GPU and CPU, relative to the largest logit
#: (the server keeps torch's defaults: cuDNN convolutions may use TF32)
RTOL = 1e-2


def _serve(argv: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "splitcomp.cli.serve", *argv, "--port", "0",
                             "--device", "cuda", "--max-wait-ms", "0"],
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


def _compare(got: list[torch.Tensor], want: list[torch.Tensor], ms: list[float]
             ) -> dict[str, Any]:
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
    scale = max(1.0, max(float(w.abs().max()) for w in want))
    same = sum(int(g.argmax(-1).eq(w.argmax(-1)).all()) for g, w in zip(got, want, strict=True))
    return {"requests": len(got), "max_abs_diff": diff, "max_abs_logit": scale,
            "top1_same": same, "latency_ms_median": sorted(ms)[len(ms) // 2],
            "ok": diff <= RTOL * scale and same == len(got)}


def vision(requests: int, folder: Path) -> dict[str, Any]:
    """resnet20 split after layer2 and a JPEG input plan, each served with --device cuda."""
    torch.manual_seed(0)
    weights = folder / "r20.pt"
    torch.save(create_model("resnet20", weights=None).state_dict(), weights)
    model = load_model("resnet20", str(weights)).eval()
    head, tail = split(model, "layer2", (torch.zeros(1, 3, 32, 32),))
    g = torch.Generator().manual_seed(1)
    pixels = [torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=g)
              for _ in range(requests)]
    whole = PixelsToLogits(model, model_config("resnet20").preprocess()).eval()
    out: dict[str, Any] = {}
    proc, url = _serve(["--model", "resnet20", "--split", "layer2", "--weights", str(weights),
                        "--deployment", "r20"])
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
    proc, url = _serve(["--plan", str(plan)])
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
    return out


def llm(tokens: int) -> dict[str, Any]:
    """A tiny LLM's session with its server half on the GPU, against the CPU's greedy run."""
    from splitcomp.llm import ServerHalf, greedy_unsplit
    from splitcomp.runtime import Server
    from splitcomp.runtime.llm.client import RemoteLM
    from splitcomp.runtime.llm.service import LLMDeployment

    torch.manual_seed(0)
    model = create_model("llama_tiny").eval()
    prompt = torch.randint(0, 256, (12,), generator=torch.Generator().manual_seed(2))
    want, logits = greedy_unsplit(model, prompt, tokens)
    dep = LLMDeployment("lm", ServerHalf(model, 2), device="cuda")
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
            "on_gpu": str(dep.device), "seconds": seconds,
            "ok": got[:1] == want[:1] and lp_diff < 1e-2 and agree >= 0.75}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--tokens", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA"}))
        return 0
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "rtol": RTOL}
    with tempfile.TemporaryDirectory() as tmp:
        result["vision"] = vision(args.requests, Path(tmp))
    result["llm"] = llm(args.tokens)
    result["ok"] = all(v["ok"] for v in result["vision"].values()) and result["llm"]["ok"]
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
