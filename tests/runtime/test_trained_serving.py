"""A trained bottleneck checkpoint served end to end: a tiny two-tail checkpoint (random
resnet20 + resnet32), a real server on 127.0.0.1, an edge client sending compact streams."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitcomp import codecs
from splitcomp.codecs.compact import PREFIX_BYTES
from splitcomp.runtime import SplitClient
from splitcomp.runtime import protocol as P
from splitcomp.runtime.trained import checkpoint_deployment, checkpoint_deployments
from splitcomp.train import open_checkpoints

from ..train.tiny import random_images, tiny_checkpoint

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ck(tmp_path_factory) -> Path:
    """A two-tail checkpoint (resnet20 primary, resnet32 extra), trained a few steps."""
    _, folder = tiny_checkpoint(tmp_path_factory.mktemp("served"), "--also", "resnet32:random")
    return folder


def _images(n: int) -> list[torch.Tensor]:
    return [x[None].float() / 255 for x in random_images(n, seed=3)]


def _local(ckpt_dir: Path) -> list[torch.nn.Module]:
    """Each tail's server model, opened here independently of the deployments."""
    _, (t,) = open_checkpoints([ckpt_dir])
    return [t.ckpt.server_model(t.tail), *(t.ckpt.server_model(x.tail, x.name)
                                           for x in t.ckpt.extra_teachers())]


def test_answers_equal_the_local_server_model_on_compact_streams(ck, start_server) -> None:
    dep, edge, codec = checkpoint_deployment(ck, max_batch_size=1, max_wait_ms=0)
    assert dep.name == "ck" and dep.codecs == {"bottleneck"}
    (server,) = _local(ck)[:1]
    srv = start_server(dep)
    with SplitClient(srv.url, edge, codec, dep.name, compact=True) as client:
        for rid, x in enumerate(_images(3), 1):
            with torch.inference_mode():
                latent = edge(x)
                want = server(codecs.decode(codec.encode(latent))[0])
            stream = client.encode(x)
            assert stream[:2] == b"SK"
            payload = codec.encode_array(latent.numpy())
            assert len(stream) == len(payload) + 9 == PREFIX_BYTES + len(payload) + 4
            assert stream[PREFIX_BYTES:-4] == payload and len(codec.encode(latent)) > len(stream)
            res = client.infer_encoded(stream, rid)
            assert res.bytes_sent == len(P.encode_request(rid, dep.name, stream))
            assert torch.equal(res.output, want)


def test_two_tails_answer_the_same_bitstream(ck, start_server) -> None:
    deps, edge, codec = checkpoint_deployments(ck, "all", max_batch_size=4)
    assert [d.name for d in deps] == ["ck.resnet20", "ck.resnet32"]
    servers = _local(ck)
    srv = start_server(deps)
    clients = [SplitClient(srv.url, edge, codec, d.name, compact=True) for d in deps]
    try:
        for x in _images(2):
            stream = clients[0].encode(x)
            with torch.inference_mode():
                y_hat = codecs.decode(stream)[0]
                wants = [s(y_hat) for s in servers]
            outs = [c.infer_encoded(stream).output for c in clients]
            for out, want in zip(outs, wants, strict=True):
                assert torch.equal(out, want)
            assert outs[0].shape == outs[1].shape and not torch.equal(outs[0], outs[1])
    finally:
        for c in clients:
            c.close()


def test_unknown_tail_is_refused(ck) -> None:
    with pytest.raises(ValueError, match="no tail 'resnet56'"):
        checkpoint_deployment(ck, "resnet56")


def test_serve_checkpoint_builds_one_deployment_per_tail(ck) -> None:
    from splitcomp.cli import serve
    from tests.cli.commands import parse_args

    def names(*argv: str) -> list[str]:
        server = serve.build_server(parse_args(serve, ["--checkpoint", str(ck), *argv]))
        return list(server.services)

    assert names() == ["ck"]
    assert names("--tail", "all") == ["ck.resnet20", "ck.resnet32"]
    assert names("--tail", "resnet32") == ["ck"]
    with pytest.raises(SystemExit, match="no tail 'resnet56'"):
        names("--tail", "resnet56")


def test_one_request_runs_a_group_of_tails_on_one_decode(ck, start_server) -> None:
    """``A+B``: one deployment, one bitstream, one decode, an answer with both outputs."""
    dep, edge, codec = checkpoint_deployment(ck, "resnet20+resnet32", max_batch_size=2)
    assert dep.name == "ck"
    servers = _local(ck)
    srv = start_server(dep)
    with SplitClient(srv.url, edge, codec, dep.name, compact=True) as client:
        x = _images(1)[0]
        stream = client.encode(x)
        with torch.inference_mode():
            y_hat = codecs.decode(stream)[0]
            wants = [s(y_hat) for s in servers]
        res = client.infer_encoded(stream)
        assert len(res.outputs) == 2
        for out, want in zip(res.outputs, wants, strict=True):
            assert torch.equal(out, want)
    with pytest.raises(ValueError, match="name each tail once"):
        checkpoint_deployment(ck, "resnet20+resnet20")
