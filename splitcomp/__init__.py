"""splitcomp: cut a network in two, compress the intermediate features, serve the tails.

    >>> import splitcomp
    >>> model = splitcomp.create_model("resnet20")           # zoo name, offline weights
    >>> head, tail = splitcomp.split(model, "layer2", (x,))  # tail(*head(x)) == model(x)
    >>> data = splitcomp.codecs.get("rans").encode(*head(x))
    >>> with splitcomp.SplitClient(url, head, "rans", "resnet20") as client:
    ...     logits = client.infer(x)                          # the tail runs on the server

The names below are imported on first use (PEP 562), so ``import splitcomp`` stays light
(no torch) until one of them is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> (module, attribute; None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "codecs": ("splitcomp.codecs", None),
    "split": ("splitcomp.partition", "split"),
    "create_model": ("splitcomp.zoo", "create_model"),
    "load_model": ("splitcomp.zoo", "load_model"),
    "list_models": ("splitcomp.zoo", "list_models"),
    "SplitLM": ("splitcomp.llm", "SplitLM"),
    "SplitClient": ("splitcomp.runtime", "SplitClient"),
    "BackgroundServer": ("splitcomp.runtime", "BackgroundServer"),
    "RemoteLM": ("splitcomp.runtime.llm", "RemoteLM"),
}

__all__ = [
    "__version__", "codecs", "split", "create_model", "load_model", "list_models", "SplitLM",
    "SplitClient", "BackgroundServer", "RemoteLM",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from . import codecs
    from .llm import SplitLM
    from .partition import split
    from .runtime import BackgroundServer, SplitClient
    from .runtime.llm import RemoteLM
    from .zoo import create_model, list_models, load_model


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'splitcomp' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
