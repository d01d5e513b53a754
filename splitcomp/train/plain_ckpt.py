"""The plain-files layout the small trained components share (exits, adapters, gates).

    CKPT_DIR/checkpoint.json     format, version and the component's own fields
    CKPT_DIR/weights.safetensors its tensors (nothing pickled)
    CKPT_DIR/split.json          the data split (:class:`~.splits.SplitRecord`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError
from .splits import SplitRecord


def save_plain(folder: str | Path, fmt: str, version: int, meta: dict[str, Any],
               tensors: dict[str, torch.Tensor], split: SplitRecord) -> Path:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
              str(out / "weights.safetensors"))
    (out / "checkpoint.json").write_text(
        json.dumps({"format": fmt, "version": version, **meta}, indent=1) + "\n")
    (out / "split.json").write_text(json.dumps(split.to_json()) + "\n")
    return out


def load_plain(folder: str | Path, fmt: str, version: int
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor], SplitRecord]:
    """(checkpoint.json, tensors, split) of a ``fmt`` checkpoint (:class:`CheckpointError`
    when the folder is not one)."""
    src = Path(folder)
    try:
        meta = json.loads((src / "checkpoint.json").read_text())
        split = SplitRecord.from_json(json.loads((src / "split.json").read_text()))
        tensors = load_file(str(src / "weights.safetensors"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"{src}: not a readable {fmt} checkpoint ({e})") from None
    if not isinstance(meta, dict) or (meta.get("format"), meta.get("version")) != (
            fmt, version):
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{src}: format {got!r}, expected {fmt!r} {version}")
    return meta, tensors, split


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` without it (a module's state dict)."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
