"""Model registry: ``@register_model`` builders, each with a default config describing its
inputs and weights; ``create_model`` builds one (optionally with weights) in eval mode."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .weights import load_state_dict_file, resolve_weights

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelConfig:
    """What a model expects and where its weights are.

    ``dataset`` names the data it was trained for (``cifar10``, ``imagenet``, ``text``).
    ``default_weights`` locates the offline default weights (None when absent here);
    ``weights_source`` says in words where they come from, for error messages. ``hub_url``
    is only used when weights are explicitly asked for with ``weights="hub"``.
    ``kwargs_from_state_dict`` lets a generic builder read its shape from the weights;
    ``loader`` replaces the state-dict path for models whose weights are not a state dict.
    """

    name: str
    family: str
    task: str = "image-classification"
    dataset: str | None = None
    num_classes: int | None = None
    input_size: tuple[int, ...] | None = None
    resize: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    default_weights: Callable[[], Path | None] | None = field(default=None, repr=False)
    weights_source: str = ""
    hub_url: str | None = None
    fx_traceable: bool = True
    kwargs_from_state_dict: Callable[[dict], dict] | None = field(default=None, repr=False)
    loader: Callable[..., nn.Module] | None = field(default=None, repr=False)

    def preprocess(self) -> Preprocess:
        """The image transform this model's accuracy was measured with."""
        if self.task != "image-classification" or self.input_size is None:
            raise ValueError(f"{self.name} does not take images")
        crop = self.input_size[-1]
        return Preprocess(resize=self.resize, crop=crop if self.resize else None,
                          mean=self.mean, std=self.std)

    def find_default_weights(self) -> Path | None:
        """Path of the offline default weights, or None when they are not available here."""
        return self.default_weights() if self.default_weights is not None else None


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    config: ModelConfig


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str | None = None, **config: Any) -> Callable[[Builder], Builder]:
    """Decorator: register a builder under ``name`` (default: the function name).

    Keyword arguments fill its :class:`ModelConfig` (``family`` defaults to the module name).
    """

    def wrap(fn: Builder) -> Builder:
        key = name or fn.__name__
        if key in _REGISTRY and _REGISTRY[key].builder is not fn:
            raise ValueError(f"model {key!r} already registered")
        config.setdefault("family", fn.__module__.rsplit(".", 1)[-1])
        _REGISTRY[key] = _Entry(fn, ModelConfig(name=key, **config))
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def model_config(name: str) -> ModelConfig:
    """The default config of a registered model."""
    return _entry(name).config


def create_model(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model in eval mode; ``model.default_cfg`` is its :class:`ModelConfig`.

    ``weights``: None leaves the builder's initialisation (random for the CNNs); ``"default"``
    loads the offline default weights (FileNotFoundError when they are not here); ``"hub"``
    downloads from the config's ``hub_url``; anything else is a path (or URL) of weights.
    State dicts load with ``strict=True``, so a layout mismatch fails loudly.
    """
    entry = _entry(name)
    cfg = entry.config
    if weights is None:
        model = entry.builder(**kwargs)
    elif cfg.loader is not None:
        model = cfg.loader(weights, **kwargs)
    else:
        source = resolve_weights(cfg, weights)
        state = load_state_dict_file(source)
        if cfg.kwargs_from_state_dict is not None:
            kwargs = {**cfg.kwargs_from_state_dict(state), **kwargs}
        model = entry.builder(**kwargs)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"weights {source} do not fit model {name!r}: {e}") from None
    model.eval()
    model.default_cfg = cfg
    return model
