"""``device=`` of the deployments: ``cpu`` and ``auto`` give the same answers (on a machine
without CUDA, ``auto`` is the CPU path itself), ``cuda`` without CUDA is a typed error, and the
device helpers move nested inputs and bring outputs back. GPU runs: benchmarks/gpu_check.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitcomp import codecs
from splitcomp.runtime import Deployment
from splitcomp.runtime.device import (
    DeviceError,
    OnDevice,
    on_device,
    resolve_device,
    to_device,
)
from splitcomp.runtime.fulloffload import zoo_full_offload

FP32 = codecs.get("fp32")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == resolve_device(None) == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == resolve_device(" AUTO ").type == want
    for bad in ("tpu", "gpu", "cuda:x", ""):
        with pytest.raises(DeviceError, match="expected cpu, cuda"):
            resolve_device(bad)


@no_cuda
def test_cuda_without_cuda_is_a_typed_error(r20) -> None:
    for spec in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device(spec)
    with pytest.raises(DeviceError):
        Deployment("r20", r20.tail, device="cuda")
    assert issubclass(DeviceError, ValueError)


def test_cpu_and_auto_deployments_answer_alike(r20) -> None:
    feats = [r20.features(torch.randn(1, 3, 32, 32)) for _ in range(3)]
    refs = [r20.reference(f, 3) for f in feats]  # now: a GPU deployment moves the tail there
    streams = [FP32.encode(f) for f in feats]
    answers = {}
    for device in ("cpu", "auto"):
        dep = Deployment("r20", r20.tail, max_batch_size=8, device=device)
        assert dep.input_specs is not None  # read off the tail before any wrapping
        report = dep.run_batch(streams)
        assert all(r.error is None for r in report.replies)
        answers[device] = [r.result for r in report.replies]
    if not torch.cuda.is_available():
        assert answers["cpu"] == answers["auto"]  # auto is the CPU here: the same bytes
    for cpu, auto in zip(answers["cpu"], answers["auto"], strict=True):  # a GPU rounds apart
        torch.testing.assert_close(codecs.decode(auto)[0], codecs.decode(cpu)[0],
                                   rtol=1e-2, atol=2e-2)
    for ref, data in zip(refs, answers["cpu"], strict=True):
        assert torch.equal(codecs.decode(data)[0], ref)


def test_full_offload_takes_the_device_too() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = []
    for device in ("cpu", "auto"):
        dep = zoo_full_offload("resnet20", model=model, device=device)
        (reply,) = dep.run_batch([FP32.encode(pixels)]).replies
        out.append(reply.result)
    if not torch.cuda.is_available():
        assert out[0] == out[1]  # auto is the CPU here: the same bytes
    torch.testing.assert_close(codecs.decode(out[1])[0], codecs.decode(out[0])[0],
                               rtol=1e-2, atol=2e-2)


def test_to_device_and_on_device_on_the_cpu() -> None:
    x = torch.randn(2, 3)
    nested = {"a": (x, 3, None), "b": [x.T]}
    moved = to_device(nested, torch.device("cpu"))
    assert moved["a"][0] is x and moved["a"][1:] == (3, None)  # nothing copied on the CPU
    lin = nn.Linear(3, 2)
    assert on_device(lin, "cpu") is lin  # the CPU path runs the module itself
    wrapped = OnDevice(lin, torch.device("cpu"))
    assert torch.equal(wrapped(x), lin(x))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            on_device(lin, "cuda")
