"""Golden bitstreams: fixed inputs, pinned bytes. Regenerate deliberately with

    .venv/bin/python -m tests.codecs.golden            # writes tests/codecs/golden.json

and explain the format change (and bump FORMAT_VERSION if old streams no longer decode).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from splitcomp import codecs

GOLDEN_PATH = Path(__file__).with_name("golden.json")


def golden_inputs() -> dict[str, list[torch.Tensor]]:
    """Deterministic inputs: a small ReLU map (+ a signed tensor) and a larger ReLU map."""
    rng = np.random.default_rng(20261124)
    small = np.maximum(rng.standard_normal((1, 4, 6, 6)), 0).astype(np.float32)
    signed = (rng.standard_normal((2, 9)) * 3).astype(np.float32)
    large = np.maximum(rng.standard_normal((1, 16, 16, 16)) + 0.3, 0).astype(np.float32)
    return {
        "small": [torch.from_numpy(small), torch.from_numpy(signed)],
        "large": [torch.from_numpy(large)],
    }


def golden_configs(name: str) -> list[dict]:
    """Default parameters plus, for codecs with a quality knob, its lowest and highest setting."""
    cls = codecs.codec_class(name)
    configs: list[dict] = [{}]
    if cls.quality_param and cls.quality_grid:
        q = cls.quality_param
        configs += [{q: cls.quality_grid[0]}, {q: cls.quality_grid[-1]}]
    return configs


def make_entry(name: str, params: dict) -> dict:
    codec = codecs.get(name, **params)
    inputs = golden_inputs()
    small = codec.encode(inputs["small"])
    large = codec.encode(inputs["large"])
    return {
        "codec": name,
        "params": params,
        "small_b64": base64.b64encode(small).decode(),
        "large_sha256": hashlib.sha256(large).hexdigest(),
        "large_bytes": len(large),
    }


def key(name: str, params: dict) -> str:
    return name + "".join(f";{k}={v}" for k, v in sorted(params.items()))


def retired() -> dict[str, dict]:
    """Entries of formats no encoder writes any more, under ``<codec>@<format>`` keys (the
    slicer's single rANS stack: ``slicer@one-lane``): carried over when the file is
    regenerated, so their streams keep decoding."""
    if not GOLDEN_PATH.exists():
        return {}
    return {k: e for k, e in json.loads(GOLDEN_PATH.read_text()).items() if "@" in k}


def build() -> dict[str, dict]:
    return {**retired(), **{key(n, p): make_entry(n, p) for n in codecs.available()
                            for p in golden_configs(n)}}


if __name__ == "__main__":
    GOLDEN_PATH.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_PATH}")
