"""Where the server's models run: ``--device cpu|cuda|auto`` and moving batches there.

Everything on the wire is decoded on the CPU (codecs are CPU code); a deployment on a GPU
copies each batch to the device through pinned (page-locked) host memory, runs its tail or
server half there, and brings the outputs back to the CPU for encoding. :class:`OnDevice`
does exactly that around any module, so a deployment, an LLM server half or an evaluation's
head and tail change device without changing their code. ``cpu`` runs the module as it is
(no wrapper, no copies): the CPU path is the same with or without this module.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

#: the values ``--device`` takes (``cuda:N`` is accepted too)
DEVICE_CHOICES = ("cpu", "cuda", "auto")


class DeviceError(ValueError):
    """A device this machine does not have (``cuda`` without CUDA), or no device at all;
    ``reason`` says which, without the device's name."""

    def __init__(self, spec: Any, reason: str) -> None:
        super().__init__(f"device {spec}: {reason}")
        self.spec, self.reason = spec, reason


def resolve_device(spec: str | torch.device | None = "cpu") -> torch.device:
    """``cpu``, ``cuda`` / ``cuda:N`` (:class:`DeviceError` where CUDA is missing or has no
    such GPU) or ``auto`` (the first GPU where CUDA is available, else the CPU)."""
    if spec is None:
        return torch.device("cpu")
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec.strip().lower() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError):
        raise DeviceError(repr(spec), "expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise DeviceError(repr(spec), "expected cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise DeviceError(spec, "CUDA is not available on this machine (use cpu or auto)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(spec, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def to_device(value: Any, device: torch.device) -> Any:
    """Every tensor in ``value`` (a tensor, or tuples, lists and dicts of them) on
    ``device``; host tensors bound for a GPU go through pinned memory (asynchronous copy).
    Non-tensors pass through."""
    if device.type == "cpu":
        return pytree.tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, value)

    def move(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.device == device:
            return t
        if t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(device, non_blocking=True)

    return pytree.tree_map(move, value)


class OnDevice(nn.Module):
    """``module`` moved to ``device``; its inputs go there (pinned), its tensor outputs come
    back to the CPU. Objects that are not tensors (a KV cache) pass through untouched."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module = module.to(device)
        self.device = device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = to_device((args, kwargs), self.device)
        return to_device(self.module(*args, **kwargs), torch.device("cpu"))


def on_device(module: nn.Module, device: str | torch.device | None, *,
              copy: bool = False) -> nn.Module:
    """``module`` itself on the CPU, else wrapped in :class:`OnDevice` (see
    :func:`resolve_device` for ``device``). ``copy``: move a copy, leaving ``module`` (and
    any model sharing its submodules) on the CPU."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        return module
    return OnDevice(deepcopy(module) if copy else module, dev)
