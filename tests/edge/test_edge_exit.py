"""An exported early exit: a batch whose every sample is confident is answered on the edge
(nothing sent, no server needed); any other goes to the server; the ONNX exit matches torch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from splitcomp import codecs
from splitcomp.edge import EdgeClient
from splitcomp.edge.export import export_edge, zoo_source
from splitcomp.edge.manifest import ExitSpec
from splitcomp.partition import split
from splitcomp.runtime import Deployment, Server
from splitcomp.runtime.errors import ConnectionLost, ServerError
from splitcomp.runtime.protocol import ErrorCode
from splitcomp.train.exits import EdgeExit, ExitHead
from splitcomp.zoo import create_model

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.timeout(300)]
pytest.importorskip("onnxruntime", reason="the edge client runs ONNX: pip install onnxruntime")
pytest.importorskip("onnxscript", reason="torch.onnx.export (dynamo) needs onnxscript")


def test_exit_on_the_edge(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", weights=None).eval()
    _head, tail = split(model, "layer2", (torch.zeros(1, 3, 32, 32),))
    src = zoo_source("resnet20", "layer2", codecs.get("rans"), "random", "r20", model=model)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    folders = {}
    for name, threshold in (("always", 0.0), ("never", 1.5)):
        ex = EdgeExit(ExitHead(32, 10).eval(), threshold)
        done = export_edge(replace(src, exit=ex, exit_spec=ExitSpec("exit.onnx", threshold)),
                           tmp_path / name)
        assert done.errors["exit"] < 1e-4
        folders[name] = tmp_path / name
    # every sample confident: answered on the edge, the server never reached
    with EdgeClient(folders["always"], url="ws://127.0.0.1:9") as c:
        a = c.infer(images)
    assert a.source == "edge" and a.bytes_sent == 0 and c.exits == 1 and c.sent == 0
    assert a.outputs[0].shape == (2, 10)
    # never confident: sent, answered by the server's tail
    srv = Server([Deployment("r20", tail, codecs=["rans"])], "127.0.0.1", 0).start_in_thread()
    try:
        with EdgeClient(folders["never"], url=srv.url) as c:
            b = c.infer(images)
            data = c.encode(images)
        with EdgeClient(folders["never"], url=srv.url, deployment="nope") as bad, \
                pytest.raises(ServerError) as err:
            bad.infer(images)
        assert err.value.code == ErrorCode.UNKNOWN_DEPLOYMENT
    finally:
        srv.stop(grace_s=2.0)
    assert b.source == "server" and b.bytes_sent == len(data) and c.sent == 1
    with torch.inference_mode():
        want = tail(codecs.decode(data)[0])
    np.testing.assert_allclose(b.outputs[0], want.numpy(), rtol=1e-4, atol=1e-4)
    with EdgeClient(folders["never"], url="ws://127.0.0.1:9") as c, \
            pytest.raises(ConnectionLost, match="is a splitcomp server running there"):
        c.infer(images)
