"""LLM sessions with ``device=``: ``auto`` (the CPU here, the GPU where CUDA is) generates
exactly what the whole model does, as ``cpu`` does; ``cuda`` without CUDA is a typed error.
GPU runs: benchmarks/gpu_check.py."""

from __future__ import annotations

import pytest
import torch

from splitcomp.llm import ServerHalf, greedy_unsplit
from splitcomp.runtime import Server
from splitcomp.runtime.device import DeviceError, OnDevice
from splitcomp.runtime.llm.client import RemoteLM
from splitcomp.runtime.llm.service import LLMDeployment

pytestmark = pytest.mark.timeout(60)
SPLIT = 2


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_sessions_on_the_chosen_device_generate_exactly(tiny_models, prompt, device) -> None:
    model = tiny_models["llama_tiny"]
    want, _ = greedy_unsplit(model, prompt, 8)
    dep = LLMDeployment("lm", ServerHalf(model, SPLIT), device=device)
    on_gpu = torch.cuda.is_available() and device == "auto"
    assert isinstance(dep.server.part, OnDevice) == on_gpu
    assert dep.device.type == ("cuda" if on_gpu else "cpu")
    bg = Server(llm=[dep]).start_in_thread()
    try:
        with RemoteLM(model, SPLIT, bg.url, "lm", "fp32") as lm:
            got = [s.token for s in lm.generate(prompt, 8)]
        # GPU kernels round otherwise: exact there is gpu_check's business (against the CPU)
        assert got == want if not on_gpu else len(got) == 8
    finally:
        bg.stop(grace_s=2.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(tiny_models) -> None:
    with pytest.raises(DeviceError, match="CUDA is not available"):
        LLMDeployment("lm", ServerHalf(tiny_models["llama_tiny"], SPLIT), device="cuda")
