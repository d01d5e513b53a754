"""The model registry: listing, configs, weight resolution, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from splitcomp.zoo import (
    ModelConfig,
    clean_state_dict,
    create_model,
    list_models,
    model_config,
    register_model,
)
from splitcomp.zoo.registry import _REGISTRY

EXPECTED = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet_cifar", "mobilenet_v2",
            "efficientnet_lite0", "llama_tiny", "gpt2_tiny", "smollm2"}


def test_list_models() -> None:
    names = list_models()
    assert EXPECTED <= set(names) and names == sorted(names)
    assert list_models("resnet[0-9]*") == ["resnet20", "resnet32", "resnet44", "resnet56"]
    assert list_models("nothing*") == []


def test_configs() -> None:
    r = model_config("resnet20")
    assert (r.dataset, r.num_classes, r.input_size, r.family) == ("cifar10", 10, (3, 32, 32),
                                                                  "resnet_cifar")
    assert r.preprocess().resize is None and r.preprocess().crop is None
    m = model_config("mobilenet_v2").preprocess()
    assert (m.resize, m.crop) == (256, 224)
    e = model_config("efficientnet_lite0").preprocess()
    assert e.mean != m.mean and e.std != m.std  # its own input scaling
    assert model_config("llama_tiny").task == "causal-lm"
    with pytest.raises(ValueError):
        model_config("llama_tiny").preprocess()


def test_unknown_model() -> None:
    with pytest.raises(KeyError, match="resnet20"):
        create_model("no-such-model")


def test_create_model_without_weights_is_eval_with_config() -> None:
    model = create_model("resnet20")
    assert not model.training and isinstance(model.default_cfg, ModelConfig)
    assert model.default_cfg.name == "resnet20"


def test_missing_default_weights_are_an_error() -> None:
    with pytest.raises(FileNotFoundError, match="resnet56"):
        create_model("resnet56", weights="default")
    with pytest.raises(FileNotFoundError):
        create_model("resnet20", weights="/nonexistent/weights.th")
    with pytest.raises(ValueError, match="hub"):
        create_model("resnet20", weights="hub")


def test_register_and_load_round_trip(tmp_path: Path) -> None:
    @register_model("test_tiny_linear", num_classes=2)
    def test_tiny_linear() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 2))

    try:
        src = test_tiny_linear()
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
        loaded = create_model("test_tiny_linear", weights=path)
        assert torch.equal(loaded[0].weight, src[0].weight)
        with pytest.raises(ValueError, match="already registered"):
            register_model("test_tiny_linear")(lambda: nn.Identity())
    finally:
        _REGISTRY.pop("test_tiny_linear", None)


def test_clean_state_dict() -> None:
    t = torch.zeros(1)
    assert clean_state_dict({"model": {"module.a": t}}) == {"a": t}
    assert clean_state_dict({"_orig_mod.b": t}) == {"b": t}
    with pytest.raises(TypeError):
        clean_state_dict([t])
