"""``serve --llm FOLDER`` loads only the server side of a model folder and ``generate
--server`` only the edge side; together they generate what the whole model generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from splitcomp.cli import generate, serve  # noqa: E402
from splitcomp.cli.serve import build_server  # noqa: E402
from splitcomp.llm import greedy_unsplit  # noqa: E402
from splitcomp.llm.partial import partial_model, side_bytes, side_folder  # noqa: E402
from splitcomp.llm.text import ByteTokenizer, load_lm  # noqa: E402
from splitcomp.runtime.llm import client  # noqa: E402

from .commands import parse_args, run_command  # noqa: E402

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.timeout(120)]

SPLIT = 2
PROMPT = "hello there"


def _sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Larger random weights: clear winners among the logits, so float rounding in the cut
    cannot flip a greedy token (norms left as they are)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and "norm" not in name and ".ln_" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="module", params=["llama_tiny", "gpt2_tiny"])
def saved(request, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A tiny random model (GPT-2's head tied to its embeddings, Llama's not) and the folder
    ``save_pretrained`` wrote it to (named after it: the deployment's name)."""
    model, _ = load_lm(request.param, None)
    model = _sharpen(model).eval()
    folder = tmp_path_factory.mktemp("saved") / request.param
    model.save_pretrained(folder)
    return model, folder


def _names(part: torch.nn.Module) -> set[str]:
    return {n for n, _ in part.named_parameters()}


class _Spy(client.RemoteLM):
    """A RemoteLM that keeps its model and the tokens it generated."""

    made: list[_Spy] = []

    def __init__(self, model: torch.nn.Module, *args, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        self.model = model
        self.tokens: list[int] = []
        _Spy.made.append(self)

    def generate(self, *args, **kwargs):
        for step in super().generate(*args, **kwargs):
            self.tokens.append(step.token)
            yield step


def test_serve_and_generate_each_hold_their_side(saved, tmp_path, monkeypatch, capsys) -> None:
    model, folder = saved
    sizes = side_bytes(model, SPLIT)
    assert sizes["edge"] < sizes["whole"] and sizes["server"] < sizes["whole"]
    server = build_server(parse_args(serve, ["--llm", str(folder), "--llm-split", str(SPLIT),
                                             "--port", "0"]))
    dep = server.services[folder.name]
    # the server holds blocks [k, L), the norm and the head, nothing else
    assert (dep.held_bytes, dep.model_bytes) == (sizes["server"], sizes["whole"])
    assert all(not p.is_meta for p in dep.server.part.parameters())
    assert f"params={sizes['server'] / 1e6:.1f} MB of {sizes['whole'] / 1e6:.1f} MB" in repr(dep)

    _Spy.made.clear()
    monkeypatch.setattr(client, "RemoteLM", _Spy)
    out = tmp_path / "g.json"
    bg = server.start_in_thread()
    try:
        assert run_command(generate, [
            "--model", str(folder), "--split", str(SPLIT), "--codec", "fp32", "--server",
            bg.url, "--max-new-tokens", "8", "--json", str(out), PROMPT]) == 0
    finally:
        bg.stop()
    (lm,) = _Spy.made
    # the edge holds its embeddings and blocks [0, k): every other parameter is on meta
    edge = lm.lm.edge.part
    held = {n for n, p in lm.model.named_parameters(remove_duplicate=False) if not p.is_meta}
    assert all(not p.is_meta for p in edge.parameters())
    assert sum(p.nbytes for p in edge.parameters()) == sizes["edge"]
    assert not any(".ln_f." in n or ".norm." in n or n.startswith("lm_head") for n in held)
    report = json.loads(out.read_text())
    assert (report["param_bytes"], report["model_param_bytes"]) == (sizes["edge"],
                                                                     sizes["whole"])
    assert f"parameters held {sizes['edge'] / 1e6:.1f} MB" in capsys.readouterr().err
    # the tokens are the whole model's, greedy, in this process
    ids = torch.tensor(ByteTokenizer().encode(PROMPT))
    want, _ = greedy_unsplit(model, ids, 8)
    assert len(lm.tokens) >= 1 and lm.tokens == want[:len(lm.tokens)]


def test_models_built_in_code_and_random_weights_load_whole(saved) -> None:
    """Where no side can be read alone (a registered model made in code, random weights)
    the whole model is loaded, as before, and the startup line says so."""
    _model, folder = saved
    assert side_folder(folder) == folder and side_folder(str(folder), "auto") == folder
    assert side_folder(folder, "random") is None and side_folder(folder, None) is None
    assert side_folder(folder.name) is None  # llama_tiny, gpt2_tiny: built in code
    server = build_server(parse_args(serve, ["--llm", folder.name, "--llm-split", str(SPLIT),
                                             "--port", "0"]))
    (dep,) = server.services.values()
    assert dep.held_bytes == dep.model_bytes > 0
    assert f"params={dep.held_bytes / 1e6:.1f} MB of " in repr(dep)


@pytest.mark.parametrize("side", ["edge", "server"])
def test_using_what_a_side_lacks_raises(saved, side) -> None:
    """The parts outside a side stay on ``meta`` and refuse to run: the whole model called
    on ids fails at the first module it does not hold, naming it."""
    _model, folder = saved
    partial = partial_model(folder, SPLIT, side)
    with pytest.raises(RuntimeError, match=f"only the {side} side's tensors"):
        partial(torch.tensor([[1, 2, 3]]))


def test_a_split_outside_the_model_is_one_line(saved) -> None:
    _model, folder = saved
    with pytest.raises(SystemExit, match="--llm-split: split 9 outside"):
        build_server(parse_args(serve, ["--llm", str(folder), "--llm-split", "9",
                                        "--port", "0"]))


def test_the_other_sides_model_is_refused_at_once(saved) -> None:
    """A model holding the server side cannot make a RemoteLM (and the edge side's cannot
    be served): a one-line ValueError before any connection, naming what is missing."""
    from splitcomp.llm.halves import ServerHalf
    from splitcomp.runtime.llm.service import LLMDeployment

    _model, folder = saved
    with pytest.raises(ValueError, match=r"edge side \(blocks \[0, 2\)\) is not loaded"):
        client.RemoteLM(partial_model(folder, SPLIT, "server"), SPLIT, "ws://127.0.0.1:9")
    edge_only = ServerHalf(partial_model(folder, SPLIT, "edge"), SPLIT)
    with pytest.raises(ValueError, match=r"server side \(blocks \[2, L\).*is not loaded"):
        LLMDeployment("x", edge_only)
