"""Where an installed package keeps its cache and data (#14): the user's XDG folders, never
beside the package; a checkout keeps ``<repo>/.cache`` and ``<repo>/../shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitcomp.data import paths

VARS = ("SPLITCOMP_CACHE", "SPLITCOMP_DATA", "XDG_CACHE_HOME", "XDG_DATA_HOME")


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As if installed (no checkout), with ``HOME`` at ``tmp_path/home`` and no variables."""
    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_this_checkout_is_one() -> None:
    assert paths.checkout_root() == paths.repo_root()
    assert (paths.repo_root() / "pyproject.toml").is_file()


def test_a_checkout_keeps_its_own_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    assert paths.cache_dir() == paths.repo_root() / ".cache"
    beside = paths.repo_root().parent / "shared" / "data"
    assert paths.shared_data_dir() == (beside if beside.is_dir() else None)


def test_installed_defaults_are_the_users_folders(installed: Path) -> None:
    assert paths.cache_dir() == installed / ".cache" / "splitcomp"
    assert paths.shared_data_dir() is None  # not there yet: callers skip or ask for a path
    (installed / ".local" / "share" / "splitcomp").mkdir(parents=True)
    assert paths.shared_data_dir() == installed / ".local" / "share" / "splitcomp"


def test_xdg_and_splitcomp_variables_override(installed: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xc"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xd"))
    (tmp_path / "xd" / "splitcomp").mkdir(parents=True)
    assert paths.cache_dir() == tmp_path / "xc" / "splitcomp"
    assert paths.shared_data_dir() == tmp_path / "xd" / "splitcomp"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/not/allowed")  # the XDG spec: ignored
    assert paths.cache_dir() == installed / ".cache" / "splitcomp"
    monkeypatch.setenv("SPLITCOMP_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("SPLITCOMP_DATA", str(tmp_path))
    assert paths.cache_dir() == tmp_path / "c" and paths.shared_data_dir() == tmp_path


def test_a_copy_without_pyproject_is_not_a_checkout(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "repo_root", lambda: tmp_path)
    assert paths.checkout_root() is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert paths.checkout_root() is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "splitcomp"\n')
    assert paths.checkout_root() == tmp_path
