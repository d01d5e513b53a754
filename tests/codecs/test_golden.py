"""The exact bytes of every codec on fixed inputs are pinned: the format cannot drift silently."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from splitcomp import codecs

from .golden import GOLDEN_PATH, golden_configs, golden_inputs, key, make_entry

GOLDEN = json.loads(GOLDEN_PATH.read_text()) if GOLDEN_PATH.exists() else {}
CASES = [(n, p) for n in codecs.available() for p in golden_configs(n)]
HOW = "regenerate deliberately with `python -m tests.codecs.golden` and document the change"


@pytest.mark.parametrize(("name", "params"), CASES, ids=[key(n, p) for n, p in CASES])
def test_encoder_output_is_pinned(name: str, params: dict) -> None:
    k = key(name, params)
    assert k in GOLDEN, f"no golden bitstream for {k}: {HOW}"
    got = make_entry(name, params)
    want = GOLDEN[k]
    assert got["small_b64"] == want["small_b64"], f"{k}: small bitstream changed; {HOW}"
    assert got["large_sha256"] == want["large_sha256"], f"{k}: large bitstream changed; {HOW}"


@pytest.mark.parametrize("k", sorted(GOLDEN))
def test_pinned_streams_still_decode(k: str) -> None:
    """Old bitstreams keep decoding to tensors of the recorded shapes and dtypes."""
    entry = GOLDEN[k]
    if entry["codec"] not in codecs.available():
        pytest.fail(f"golden codec {entry['codec']} is no longer registered")
    out = codecs.decode(base64.b64decode(entry["small_b64"]))
    ref = golden_inputs()["small"]
    assert [t.shape for t in out] == [t.shape for t in ref]
    codec = codecs.get(entry["codec"], **entry["params"])
    for x, y in zip(ref, out, strict=True):
        if codec.lossless:
            assert torch.equal(x, y)
        else:
            bound = codec.error_bound(x.numpy())
            assert (x - y).abs().max().item() <= bound + 1e-6
