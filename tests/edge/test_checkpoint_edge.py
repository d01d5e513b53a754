"""A trained bottleneck checkpoint on the edge without torch: ``export_edge`` writes its head +
encoder, tables and compact template; a torch-free client sends 9-byte-header ``bottleneck``
streams that a real server (``splitcomp serve --checkpoint``'s deployment) decodes, to the top-1
of the torch edge on the same images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitcomp import codecs
from splitcomp.data import load_dataset
from splitcomp.edge.export import checkpoint_source, export_edge
from splitcomp.runtime import Server
from splitcomp.runtime.trained import checkpoint_deployment
from splitcomp.zoo import model_config

from .no_torch import run_without_torch

pytestmark = [pytest.mark.requires_shared_data, pytest.mark.usefixtures("single_thread"),
              pytest.mark.timeout(300)]
pytest.importorskip("onnxruntime", reason="the edge client runs ONNX: pip install onnxruntime")
pytest.importorskip("onnxscript", reason="torch.onnx.export (dynamo) needs onnxscript")

CKPT = Path(__file__).resolve().parents[2] / "docs" / "results" / "checkpoints" / \
    "resnet20_layer2_b3"
CHILD = """
from splitcomp.edge import EdgeClient
folder, url, *paths = sys.argv[1:]
out = {"top1": [], "bytes": [], "magic": []}
with EdgeClient(folder, url=url) as c:
    for p in paths:
        a = c.infer(p)
        out["top1"].append(int(a.top1[0]))
        out["bytes"].append(a.bytes_sent)
        out["magic"].append(c.encode(p)[:2].decode())
"""


def test_checkpoint_edge_without_torch(tmp_path: Path, shared_path) -> None:
    if not (CKPT / "checkpoint.json").is_file():
        pytest.skip(f"{CKPT} not in this checkout")
    shared_path("weights")
    src = checkpoint_source(CKPT)
    done = export_edge(src, tmp_path / "export")
    assert done.manifest.codec.compact and done.manifest.codec.tables == "tables.sbnt"
    ds = load_dataset("cifar10", model_config("resnet20").preprocess(), limit=12)
    paths = [str(p) for p, _ in ds.samples]
    dep, edge, codec = checkpoint_deployment(CKPT)
    srv = Server([dep], "127.0.0.1", 0).start_in_thread()
    try:
        out = run_without_torch(CHILD, [str(tmp_path / "export"), srv.url, *paths], tmp_path)
    finally:
        srv.stop(grace_s=2.0)
    assert out["magic"] == ["SK"] * len(paths)  # compact streams
    want, sizes = [], []
    for i in range(len(paths)):  # the torch edge, as SplitClient(..., compact=True) sends
        with torch.inference_mode():
            data = codec.encode(edge(ds[i][0][None]), compact=True)
            want.append(int(dep.tail(*codecs.decode(data)).argmax(1)[0]))
        sizes.append(len(data))
    assert out["top1"] == want
    assert abs(sum(out["bytes"]) - sum(sizes)) <= 0.01 * sum(sizes)
