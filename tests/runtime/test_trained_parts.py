"""Early exits and client adapters through a real server on 127.0.0.1 (random weights): an
exit answers on the edge and sends nothing; two clients with different adapters share one
deployment and each gets its own adapted answer."""

from __future__ import annotations

import pytest
import torch

from splitcomp.runtime import Deployment, SplitClient
from splitcomp.runtime.stats import total
from splitcomp.train.adapters import AdaptedHead, Adapter
from splitcomp.train.exits import EdgeExit, ExitHead

pytestmark = pytest.mark.timeout(60)


def _inputs(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randn(1, 3, 32, 32, generator=g) for _ in range(n)]


def test_an_early_exit_answers_on_the_edge_and_sends_nothing(r20, start_server) -> None:
    from splitcomp.runtime import parse_prometheus

    torch.manual_seed(1)
    head = ExitHead(32, 10).eval()
    xs = _inputs(6)
    with torch.inference_mode():
        conf = [float(EdgeExit(head, 0.0)(r20.features(x))[1]) for x in xs]
    threshold = sorted(conf)[3]  # the three most confident exit
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=1, max_wait_ms=0))
    with SplitClient(srv.url, r20.head, "fp32", "r20",
                     early_exit=EdgeExit(head, threshold)) as client:
        results = [client.infer_detailed(x) for x in xs]
        assert (client.client.exits, client.client.sent) == (3, 3)
    for x, c, res in zip(xs, conf, results, strict=True):
        feats = r20.features(x)
        if c >= threshold:
            assert res.source == "edge" and res.bytes_sent == 0
            with torch.inference_mode():
                assert torch.equal(res.output, head(feats))
        else:
            assert res.source == "server" and res.bytes_sent > 0
            assert torch.allclose(res.output, r20.reference(feats, 1))
    s = parse_prometheus(srv.metrics_text())
    assert total(s, "splitcomp_requests_total") == 3  # the exits never reached the server


def test_clients_with_different_adapters_share_one_deployment(r20, start_server) -> None:
    adapters = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        a = Adapter(32)
        torch.nn.init.normal_(a.up.weight, std=0.05)  # not the identity
        adapters.append(a.eval())
    srv = start_server(Deployment("r20", r20.tail, max_batch_size=4))
    clients = [SplitClient(srv.url, AdaptedHead(r20.head, a), "fp32", "r20") for a in adapters]
    try:
        x = _inputs(1)[0]
        outs = [c.infer(x) for c in clients]
    finally:
        for c in clients:
            c.close()
    with torch.inference_mode():
        wants = [r20.tail(a(r20.features(x))) for a in adapters]
    for out, want in zip(outs, wants, strict=True):
        assert torch.allclose(out, want, atol=1e-5)
    assert not torch.allclose(outs[0], outs[1])
