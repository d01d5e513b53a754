"""`splitcomp serve --plan FILE` serves every kind of plan `splitcomp plan` prints, each tested
end to end against a real server on 127.0.0.1: the client sends what the plan says (features,
raw pixels, a JPEG or WebP file) and the answer equals the whole model's, run here on the same
weights (loaded independently from one weights file) and on the same (decoded) image. A device
plan serves nothing and says so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitcomp.bench.input_compression import decode_image, encode_image
from splitcomp.cli import main, serve
from splitcomp.partition import split
from splitcomp.plan.channel import Channel
from splitcomp.plan.planfile import Plan, save_plan
from splitcomp.runtime import BackgroundServer, SplitClient
from splitcomp.runtime.errors import ServerError
from splitcomp.runtime.fulloffload import PixelsToLogits, image_request
from splitcomp.runtime.protocol import ErrorCode
from splitcomp.zoo import create_model, load_model, model_config

from .commands import parse_args

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random ResNet-20 weights in a file: server and client load the same model from it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "r20.pt"
    torch.save(create_model("resnet20", weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def local(weights) -> torch.nn.Module:
    """The whole model, here, on raw uint8 pixels (normalised as the server does)."""
    model = load_model("resnet20", str(weights)).eval()
    return PixelsToLogits(model, model_config("resnet20").preprocess()).eval()


def _plan(kind: str, weights: Path | None, tmp_path: Path, **kw) -> Path:
    fields = dict(model="resnet20", kind=kind, split=None, codec=None, params={},
                  channel=Channel(10e6, 0.02).to_json(), device={"name": "phone"},
                  objective="latency", max_drop=0.5, predicted={"end_to_end_ms": 10.0},
                  weights=str(weights) if weights else None, deployment=None)
    fields.update(kw)
    path = tmp_path / f"{kind}.plan.json"
    save_plan(Plan(**fields), path)
    return path


def _server(plan: Path, *extra: str) -> BackgroundServer:
    return BackgroundServer(serve.build_server(parse_args(serve, [
        "--plan", str(plan), "--port", "0", "--max-wait-ms", "0", *extra])))


def _pixels(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g) for _ in range(n)]


def test_split_plan(weights, local, tmp_path, single_thread) -> None:
    path = _plan("split", weights, tmp_path, split="layer2", codec="fp32",
                 deployment="resnet20")
    head, _ = split(local.model, "layer2", (torch.zeros(1, 3, 32, 32),))
    with _server(path) as srv, SplitClient(srv.url, head, "fp32", "resnet20") as client:
        assert set(srv.server.deployments["resnet20"].codecs) == {"fp32"}
        for px in _pixels(2):
            x = (px[None].float() - local.mean) / local.std
            with torch.inference_mode():
                want = local.model(x)
            assert torch.equal(client.infer(x), want)


def test_offload_plan_serves_the_whole_model_on_raw_pixels(weights, local, tmp_path,
                                                           single_thread) -> None:
    path = _plan("offload", weights, tmp_path, codec="fp32", deployment="resnet20-full")
    with _server(path) as srv, SplitClient(srv.url, None, "fp32", "resnet20-full") as client:
        for px in _pixels(2):
            with torch.inference_mode():
                want = local(px[None])
            assert torch.equal(client.infer(px[None]), want)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_input_plan_decodes_the_image_file_and_runs_the_whole_model(
        fmt, weights, local, tmp_path, single_thread) -> None:
    """The plan file as `splitcomp plan` writes it (deployment named MODEL-FORMAT): the client
    sends the file's bytes, the server decodes them; the answer is the model's output on
    the decoded image, here."""
    from splitcomp.plan.planfile import deployment_name

    name = deployment_name("input", "resnet20", fmt)
    assert name == f"resnet20-{fmt}"
    path = _plan("input", weights, tmp_path, codec=fmt, params={"quality": 80},
                 deployment=name)
    with _server(path) as srv, SplitClient(srv.url, None, "fp32", name) as client:
        for px in _pixels(3):
            data = encode_image(px, fmt, 80)
            with torch.inference_mode():
                want = local(decode_image(data)[None])
            res = client.infer_encoded(image_request(data))
            assert torch.equal(res.output, want)
            assert res.bytes_sent < len(data) + 64  # the file, a container, a frame header
        # a file of another format, another size, or no image at all: typed errors
        other = "webp" if fmt == "jpeg" else "jpeg"
        small = torch.zeros(3, 16, 16, dtype=torch.uint8)
        for bad, code in ((encode_image(_pixels(1)[0], other, 80), ErrorCode.BAD_BITSTREAM),
                          (encode_image(small, fmt, 80), ErrorCode.BAD_INPUT),
                          (b"not an image at all", ErrorCode.BAD_BITSTREAM)):
            with pytest.raises(ServerError) as err:
                client.infer_encoded(image_request(bad))
            assert err.value.code == code


def test_trained_plan_serves_the_checkpoint(tmp_path_factory, tmp_path, single_thread) -> None:
    """A trained plan: the edge runs the checkpoint's edge model and sends compact streams;
    the answer equals the checkpoint's server model run here on the decoded latent."""
    from splitcomp import codecs
    from splitcomp.train import open_checkpoints
    from splitcomp.train.ckpt_eval import checkpoint_codec

    from ..train.tiny import random_images, tiny_checkpoint

    _, ck = tiny_checkpoint(tmp_path_factory.mktemp("trained"))
    path = _plan("trained", None, tmp_path, split="layer2", codec="bottleneck",
                 checkpoint=str(ck.resolve()))
    with _server(path) as srv:
        (dep,) = srv.server.deployments.values()
        assert dep.name == "ck" and dep.codecs == {"bottleneck"}
        _, (t,) = open_checkpoints([ck])  # the edge's own copy, opened apart from the server
        edge, server_model = t.ckpt.edge_model(), t.ckpt.server_model(t.tail)
        codec = checkpoint_codec(t.ckpt)[0]
        with SplitClient(srv.url, edge, codec, "ck", compact=True) as client:
            for x in random_images(2, seed=5):
                x = x[None].float() / 255
                with torch.inference_mode():
                    latent = edge(x)
                    want = server_model(codecs.decode(codec.encode(latent))[0])
                assert torch.equal(client.infer(x), want)


def test_an_old_input_plan_without_a_deployment_name(weights, tmp_path) -> None:
    path = _plan("input", weights, tmp_path, codec="jpeg", params={"quality": 80})
    server = serve.build_server(parse_args(serve, ["--plan", str(path), "--port", "0"]))
    assert list(server.deployments) == ["resnet20-jpeg"]


def test_device_plan_serves_nothing_and_says_so(weights, tmp_path, capsys) -> None:
    path = _plan("device", weights, tmp_path)
    assert main(["serve", "--plan", str(path), "--port", "0"]) == 0
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and "nothing to serve" in out.out
    assert "entirely on the edge" in out.out and not out.err
    with pytest.raises(SystemExit, match="nothing to serve"):
        serve.build_server(parse_args(serve, ["--plan", str(path)]))
    # beside other deployments it adds none and takes nothing away
    server = serve.build_server(parse_args(serve, [
        "--plan", str(path), "--model", "resnet20", "--split", "layer2", "--weights",
        "random", "--port", "0"]))
    assert list(server.deployments) == ["resnet20"]


def test_a_file_that_is_not_a_plan_is_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text('{"version": 1, "kind": "split"}')
    assert main(["serve", "--plan", str(bad), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a plan file" in err and "Traceback" not in err


def test_an_input_plan_in_a_format_the_server_cannot_decode(weights, tmp_path, capsys) -> None:
    path = _plan("input", weights, tmp_path, codec="avif", params={"quality": 50})
    assert main(["serve", "--plan", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'avif' is not one the server decodes" in err
