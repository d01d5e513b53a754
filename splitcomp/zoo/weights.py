"""Finding and reading weight files: offline defaults, explicit paths, opt-in hub downloads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .registry import ModelConfig

#: keys under which checkpoints commonly nest the state dict
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
#: prefixes added by wrappers (DataParallel, torch.compile)
_PREFIXES = ("module.", "_orig_mod.")


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def resolve_weights(cfg: ModelConfig, weights: str | Path) -> str | Path:
    """``"default"`` / ``"hub"`` / a path or URL -> the path or URL to read."""
    if weights == "default":
        path = cfg.find_default_weights()
        if path is None:
            raise FileNotFoundError(
                f"default weights of {cfg.name} are not available here "
                f"({cfg.weights_source or 'no offline source'}); pass weights=<path>"
            )
        return path
    if weights == "hub":
        if not cfg.hub_url:
            raise ValueError(f"{cfg.name} has no hub URL")
        return cfg.hub_url
    if isinstance(weights, str) and _is_url(weights):
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path


def clean_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint into a flat state dict and strip wrapper prefixes (``module.``)."""
    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict, got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_dict_file(source: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a file (safely, ``weights_only``) or, when asked, a URL."""
    if isinstance(source, str) and _is_url(source):
        obj = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
    else:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    return clean_state_dict(obj)
