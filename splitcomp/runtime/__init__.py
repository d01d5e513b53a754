"""The runtime: an edge client and a light server shared by many clients.

    >>> dep, head = zoo_deployment("resnet20", "layer2", weights="random", name="r20")
    >>> with Server(dep).start_in_thread() as srv:
    ...     with SplitClient(srv.url, head, "fp32", "r20") as client:
    ...         logits = client.infer(x)

Data path: :class:`SplitClient` runs the head and the codec, :mod:`.protocol` frames the
bitstream, :class:`Server` authenticates, deduplicates and batches requests per
:class:`Deployment`, whose ``run_batch`` decodes, stacks and runs the tail; results travel
back as a lossless fp32 container. :func:`handle_frames` is the same tail handler without a
transport (for Ray Serve or any other front end). See ``docs/protocol.md`` for the bytes on
the wire, ``splitcomp serve`` (:mod:`splitcomp.cli.serve`) for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: public name -> the module that defines it, imported on first use: a process that needs only
#: the wire protocol (:mod:`.protocol`, e.g. the torch-free :mod:`splitcomp.edge` client)
#: does not load the server, the deployments and torch
_LAZY = {
    "Tokens": "auth", "AsyncSplitClient": "client", "InferResult": "client",
    "SplitClient": "client", "fetch_metrics": "client", "BatchReport": "deployment",
    "Deployment": "deployment", "InputSpec": "deployment", "Reply": "deployment",
    "split_deployment": "deployment", "zoo_deployment": "deployment",
    "ConnectionLost": "errors", "RequestError": "errors", "RuntimeTimeout": "errors",
    "ServerError": "errors", "SplitRuntimeError": "errors", "Unauthorized": "errors",
    "handle_frames": "handler", "LLMDeployment": "llm", "ErrorCode": "protocol",
    "BackgroundServer": "server", "Server": "server", "serve": "server",
    "BatchResult": "service", "Service": "service", "Work": "service",
    "register_service": "service", "parse_prometheus": "stats",
}

if TYPE_CHECKING:
    from .auth import Tokens
    from .client import AsyncSplitClient, InferResult, SplitClient, fetch_metrics
    from .deployment import (
        BatchReport,
        Deployment,
        InputSpec,
        Reply,
        split_deployment,
        zoo_deployment,
    )
    from .errors import (
        ConnectionLost,
        RequestError,
        RuntimeTimeout,
        ServerError,
        SplitRuntimeError,
        Unauthorized,
    )
    from .handler import handle_frames
    from .llm import LLMDeployment
    from .protocol import ErrorCode
    from .server import BackgroundServer, Server, serve
    from .service import BatchResult, Service, Work, register_service
    from .stats import parse_prometheus


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncSplitClient", "BackgroundServer", "BatchReport", "BatchResult", "ConnectionLost",
    "Deployment", "ErrorCode", "InferResult", "InputSpec", "LLMDeployment", "Reply",
    "RequestError", "RuntimeTimeout", "Server", "ServerError", "Service", "SplitClient",
    "SplitRuntimeError", "Tokens", "Unauthorized", "Work", "fetch_metrics", "handle_frames",
    "parse_prometheus", "register_service", "serve", "split_deployment", "zoo_deployment",
]
