"""``splitcomp train bottleneck --sweep K=V1,V2``: a family of runs (a small NASC-style search).

The Cartesian product of the swept values, each run exactly as the command trains one alone
(same split, same seed) into ``--out/<name>``; then every run's figures and the runs on the
rate/accuracy Pareto front (fewer bytes per sample, higher top-1).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..plan import plan_front
from ..train import CheckpointError, read_meta
from ._common import fail

#: the ``TrainConfig`` fields a sweep may vary, and how their values are read
SWEEPABLE: dict[str, Callable[[str], Any]] = {
    "beta": float, "channels": int, "stride": int, "tune_head": int, "tune_tail": int,
    "hidden": int}
#: allowed values, where the flag restricts them
CHOICES = {"stride": (1, 2)}


def parse_sweeps(items: list[str]) -> dict[str, list[Any]]:
    """``["beta=1,3", "channels=8,16"]`` -> ``{"beta": [1.0, 3.0], "channels": [8, 16]}``
    (ValueError: not ``K=V,...``, a field that cannot be swept, a bad or repeated value)."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ValueError(f"--sweep expects FIELD=V1,V2,..., got {item!r}")
        if key not in SWEEPABLE:
            raise ValueError(f"--sweep {key}: not a field that can be swept (one of "
                             f"{', '.join(SWEEPABLE)})")
        if key in out:
            raise ValueError(f"--sweep {key}: given twice")
        try:
            vals = [SWEEPABLE[key](v.strip()) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"--sweep {key}: bad value in {values!r}") from None
        bad = [v for v in vals if key in CHOICES and v not in CHOICES[key]]
        if bad or len(set(vals)) != len(vals):
            raise ValueError(f"--sweep {key}: bad or repeated value in {values!r}")
        out[key] = vals
    return out


def run_name(point: dict[str, Any]) -> str:
    """The run's folder name from its swept values, e.g. ``beta3-channels16``."""
    return "-".join(f"{k}{v:g}" for k, v in point.items())


def pareto_names(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The runs no other run beats on both bytes per sample (fewer) and top-1 (higher)."""
    rows = [SimpleNamespace(name=n, bytes=r["bytes_per_sample"], miss=-r["top1"])
            for n, r in runs.items()]
    return [r.name for r in plan_front(rows, keys=("bytes", "miss"))]


def table(runs: dict[str, dict[str, Any]], front: list[str]) -> str:
    """One line per run: bytes per sample, top-1, drop, on the front or not."""
    width = max(len("run"), *(len(n) for n in runs))
    lines = [f"{'run':<{width}}  {'B/sample':>9}  {'top-1 %':>7}  {'drop pp':>7}  front"]
    lines += [f"{n:<{width}}  {r['bytes_per_sample']:>9.1f}  {r['top1']:>7.2f}  "
              f"{r['drop_pp']:>7.2f}  {'*' if n in front else ''}" for n, r in runs.items()]
    return "\n".join(line.rstrip() for line in lines)


def sweep(args: argparse.Namespace, train_one: Callable[[argparse.Namespace], int],
          write_json: Callable[[dict, Path | None], None]) -> int:
    """Train every point of ``args.sweep`` with ``train_one`` (the single-run command),
    ``--minutes`` split evenly over the runs, then print and write the family's figures."""
    if args.resume:
        return fail("--sweep trains new runs: not with --resume")
    try:
        grid = parse_sweeps(args.sweep)
    except ValueError as e:
        return fail(str(e))
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    minutes = args.minutes / len(points) if args.minutes is not None else None
    runs: dict[str, dict[str, Any]] = {}
    for point in points:
        name = run_name(point)
        one = argparse.Namespace(**{**vars(args), **point, "sweep": [], "minutes": minutes,
                                    "out": args.out / name, "json": None})
        print(f"== {name}")
        status = train_one(one)
        if status:
            return status
        try:
            runs[name] = read_meta(one.out)["info"]["figures"]
        except (CheckpointError, KeyError) as e:
            return fail(f"--sweep {name}: no figures in {one.out} ({e})")
    front = pareto_names(runs)
    print(table(runs, front))
    write_json({"swept": grid, "runs": runs, "front": front}, args.json)
    return 0
