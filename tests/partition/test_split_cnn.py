"""fx path: exact halves, the right tensors crossing, weights where they are used."""

from __future__ import annotations

import pytest
import torch

from splitcomp.partition import Partitioner, SplitError, split

from .toy_models import (
    FixedBatch,
    ShapeNet,
    SkipNet,
    SmallResNet,
    assert_exact,
    assert_no_weight_crosses,
    assert_weights_partitioned,
    reload,
    seeded,
)

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return seeded(SmallResNet)


@pytest.fixture(scope="module")
def resnet_parts(resnet: torch.nn.Module) -> Partitioner:
    return Partitioner(resnet, X)


@pytest.mark.parametrize(("at", "shapes"), [
    ("stem", [(1, 8, 16, 16)]),
    ("layer1", [(1, 8, 16, 16)]),
    ("layer2", [(1, 16, 8, 8)]),
    ("layer1.bn1", [(1, 8, 16, 16), (1, 8, 16, 16)]),  # inside a block: both branches
    ("layer2.bn1", [(1, 8, 16, 16), (1, 16, 8, 8)]),
    ("layer2.conv2", [(1, 8, 16, 16), (1, 16, 8, 8)]),  # shortcut conv not run yet
    ("layer2.shortcut", [(1, 16, 8, 8), (1, 16, 8, 8)]),
    ("fc", [(1, 10)]),
])
def test_cnn_cuts_are_exact(resnet, resnet_parts: Partitioner, at: str, shapes) -> None:
    head, tail = resnet_parts.split(at)
    crossing = assert_exact(resnet, head, tail, X)
    assert [tuple(t.shape) for t in crossing] == shapes
    assert [c.shape for c in head.split_info.crossing] == shapes
    assert all(c.source == "activation" for c in head.split_info.crossing)
    assert_no_weight_crosses(resnet, crossing)
    assert_weights_partitioned(resnet, head, tail)


def test_fx_halves_take_any_batch(resnet, resnet_parts: Partitioner) -> None:
    head, tail = resnet_parts.split("layer2.bn1")
    assert head.split_info.dynamic_batch and head.split_info.backend == "fx"
    for batch in (2, 5):
        x = torch.randn(batch, 3, 16, 16)
        assert_exact(resnet, head, tail, x)
    assert_exact(resnet, head, tail, torch.randn(2, 3, 24, 20))  # and any image size


def test_head_holds_only_the_weights_before_the_cut(resnet, resnet_parts: Partitioner) -> None:
    head, tail = resnet_parts.split("layer1")
    before = [resnet.stem, resnet.layer1]
    assert sum(p.numel() for p in head.parameters()) == sum(
        p.numel() for m in before for p in m.parameters())
    assert {id(p) for p in tail.parameters()} == {
        id(p) for m in (resnet.layer2, resnet.fc) for p in m.parameters()}
    # the halves share the model's modules: running stats are buffers of the half using them
    assert any(b is resnet.layer1.bn1.running_mean for b in head.buffers())
    assert not any(b is resnet.layer1.bn1.running_mean for b in tail.buffers())


def test_cut_after_a_graph_node_and_by_position(resnet, resnet_parts: Partitioner) -> None:
    plan = resnet_parts.plan("layer2.bn1")
    node = resnet_parts.index.compute[plan.position - 1].name
    for at in (node, plan.position):
        head, tail = resnet_parts.split(at)
        assert head.split_info.position == plan.position
        assert len(assert_exact(resnet, head, tail, X)) == 2


def test_tensor_skipping_several_layers_crosses() -> None:
    model = seeded(SkipNet)
    parts = Partitioner(model, X)
    for at, second in (("l1", "l1.1"), ("l2", "l2.1"), ("l3", "l3.1")):
        head, tail = parts.split(at)
        crossing = assert_exact(model, head, tail, X)
        info = head.split_info.crossing
        # the raw input (used at the very end), the stem output, the layer's output
        assert [c.name for c in info] == ["x", "stem", info[2].name]
        assert [c.source for c in info] == ["input", "activation", "activation"]
        assert info[2].module == second
        assert [tuple(t.shape) for t in crossing] == [(1, 3, 16, 16), (1, 4, 16, 16),
                                                      (1, 4, 16, 16)]
        assert crossing[0] is not None and torch.equal(crossing[0], X)
        assert_weights_partitioned(model, head, tail)


def test_every_position_of_an_awkward_graph() -> None:
    model = seeded(ShapeNet)
    x = torch.randn(2, 5, 8)
    parts = Partitioner(model, x)
    sent_sizes = 0
    for position in range(1, len(parts.index.compute) + 1):
        head, tail = parts.split(position)
        for batch in (2, 3):
            assert_exact(model, head, tail, torch.randn(batch, 5, 8))
        info = head.split_info
        scalars = [c for c in info.crossing if c.source == "scalar"]
        if scalars:  # b = x.size(0) crosses as one int64 when x itself does not
            assert [(c.name, c.shape, c.dtype) for c in scalars] == [("size", (), torch.int64)]
            assert all(c.source != "input" for c in info.crossing)
            sent_sizes += 1
        assert not any(c.name == "exp" for c in info.crossing)  # buffer-only: rebuilt
    assert sent_sizes > 0


def test_halves_survive_pickling() -> None:
    model = seeded(ShapeNet)
    x = torch.randn(2, 5, 8)
    head, tail = Partitioner(model, x).split("act")  # a packed size crosses here
    assert any(c.source == "scalar" for c in head.split_info.crossing)
    head, tail = reload(head), reload(tail)
    assert head.split_info.at == "act"
    assert_exact(model, head, tail, torch.randn(3, 5, 8))


def test_export_backend_on_a_cnn(resnet) -> None:
    parts = Partitioner(resnet, X, backend="export")
    assert parts.backend == "export"
    head, tail = parts.split("layer2.bn1")
    assert len(assert_exact(resnet, head, tail, X)) == 2
    assert_weights_partitioned(resnet, head, tail)
    if head.split_info.dynamic_batch:
        assert_exact(resnet, head, tail, torch.randn(3, 3, 16, 16))
    else:  # static export: a clear error, not a wrong answer
        with pytest.raises(ValueError, match="exported for shape"):
            head(torch.randn(3, 3, 16, 16))


def test_export_falls_back_to_static_shapes() -> None:
    model = seeded(FixedBatch)
    x = torch.randn(1, 3)
    parts = Partitioner(model, x, backend="export")
    head, tail = parts.split("a")
    assert not head.split_info.dynamic_batch
    assert any("static shapes" in note for note in head.split_info.notes)
    assert_exact(model, head, tail, x)
    with pytest.raises(ValueError, match=r"input 'x': this head was exported for shape \(1, 3\)"):
        head(torch.randn(2, 3))
    assert_weights_partitioned(model, head, tail)


def test_unknown_cut_lists_valid_names(resnet_parts: Partitioner) -> None:
    with pytest.raises(SplitError, match=r"layer2\.bn1") as err:
        resnet_parts.split("layer9")
    assert isinstance(err.value, ValueError)
    with pytest.raises(SplitError):
        resnet_parts.split(0)


def test_split_function(resnet) -> None:
    head, tail = split(resnet, "layer1.conv2", X)
    assert len(assert_exact(resnet, head, tail, X)) == 2
    assert head.split_info.last_head_node == "layer1_conv2"
