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

__all__ = [
    "AsyncSplitClient", "BackgroundServer", "BatchReport", "BatchResult", "ConnectionLost",
    "Deployment", "ErrorCode", "InferResult", "InputSpec", "LLMDeployment", "Reply",
    "RequestError", "RuntimeTimeout", "Server", "ServerError", "Service", "SplitClient",
    "SplitRuntimeError", "Tokens", "Unauthorized", "Work", "fetch_metrics", "handle_frames",
    "parse_prometheus", "register_service", "serve", "split_deployment", "zoo_deployment",
]
