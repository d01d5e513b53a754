"""One torch thread for the whole partition suite: module-scoped fixtures trace models before
any function-scoped fixture could set it, and a busy 2-core machine makes OpenMP threads
wait on each other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
