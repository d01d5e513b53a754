"""``edge.json``: everything an edge device needs besides the exported graphs.

Written by :mod:`.export` (``splitcomp export``), read by :class:`~.client.EdgeClient`. The
fields are listed in ``docs/edge.md``. Plain JSON and numbers, no torch: a device reads it
with the standard library.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: what ``edge.json`` says it is
FORMAT = "splitcomp-edge"
#: its layout version (a reader refuses a newer one)
VERSION = 1
#: the file name inside an export folder
MANIFEST = "edge.json"


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the head's input: decode to RGB, resize the shorter side to
    ``resize`` (bilinear), centre-crop ``crop`` (None: skip either), HWC uint8 -> ``layout``
    float32, ``(x - mean * 255) / (std * 255)`` per channel."""

    size: tuple[int, ...]  #: (C, H, W) of one image as the head takes it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    crop: int | None = None
    layout: str = "NCHW"
    dtype: str = "float32"
    name: str = "input"  #: the graph input's name


@dataclass(frozen=True)
class TensorSpec:
    """One graph output: its name in the graph, per-sample shape, dtype and (for a crossing
    tensor) the module of the original model that produced it."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    module: str = ""


@dataclass(frozen=True)
class CodecSpec:
    """The codec the edge encodes with: registry name and parameters as the bitstream
    carries them; ``compact``: 9-byte-header streams (``template``: the template's file);
    ``tables``: the ``bottleneck`` codec's tables file (a session context)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    compact: bool = False
    tables: str | None = None
    template: str | None = None


@dataclass(frozen=True)
class ExitSpec:
    """An early exit on the edge: graph ``file`` takes the head's first output and returns
    ``(logits, confidence, exits)``; a batch whose every sample exits is answered there."""

    file: str
    threshold: float
    rule: str = "softmax"


@dataclass(frozen=True)
class Manifest:
    """The parsed ``edge.json``."""

    model: str
    split: str
    deployment: str  #: the server deployment the streams are for
    head: str  #: graph file of the head (and the bottleneck encoder, with a checkpoint)
    head_format: str  #: ``onnx`` or ``pte``
    input: InputSpec
    outputs: tuple[TensorSpec, ...]  #: the crossing tensors, in the order the codec sends them
    codec: CodecSpec
    exit: ExitSpec | None = None
    weights: str | None = None
    checkpoint: str | None = None
    adapter: str | None = None  #: the client adapter folded into the head (its folder)
    extra_formats: dict[str, str] = field(default_factory=dict)  #: format -> file
    exported_with: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}


class ManifestError(ValueError):
    """An ``edge.json`` that is missing, of another format or version, or incomplete."""


def _tuple(v: Any) -> tuple:
    return tuple(v) if v is not None else ()


def read_manifest(folder: str | Path) -> Manifest:
    """Parse ``folder/edge.json``; :class:`ManifestError` naming what is wrong."""
    path = Path(folder) / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{folder}: no {MANIFEST} (not a splitcomp export folder; make one "
                            "with splitcomp export)") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a {FORMAT} manifest")
    if not isinstance(raw.get("version"), int) or raw["version"] > VERSION:
        raise ManifestError(f"{path}: version {raw.get('version')!r}; this splitcomp reads "
                            f"up to {VERSION}")
    try:
        inp = dict(raw["input"])
        inp.update(size=_tuple(inp["size"]), mean=_tuple(inp["mean"]), std=_tuple(inp["std"]))
        ex = raw.get("exit")
        return Manifest(
            model=raw["model"], split=raw["split"], deployment=raw["deployment"],
            head=raw["head"], head_format=raw["head_format"], input=InputSpec(**inp),
            outputs=tuple(TensorSpec(**{**o, "shape": _tuple(o["shape"])})
                          for o in raw["outputs"]),
            codec=CodecSpec(**raw["codec"]), exit=ExitSpec(**ex) if ex else None,
            weights=raw.get("weights"), checkpoint=raw.get("checkpoint"),
            adapter=raw.get("adapter"),
            extra_formats=dict(raw.get("extra_formats") or {}),
            exported_with=dict(raw.get("exported_with") or {}))
    except (KeyError, TypeError) as e:
        raise ManifestError(f"{path}: missing or malformed field ({e})") from None


def write_manifest(manifest: Manifest, folder: str | Path) -> Path:
    """``folder/edge.json`` from ``manifest``."""
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest.to_json(), indent=1) + "\n", encoding="utf-8")
    return path
