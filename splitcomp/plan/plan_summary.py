"""Markdown summary of ``splitcomp plan --json`` outputs: the winners per objective and the
Pareto table of each run. ``python -m splitcomp.plan.plan_summary docs/results/plan_*.json``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .planner import OBJECTIVES, PlanRow, format_table, shown_rows

_FIELDS = {f.name for f in dataclasses.fields(PlanRow)}


def rows_from_json(d: dict[str, Any]) -> list[PlanRow]:
    return [PlanRow(**{k: v for k, v in r.items() if k in _FIELDS}) for r in d["rows"]]


def _what(r: PlanRow) -> str:
    what = {"device": "all on edge", "offload": "raw input"}.get(r.kind)
    if what is None:
        what = f"{r.split} {r.codec} {r.setting}".strip() if r.kind in ("split", "trained") \
            else f"input {r.codec} {r.setting}"
    return (f"{what} ({r.end_to_end_ms:.1f} ms, {r.server_ms:.2f} ms server, "
            f"{r.uplink_bytes:,} B, {1e3 * r.energy_j:.1f} mJ, drop {r.drop_pp:.2f})")


def render_run(d: dict[str, Any]) -> str:
    """One run's section."""
    rows = rows_from_json(d)
    by_name = {r.name: r for r in rows}
    ch, dev, prof = d["channel"], d["device"], d["profile"]
    bw = f"{ch['bandwidth_bps'] / 1e6:g} Mbit/s" if not ch.get("trace") else "trace"
    cuts = ", ".join(c["split"] for c in prof["cuts"])
    out = [f"### {d['model']}, {bw}, RTT {1e3 * ch['rtt_s']:g} ms, edge `{dev['name']}` "
           f"({dev['slowdown']:g}x)", "",
           f"{prof['n_calib']} calibration images from `{prof.get('data', '?')}` "
           f"(top-1 {prof['top1']:.2f}), cuts {cuts}; "
           f"whole model {prof['full_ms']:.2f} ms here; budget {d['max_drop']} pp; "
           f"{len(rows)} plans.", "",
           "| objective | best plan | best plan that offloads |", "|---|---|---|"]
    for o in OBJECTIVES:
        best = by_name[d["best"][o]]
        off = by_name[d["best_offload"][o]] if "best_offload" in d else best
        out.append(f"| {o} | {best.name}: {_what(best)} | {off.name}: {_what(off)} |")
    chosen = [by_name[n] for n in (*d["best"].values(), *d.get("best_offload", {}).values())]
    out += ["", format_table(shown_rows(rows, chosen), markdown=True), ""]
    return "\n".join(out)


def render(paths: list[Path]) -> str:
    return "\n".join(render_run(json.loads(p.read_text())) for p in paths)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m splitcomp.plan.plan_summary", description=__doc__)
    p.add_argument("json", nargs="+", type=Path)
    args = p.parse_args(argv)
    print(render(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
