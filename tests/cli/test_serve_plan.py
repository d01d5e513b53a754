"""`splitcomp serve --plan FILE` serves the split and codec a plan file chose."""

from __future__ import annotations

import pytest

from splitcomp.cli import serve
from splitcomp.plan.channel import Channel
from splitcomp.plan.planfile import Plan, save_plan

from .commands import parse_args


def _plan(kind: str = "split") -> Plan:
    return Plan(model="resnet20", kind=kind, split="layer2" if kind == "split" else None,
                codec="rans" if kind == "split" else None, params={"bits": 4},
                channel=Channel(10e6, 0.02).to_json(), device={"name": "phone"},
                objective="latency", max_drop=0.5, predicted={"end_to_end_ms": 10.0},
                weights="random", deployment="resnet20")


def test_serve_builds_the_plans_deployment(tmp_path):
    path = tmp_path / "plan.json"
    save_plan(_plan(), path)
    server = serve.build_server(parse_args(serve, ["--plan", str(path), "--port", "0"]))
    dep = server.deployments["resnet20"]
    assert dep.codecs is not None and set(dep.codecs) == {"rans"}


def test_a_plan_without_a_split_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    save_plan(_plan("device"), path)
    with pytest.raises(SystemExit, match="no split to serve"):
        serve.build_server(parse_args(serve, ["--plan", str(path)]))
