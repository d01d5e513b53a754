"""`splitcomp serve --plan FILE` serves the split and codec a plan file chose."""

from __future__ import annotations

import argparse

import pytest

from splitcomp.plan.channel import Channel
from splitcomp.plan.planfile import Plan, save_plan
from splitcomp.runtime import cli_serve


def _plan(kind: str = "split") -> Plan:
    return Plan(model="resnet20", kind=kind, split="layer2" if kind == "split" else None,
                codec="rans" if kind == "split" else None, params={"bits": 4},
                channel=Channel(10e6, 0.02).to_json(), device={"name": "phone"},
                objective="latency", max_drop=0.5, predicted={"end_to_end_ms": 10.0},
                weights="random", deployment="resnet20")


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli_serve.add_arguments(p)
    return p.parse_args(list(argv))


def test_serve_builds_the_plans_deployment(tmp_path):
    path = tmp_path / "plan.json"
    save_plan(_plan(), path)
    server = cli_serve.build_server(_args("--plan", str(path), "--port", "0"))
    dep = server.deployments["resnet20"]
    assert dep.codecs is not None and set(dep.codecs) == {"rans"}


def test_a_plan_without_a_split_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    save_plan(_plan("device"), path)
    with pytest.raises(SystemExit, match="no split to serve"):
        cli_serve.build_server(_args("--plan", str(path)))
