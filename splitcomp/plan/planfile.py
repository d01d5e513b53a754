"""The plan file: what to deploy (model, cut, codec and setting), under which channel and
device assumptions, what it is predicted to cost, and the other Pareto settings a rate
controller may switch to. JSON, versioned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import codecs
from ..codecs import Codec
from .channel import Channel
from .planner import PlanRow

PLAN_VERSION = 1


@dataclass
class Plan:
    """A chosen plan. ``kind``: ``split`` (serve ``split`` with ``codec``), ``offload`` (raw
    pixels; the whole model), ``input`` (a compressed image file, ``codec`` its format: the
    server decodes it and runs the whole model), ``trained`` (the trained bottleneck in the
    ``checkpoint`` folder at ``split``; ``serve --plan`` serves it as ``--checkpoint``) or
    ``device`` (nothing to serve). ``deployment``: the name ``serve --plan`` serves it under.
    ``predicted``: the latency breakdown in ms and the byte counts of the chosen row.
    ``alternatives``: the other Pareto rows (same keys as ``predicted`` plus split, codec and
    params), fastest first."""

    model: str
    kind: str
    split: str | None
    codec: str | None
    params: dict[str, Any]
    channel: dict[str, Any]
    device: dict[str, Any]
    objective: str
    max_drop: float
    predicted: dict[str, Any]
    weights: str | None = None
    deployment: str | None = None
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    version: int = PLAN_VERSION
    checkpoint: str | None = None

    def make_codec(self) -> Codec:
        """The edge's encoder for a ``split`` plan."""
        if self.kind != "split" or self.codec is None:
            raise ValueError(f"a {self.kind!r} plan has no feature codec")
        return codecs.get(self.codec, **self.params)

    def channel_model(self) -> Channel:
        return Channel.from_json(self.channel)

    @property
    def predicted_ms(self) -> float:
        return float(self.predicted["end_to_end_ms"])


#: the runtime deployment serving each kind (``zoo_deployment`` / ``zoo_full_offload`` /
#: ``zoo_image_input`` names); all-on-edge needs none, a trained plan is named by its folder
_DEPLOYMENT = {"split": "{model}", "offload": "{model}-full", "input": "{model}-{codec}"}


def deployment_name(kind: str, model: str, codec: str | None = None) -> str | None:
    """The name ``serve --plan`` gives the deployment of a plan of ``kind`` (None: none)."""
    pattern = _DEPLOYMENT.get(kind)
    return pattern.format(model=model, codec=codec) if pattern else None


def row_summary(r: PlanRow) -> dict[str, Any]:
    """The figures a plan file keeps for one row."""
    d = r.to_json()
    keep = ("kind", "split", "codec", "params", "bytes_per_sample", "drop_pp", "head_ms",
            "encode_ms", "transfer_ms", "queue_ms", "decode_ms", "tail_ms", "end_to_end_ms",
            "server_ms", "uplink_bytes", "downlink_bytes", "energy_j")
    out = {k: d[k] for k in keep}
    if r.checkpoint:
        out["checkpoint"] = r.checkpoint
    return out


def plan_from_row(row: PlanRow, *, model: str, channel: Channel, device: dict[str, Any],
                  objective: str, max_drop: float, weights: str | None = None,
                  alternatives: list[PlanRow] = ()) -> Plan:
    """A :class:`Plan` for ``row``; ``alternatives`` (other rows) go in fastest first."""
    split = row.split if row.kind in ("split", "trained") else None
    codec = row.codec if row.kind != "device" else None
    others = sorted((a for a in alternatives if a is not row), key=lambda a: a.end_to_end_ms)
    return Plan(model=model, kind=row.kind, split=split, codec=codec, params=dict(row.params),
                channel=channel.to_json(), device=device, objective=objective,
                max_drop=max_drop, predicted=row_summary(row), weights=weights,
                deployment=deployment_name(row.kind, model, codec),
                alternatives=[row_summary(a) for a in others], checkpoint=row.checkpoint or None)


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write ``plan`` as JSON."""
    from dataclasses import asdict

    Path(path).write_text(json.dumps(asdict(plan), indent=1) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read a plan file written by :func:`save_plan`; refuses other versions."""
    d = json.loads(Path(path).read_text())
    if d.get("version") != PLAN_VERSION:
        raise ValueError(f"{path}: plan file version {d.get('version')!r}, expected "
                         f"{PLAN_VERSION}")
    return Plan(**d)
