"""The edge without PyTorch: an exported head and a client that imports no torch.

``splitcomp export`` (:mod:`.export`, which needs torch) writes a folder: the head as ONNX
(with a trained checkpoint: the head and the bottleneck encoder), and ``edge.json``
(:mod:`.manifest`: input preprocessing, the crossing tensors, the codec and its parameters,
the server deployment). :class:`EdgeClient` runs it with onnxruntime, numpy and the codecs'
numpy core, and talks to a splitcomp server over WebSocket:

    >>> from splitcomp.edge import EdgeClient
    >>> with EdgeClient("export/resnet20", url="ws://server:8000") as client:
    ...     answer = client.infer(images)   # uint8 HWC arrays or paths
    ...     answer.top1, answer.source

This package's ``__init__`` imports only torch-free modules; nothing else in splitcomp
imports it (``docs/architecture.md``). See ``docs/edge.md``.
"""

from __future__ import annotations

from .client import EdgeAnswer, EdgeClient
from .manifest import Manifest, ManifestError, read_manifest

__all__ = ["EdgeAnswer", "EdgeClient", "Manifest", "ManifestError", "read_manifest"]
