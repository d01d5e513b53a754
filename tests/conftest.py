"""Shared fixtures: skip, with the reason, when shared data or an optional package is absent.

``@pytest.mark.requires_shared_data`` skips a test when ``../shared/data`` (or
``$SPLITCOMP_DATA``) is missing; the ``shared_data`` fixture does the same and returns the folder.
``installed_package("name")`` returns an installed package's folder or skips.
``single_thread`` runs a test with one torch thread (on a busy 2-core machine, OpenMP threads
waiting on each other make model forwards up to 10x slower).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from splitcomp.data.paths import package_dir, shared_data_dir

NO_SHARED_DATA = "shared data not found (../shared/data or $SPLITCOMP_DATA)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"requires_shared_data: skip when {NO_SHARED_DATA}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_shared_data") and shared_data_dir() is None:
        pytest.skip(NO_SHARED_DATA)


def _shared_path(*parts: str) -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip(NO_SHARED_DATA)
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not in the shared data")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (skips when absent)."""
    return _shared_path()


@pytest.fixture(scope="session")
def shared_path() -> Callable[..., Path]:
    """``shared_path("weights", "x.th")``: a path in the shared data, skipping when absent."""
    return _shared_path


@pytest.fixture(scope="session")
def installed_package() -> Callable[[str], Path]:
    """``installed_package("foolbox")``: the package's folder, skipping when not installed."""

    def find(name: str) -> Path:
        path = package_dir(name)
        if path is None:
            pytest.skip(f"package {name} not installed (pip install --no-deps {name})")
        return path

    return find


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op torch thread for the test, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _grad_mode_restored() -> Iterator[None]:
    """Commands switch autograd off for their whole process (``torch.set_grad_enabled(False)``);
    a test that runs one must not leave it off for the tests after it."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)
