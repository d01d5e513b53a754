"""`splitcomp demo --quick`: embedded server, concurrent clients, one table."""

from __future__ import annotations

import pytest

from splitcomp.cli import main
from splitcomp.data import foolbox_data_dir


@pytest.mark.skipif(foolbox_data_dir() is None, reason="foolbox images missing")
def test_demo_quick(capsys) -> None:
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    for row in ("top-1", "bytes per request", "server compute", "p50 / p99", "requests/s"):
        assert row in out
    assert "full offload" in out and "lighter" in out

