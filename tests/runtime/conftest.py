"""Shared pieces of the runtime tests: a small split model, servers on ephemeral ports that are
always stopped, and a raw WebSocket connection for sending hand-made frames.

``SPLITCOMP_TRANSPORT=picows`` (or ``asyncio``, ``websockets``) runs every server these tests
start on that transport (``splitcomp.runtime.transport``); unset: the default one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from websockets.sync.client import ClientConnection, connect

from splitcomp.partition import split
from splitcomp.runtime import BackgroundServer, Deployment, Server
from splitcomp.zoo import create_model


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    """One torch thread: a 2-core machine shared by server, clients and reference runs."""


@pytest.fixture(autouse=True)
def _transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers' transport from ``$SPLITCOMP_TRANSPORT`` (all of them, however started)."""
    name = os.environ.get("SPLITCOMP_TRANSPORT")
    if name:
        import splitcomp.runtime.server as server

        monkeypatch.setattr(server, "DEFAULT_TRANSPORT", name)


class R20:
    """ResNet-20 (random weights) cut after layer2: 32x16x16 float features cross."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = create_model("resnet20", weights=None).eval()
        self.head, self.tail = split(self.model, "layer2", (torch.zeros(1, 3, 32, 32),))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.head(x)[0]

    def reference(self, feats: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The tail's output for ``feats`` (one sample) computed in a batch of ``batch_size``
        (CPU kernels may round differently at batch size 1 than above it)."""
        filler = torch.zeros(batch_size - 1, *feats.shape[1:])
        with torch.inference_mode():
            return self.tail(torch.cat([feats, filler]))[:1]


@pytest.fixture(scope="session")
def r20() -> R20:
    torch.set_num_threads(1)
    return R20()


class SlowTail(nn.Module):
    """A tail that takes ``delay_s`` per call: makes requests pile up on purpose."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return x.flatten(1).sum(1, keepdim=True)


class DelayedTail(nn.Module):
    """``tail`` plus ``delay_s`` per call: keeps requests in flight for longer."""

    def __init__(self, tail: nn.Module, delay_s: float) -> None:
        super().__init__()
        self.tail = tail
        self.delay_s = delay_s

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return self.tail(*xs)


@pytest.fixture
def start_server() -> Iterator[Callable[..., BackgroundServer]]:
    """``start_server(deployments, **server_options)``: a running server, stopped at the end."""
    running: list[BackgroundServer] = []

    def start(deployments: Deployment | list[Deployment], **options) -> BackgroundServer:
        srv = Server(deployments, "127.0.0.1", options.pop("port", 0), **options)
        bg = srv.start_in_thread()
        running.append(bg)
        return bg

    yield start
    for bg in running:
        bg.stop(grace_s=2.0)


def raw_connect(url: str, token: str | None = None, session: str | None = None,
                **kwargs) -> ClientConnection:
    """A plain WebSocket connection for hand-made frames."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if session is not None:
        headers["X-Splitcomp-Session"] = session
    kwargs.setdefault("open_timeout", 5)
    return connect(url, additional_headers=headers, compression=None, proxy=None, **kwargs)
