"""The cut-point table: shapes and bytes of what would cross, head parameters and FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from splitcomp.partition import CutPoint, Partitioner, candidates, format_candidates

from .toy_models import SmallResNet, seeded

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _flops(fn, *args) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return seeded(SmallResNet)


@pytest.fixture(scope="module")
def parts(resnet) -> Partitioner:
    return Partitioner(resnet, X)


@pytest.fixture(scope="module")
def cands(parts: Partitioner) -> list[CutPoint]:
    return parts.candidates()


def test_every_node_is_a_cut_point(parts: Partitioner, cands: list[CutPoint]) -> None:
    assert [c.position for c in cands] == list(range(1, len(parts.index.compute) + 1))
    assert [c.node for c in cands] == [n.name for n in parts.index.compute]
    named = {c.name for c in cands if c.modules}
    assert {"stem", "layer1", "layer2", "fc", "layer2.bn1", "layer2.shortcut"} <= named


@pytest.mark.parametrize(("name", "shapes"), [
    ("stem", [(1, 8, 16, 16)]),
    ("layer1", [(1, 8, 16, 16)]),
    ("layer2.bn1", [(1, 8, 16, 16), (1, 16, 8, 8)]),
    ("layer2", [(1, 16, 8, 8)]),
    ("fc", [(1, 10)]),
])
def test_shapes_and_bytes(cands: list[CutPoint], name: str, shapes) -> None:
    cut = next(c for c in cands if c.name == name)
    assert list(cut.shapes) == shapes
    numel = sum(torch.Size(s).numel() for s in shapes)
    assert cut.numel == numel and cut.fp32_bytes == 4 * numel
    assert all(t.dtype == torch.float32 for t in cut.crossing)


def test_head_flops_grow_and_match_the_built_head(resnet, parts: Partitioner,
                                                  cands: list[CutPoint]) -> None:
    flops = [c.head_flops for c in cands]
    assert all(a <= b for a, b in zip(flops, flops[1:], strict=False))
    assert flops[-1] == cands[0].total_flops == _flops(resnet, X) > 0
    for name in ("layer1", "layer2.bn1", "layer2"):
        cut = next(c for c in cands if c.name == name)
        head, _ = parts.split(name)
        assert cut.head_flops == _flops(head, X)
    strictly = [c.head_flops for c in cands if c.name in ("stem", "layer1", "layer2", "fc")]
    assert strictly == sorted(set(strictly))


def test_head_params(resnet, cands: list[CutPoint]) -> None:
    by_name = {c.name: c for c in cands}

    def count(*modules: torch.nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    assert by_name["stem"].head_params == count(resnet.stem)
    assert by_name["layer2"].head_params == count(resnet.stem, resnet.layer1, resnet.layer2)
    assert by_name["fc"].head_params == count(resnet)
    params = [c.head_params for c in cands]
    assert all(a <= b for a, b in zip(params, params[1:], strict=False))


def test_candidates_function(resnet, cands: list[CutPoint]) -> None:
    assert candidates(resnet, X) == cands


def test_modules_only_and_table(cands: list[CutPoint], parts: Partitioner) -> None:
    named = parts.candidates(modules_only=True)
    assert named == [c for c in cands if c.modules]
    table = format_candidates(named)
    lines = table.splitlines()
    assert len(lines) == len(named) + 2 and "crossing tensors" in lines[0]
    row = next(line for line in lines if " layer2.bn1 " in line)
    assert "1x8x16x16 float32 + 1x16x8x8 float32" in row and "12,288" in row
