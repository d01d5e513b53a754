"""Registered zoo models split exactly at the cuts the experiments use (random weights)."""

from __future__ import annotations

import pytest
import torch

zoo = pytest.importorskip("splitcomp.zoo")

from splitcomp.partition import Partitioner  # noqa: E402

from .toy_models import (  # noqa: E402
    assert_exact,
    assert_no_weight_crosses,
    assert_weights_partitioned,
)

CASES = {
    "resnet20": ((1, 3, 32, 32), {"layer1": (1, 16, 32, 32), "layer2": (1, 32, 16, 16),
                                  "layer2.1": (1, 32, 16, 16)}),
    "mobilenet_v2": ((1, 3, 64, 64), {"features.7": (1, 64, 4, 4),
                                      "features.14": (1, 160, 2, 2)}),
}
PARAMS = [(name, at) for name, (_, cuts) in CASES.items() for at in cuts]
_parts: dict[str, tuple[torch.nn.Module, Partitioner]] = {}


def _partitioner(name: str) -> tuple[torch.nn.Module, Partitioner]:
    if name not in _parts:
        if name not in zoo.list_models():
            pytest.skip(f"{name} is not registered in the zoo")
        torch.manual_seed(0)
        model = zoo.create_model(name).eval()
        shape = CASES[name][0]
        _parts[name] = (model, Partitioner(model, torch.randn(*shape)))
    return _parts[name]


@pytest.mark.parametrize(("name", "at"), PARAMS)
def test_zoo_cut_is_exact(name: str, at: str) -> None:
    model, parts = _partitioner(name)
    head, tail = parts.split(at)
    assert head.split_info.backend == "fx"
    shape = CASES[name][0]
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 2):
        x = torch.randn(batch, *shape[1:], generator=gen)
        crossing = assert_exact(model, head, tail, x)
        want = CASES[name][1][at]
        assert [tuple(t.shape) for t in crossing] == [(batch, *want[1:])]
        assert_no_weight_crosses(model, crossing)
    assert_weights_partitioned(model, head, tail)
