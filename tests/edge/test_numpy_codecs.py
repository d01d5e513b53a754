"""The codecs' numpy core writes the pinned bytes: what an edge without torch sends is what the
torch adapters send, for every registered codec, dtype and framing; and the packages the edge
client needs import without torch."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from splitcomp import codecs
from splitcomp.codecs.container import pack_arrays, unpack_arrays
from splitcomp.codecs.floats import _to_bf16_bits
from tests.codecs.golden import GOLDEN_PATH, golden_configs, golden_inputs, key

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads(GOLDEN_PATH.read_text())
CASES = [(n, p) for n in codecs.available() for p in golden_configs(n)]


@pytest.mark.parametrize(("name", "params"), CASES, ids=[key(n, p) for n, p in CASES])
def test_numpy_encoder_writes_the_golden_bytes(name: str, params: dict) -> None:
    codec = codecs.get(name, **params)
    inputs = {k: [t.numpy() for t in v] for k, v in golden_inputs().items()}
    want = GOLDEN[key(name, params)]
    small = codec.encode_numpy(inputs["small"])
    assert base64.b64encode(small).decode() == want["small_b64"]
    assert hashlib.sha256(codec.encode_numpy(inputs["large"])).hexdigest() == \
        want["large_sha256"]
    for x, y in zip(codec.decode_numpy(small), codec.decode(small), strict=True):
        assert x.dtype == np.float32 and np.array_equal(x, y.numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int64,
                                   torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("name", ["fp32", "slicer", "rans", "resilient"])
def test_dtypes_and_framings_match_torch(name: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    t = (torch.randn(2, 3, 5, 5, generator=g) * 4).to(dtype)
    codec = codecs.get(name)
    assert codec.encode([t, t[:1]]) == pack_arrays(codec, [t.numpy(), t[:1].numpy()])
    assert codec.encode(t, compact=True) == codec.encode_numpy(t.numpy(), compact=True)
    stream = codec.encode(t)
    (a,), (b,) = unpack_arrays(stream), codecs.decode(stream)
    assert a.dtype == b.numpy().dtype and np.array_equal(a, b.numpy())


def test_bf16_matches_torch_bit_for_bit() -> None:
    bits = np.random.default_rng(0).integers(0, 2**32, 200_000, dtype=np.uint64)
    x = np.concatenate([bits.astype(np.uint32).view(np.float32), np.array(
        [np.inf, -np.inf, 0.0, -0.0, np.nan, 3.4028235e38, 1e-45], dtype=np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(_to_bf16_bits(x), want)


def test_a_numpy_batch_of_one_decodes_to_the_same_tensor() -> None:
    x = np.maximum(np.random.default_rng(2).standard_normal((1, 8, 4, 4)), 0).astype(np.float32)
    with pytest.raises(TypeError, match="numpy arrays"):
        pack_arrays(codecs.get("fp32"), [torch.from_numpy(x)])
    with pytest.raises(TypeError, match="unsupported dtype"):
        pack_arrays(codecs.get("fp32"), [x.astype(np.complex64)])


def test_edge_packages_import_without_torch(tmp_path: Path) -> None:
    """``splitcomp.codecs``, ``splitcomp.runtime.protocol`` and ``splitcomp.edge`` with torch
    made unimportable; torch, the server and the LLM code stay unloaded."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import splitcomp.codecs, splitcomp.runtime.protocol as P, splitcomp.edge\n"
        "from splitcomp.runtime.errors import ServerError\n"
        "assert P.encode_request(1, 'a', b'x')\n"
        "bad = [m for m in sys.modules if m.startswith(('splitcomp.runtime.server',"
        " 'splitcomp.llm', 'splitcomp.zoo', 'splitcomp.edge.export'))]\n"
        "assert not bad, bad\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
