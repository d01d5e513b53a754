"""The edge client in a process where torch cannot be imported, against a real server on
127.0.0.1: a random-weight ResNet-20 cut at layer2, exported to ONNX; its answers are the tail's
on the bytes it sent, its head within fp32 tolerance of torch's, its bytes near torch's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from splitcomp import codecs
from splitcomp.edge.export import export_edge, torch_reference, zoo_source
from splitcomp.partition import split
from splitcomp.runtime import Deployment, Server
from splitcomp.zoo import create_model

from .no_torch import run_without_torch

pytest.importorskip("onnxruntime", reason="the edge client runs ONNX: pip install onnxruntime")
pytest.importorskip("onnxscript", reason="torch.onnx.export (dynamo) needs onnxscript")

TOKEN = "edge-secret-token"
#: what the device runs: two requests (a batch of arrays, one image file), a wrong token
CHILD = """
import numpy as np
from splitcomp.edge import EdgeClient
from splitcomp.runtime.errors import Unauthorized
folder, url, token, png = sys.argv[1:5]
images = np.load(folder + "/../images.npy")
out = {}
with EdgeClient(folder, url=url, token=token) as c:
    a = c.infer(images)
    b = c.infer(png)
    out["batch"] = {"outputs": a.outputs[0].tolist(), "source": a.source,
                    "bytes": a.bytes_sent, "top1": a.top1.tolist()}
    out["file"] = {"outputs": b.outputs[0].tolist(), "source": b.source,
                   "bytes": b.bytes_sent}
    out["stream"] = c.encode(images).hex()
    out["features"] = c.features(images)[0].tolist()
    out["stream_file"] = c.encode(png).hex()
    out["same_features"] = bool((c.features(png)[0] == c.features(images[1])[0]).all())
try:
    EdgeClient(folder, url=url, token="wrong").infer(images)
except Unauthorized as e:
    out["wrong_token"] = type(e).__name__
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("resnet20", weights=None).eval()
    _head, tail = split(model, "layer2", (torch.zeros(1, 3, 32, 32),))
    root = tmp_path_factory.mktemp("edge")
    codec = codecs.get("slicer")
    src = zoo_source("resnet20", "layer2", codec, weights="random", deployment="r20",
                     model=model)
    done = export_edge(src, root / "export")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.save(root / "images.npy", images)
    Image.fromarray(images[1]).save(root / "one.png")
    return dict(root=root, src=src, tail=tail, codec=codec, images=images, done=done)


def _normalised(images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1) * 255.0
    std = torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1) * 255.0
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std


def test_export_head_matches_torch(setup: dict) -> None:
    done = setup["done"]
    assert (setup["root"] / "export" / "head.onnx").is_file()
    assert done.errors["onnx"] < 1e-4 * max(done.scale, 1.0)
    m = json.loads((setup["root"] / "export" / "edge.json").read_text())
    assert m["codec"]["name"] == "slicer" and m["deployment"] == "r20"
    assert m["outputs"][0]["shape"] == [32, 16, 16]
    assert m["input"]["size"] == [3, 32, 32] and m["input"]["layout"] == "NCHW"


def test_edge_client_without_torch_against_a_server(setup: dict) -> None:
    root, tail, codec = setup["root"], setup["tail"], setup["codec"]
    srv = Server([Deployment("r20", tail, codecs=["slicer"])], "127.0.0.1", 0,
                 tokens={"edge": TOKEN}).start_in_thread()
    try:
        out = run_without_torch(CHILD, [str(root / "export"), srv.url, TOKEN,
                                        str(root / "one.png")], root)
    finally:
        srv.stop(grace_s=2.0)
    assert out["wrong_token"] == "Unauthorized"
    assert out["batch"]["source"] == out["file"]["source"] == "server"

    x = _normalised(setup["images"])
    # the ONNX head on the device: within fp32 tolerance of the torch head
    (ref,) = torch_reference(setup["src"], x)
    feats = np.asarray(out["features"], dtype=np.float32)
    assert np.abs(feats - ref.numpy()).max() <= 1e-4 * max(float(ref.abs().max()), 1.0)
    # the server's answer is the tail on what the device's bytes decode to
    stream = bytes.fromhex(out["stream"])
    assert len(stream) == out["batch"]["bytes"]
    (decoded,) = codecs.decode(stream)
    with torch.inference_mode():
        want = tail(decoded)
    got = np.asarray(out["batch"]["outputs"], dtype=np.float32)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    assert out["batch"]["top1"] == want.argmax(1).tolist()
    # an image file: the same input as its array (a lossless PNG), its own stream (the codec
    # quantizes per request), answered by the tail on that stream
    assert out["same_features"]
    with torch.inference_mode():
        want_file = tail(codecs.decode(bytes.fromhex(out["stream_file"]))[0])
    np.testing.assert_allclose(np.asarray(out["file"]["outputs"], dtype=np.float32),
                               want_file.numpy(), rtol=1e-4, atol=1e-4)
    # the torch client's bytes for the same images: the same size within 1 %
    torch_stream = codec.encode(list(torch_reference(setup["src"], x)))
    assert abs(len(torch_stream) - len(stream)) <= 0.01 * len(torch_stream)


def test_same_features_same_bytes(setup: dict) -> None:
    """Given the same features, the numpy (edge) and torch paths write the same bytes."""
    x = _normalised(setup["images"])
    feats = torch_reference(setup["src"], x)
    for name in ("slicer", "rans"):
        c = codecs.get(name)
        assert c.encode(list(feats)) == c.encode_numpy([f.numpy() for f in feats])
