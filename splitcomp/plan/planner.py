"""Turn a :class:`~.profile.ModelProfile`, a :class:`~.channel.Channel` and an edge
:class:`~.devices.DeviceProfile` into costed plans, their Pareto front and a choice.

One row per (split, codec, setting), plus the two extremes (whole model on the edge; raw
input to the server), input compression (JPEG / WebP) and trained checkpoints (the head is
then the checkpoint's edge model, tuned head + encoder; the tail its decoder + the tail). For
each row:

    end-to-end = head + encode (edge speed) + transfer + queue + decode + tail
    transfer   = channel round trip of the request frame up and the result frame down
    server     = decode + tail (compute the server spends on the request)
    uplink     = request bytes on the wire (bitstream + protocol frame + WebSocket header)
    energy     = see :mod:`.devices`

The Pareto front is over (end-to-end, server, uplink, energy, accuracy drop), all minimised,
among rows within the accuracy budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..codecs import codec_class
from ..runtime import protocol as P
from .channel import Channel
from .devices import DeviceProfile
from .profile import CodecOption, ModelProfile

#: objective name -> the row attribute it minimises
OBJECTIVES: dict[str, str] = {
    "latency": "end_to_end_ms",
    "server": "server_ms",
    "uplink": "uplink_bytes",
    "energy": "energy_j",
}
PARETO_KEYS = ("end_to_end_ms", "server_ms", "uplink_bytes", "energy_j", "drop_cost")
#: row kinds: whole model on the edge, raw pixels, compressed input, split + codec, a trained
#: checkpoint at its split
DEVICE, OFFLOAD, INPUT, SPLIT, TRAINED = "device", "offload", "input", "split", "trained"


def request_wire_bytes(bitstream_bytes: float, deployment: str = "default") -> int:
    """Bytes a request carrying ``bitstream_bytes`` puts on the connection."""
    frame = P.PREFIX_BYTES + 1 + len(deployment) + round(bitstream_bytes)
    return P.ws_frame_bytes(frame, masked=True)


def response_wire_bytes(frame_bytes: int) -> int:
    return P.ws_frame_bytes(frame_bytes, masked=False)


@dataclass
class PlanRow:
    """One costed way to serve a request (times in ms, per sample at batch 1)."""

    kind: str
    split: str
    codec: str
    params: dict[str, Any]
    bytes_per_sample: float  #: bitstream bytes (0 when nothing is sent)
    drop_pp: float
    head_ms: float
    encode_ms: float
    transfer_ms: float
    queue_ms: float
    decode_ms: float
    tail_ms: float
    uplink_bytes: int
    downlink_bytes: int
    energy_j: float
    head_params: int = 0
    head_flops: int = 0  #: FLOPs on the edge per sample (a multiply-add is 2)
    feasible: bool = True
    pareto: bool = False
    name: str = ""
    checkpoint: str = ""  #: the checkpoint folder of a ``trained`` row

    @property
    def end_to_end_ms(self) -> float:
        return (self.head_ms + self.encode_ms + self.transfer_ms + self.queue_ms
                + self.decode_ms + self.tail_ms)

    @property
    def server_ms(self) -> float:
        return self.decode_ms + self.tail_ms

    @property
    def drop_cost(self) -> float:
        """The drop as a cost: a calibration 'gain' (noise) counts as no drop."""
        return max(self.drop_pp, 0.0)

    @property
    def setting(self) -> str:
        """The quality knob's value (the other parameters are the codec's defaults)."""
        if self.kind == SPLIT:
            knob = codec_class(self.codec).quality_param
            return f"{knob}={self.params[knob]:g}" if knob and knob in self.params else ""
        if self.kind == INPUT:
            return f"quality={self.params.get('quality')}"
        if self.kind == TRAINED:
            return f"ckpt={Path(self.checkpoint).name}"
        return ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["end_to_end_ms"] = self.end_to_end_ms
        d["server_ms"] = self.server_ms
        return d


def _row(kind: str, split: str, opt: CodecOption | None, *, head_ms: float, tail_ms: float,
         prof: ModelProfile, channel: Channel, device: DeviceProfile, queue_ms: float,
         deployment: str, head_params: int = 0, head_flops: int = 0) -> PlanRow:
    dev = device
    if opt is None:  # all on the edge: nothing sent
        head = head_ms * dev.slowdown
        return PlanRow(kind, split, "-", {}, 0.0, 0.0, head, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0,
                       dev.compute_w * head / 1e3, head_params, head_flops)
    head = head_ms * dev.slowdown
    enc = opt.encode_ms * dev.slowdown
    up = request_wire_bytes(opt.wire_bytes, deployment)
    down = response_wire_bytes(prof.response_bytes)
    server_s = (queue_ms + opt.decode_ms + tail_ms) / 1e3
    transfer = 1e3 * channel.round_trip(up, down, (head + enc) / 1e3, server_s)
    waiting = transfer + 1e3 * server_s
    energy = (dev.compute_w * (head + enc) / 1e3 + dev.tx_j_per_byte * up
              + dev.rx_j_per_byte * down + dev.idle_w * waiting / 1e3)
    return PlanRow(kind, split, opt.codec, dict(opt.params), opt.wire_bytes, opt.drop_pp, head,
                   enc, transfer, queue_ms, opt.decode_ms, tail_ms, up, down, energy,
                   head_params, head_flops)


def build_rows(prof: ModelProfile, channel: Channel, device: DeviceProfile, *,
               max_drop: float = 0.5, queue_ms: float = 2.0,
               deployment: str = "default") -> list[PlanRow]:
    """Cost every option of ``prof`` on ``channel`` with the edge being ``device``.

    ``queue_ms``: time a lone request waits in the server's batcher (its ``max_wait_ms``).
    """
    common = dict(prof=prof, channel=channel, device=device, queue_ms=queue_ms,
                  deployment=deployment)
    total_flops = prof.cuts[0].total_flops if prof.cuts else 0
    rows = [_row(DEVICE, "(all on edge)", None, head_ms=prof.full_ms, tail_ms=0.0,
                 head_flops=total_flops, **common),
            _row(OFFLOAD, "(input)", prof.raw, head_ms=0.0, tail_ms=prof.full_ms, **common)]
    rows += [_row(INPUT, "(input)", o, head_ms=0.0, tail_ms=prof.full_ms, **common)
             for o in prof.inputs]
    for cut in prof.cuts:
        rows += [_row(SPLIT, cut.split, o, head_ms=cut.head_ms, tail_ms=cut.tail_ms,
                      head_params=cut.head_params, head_flops=cut.head_flops, **common)
                 for o in cut.options]
    for t in prof.trained:
        rows.append(_row(TRAINED, t.split, t.option, head_ms=t.edge_ms, tail_ms=t.server_ms,
                         head_params=t.edge_params, head_flops=t.edge_flops, **common))
        rows[-1].checkpoint = t.checkpoint
    for i, r in enumerate(rows):
        r.feasible = r.drop_pp <= max_drop
        r.name = f"P{i}"
    mark_pareto(rows)
    return rows


def dominates(a: PlanRow, b: PlanRow, keys: Sequence[str] = PARETO_KEYS) -> bool:
    """``a`` is no worse than ``b`` on every key and better on one."""
    va = [getattr(a, k) for k in keys]
    vb = [getattr(b, k) for k in keys]
    return all(x <= y for x, y in zip(va, vb, strict=True)) and va != vb


def plan_front(rows: Iterable[PlanRow], keys: Sequence[str] = PARETO_KEYS) -> list[PlanRow]:
    """The rows no other row dominates (ties: both kept)."""
    rows = list(rows)
    return [r for r in rows if not any(dominates(o, r, keys) for o in rows if o is not r)]


def mark_pareto(rows: list[PlanRow], keys: Sequence[str] = PARETO_KEYS) -> None:
    """Set ``pareto`` on the feasible rows of the front (infeasible rows are never on it)."""
    front = {id(r) for r in plan_front([r for r in rows if r.feasible], keys)}
    for r in rows:
        r.pareto = id(r) in front


def choose(rows: Sequence[PlanRow], objective: str = "latency", *,
           exclude: Iterable[str] = (), max_latency_ms: float | None = None) -> PlanRow:
    """The feasible row minimising ``objective`` (ties: lower latency, then lower drop).

    ``exclude``: row kinds not to choose (e.g. ``device`` to force offloading);
    ``max_latency_ms``: a deadline rows must meet.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: one of {', '.join(OBJECTIVES)}")
    key = OBJECTIVES[objective]
    skip = set(exclude)
    ok = [r for r in rows if r.feasible and r.kind not in skip
          and (max_latency_ms is None or r.end_to_end_ms <= max_latency_ms)]
    if not ok:
        raise ValueError("no plan meets the accuracy budget and constraints")
    return min(ok, key=lambda r: (getattr(r, key), r.end_to_end_ms, r.drop_pp))


COLUMNS = ("plan", "split", "codec", "setting", "B/sample", "drop pp", "head ms", "enc ms",
           "xfer ms", "dec ms", "tail ms", "e2e ms", "server ms", "uplink B", "edge mJ",
           "edge MFLOPs")


def row_cells(r: PlanRow) -> tuple[str, ...]:
    return (r.name + ("" if r.feasible else "*"), r.split, r.codec, r.setting,
            f"{r.bytes_per_sample:,.0f}",
            f"{r.drop_pp:.2f}", f"{r.head_ms:.2f}", f"{r.encode_ms:.2f}", f"{r.transfer_ms:.2f}",
            f"{r.decode_ms:.2f}", f"{r.tail_ms:.2f}", f"{r.end_to_end_ms:.2f}",
            f"{r.server_ms:.2f}", f"{r.uplink_bytes:,}", f"{1e3 * r.energy_j:.2f}",
            f"{r.head_flops / 1e6:,.1f}")


def format_table(rows: Sequence[PlanRow], markdown: bool = False) -> str:
    """A fixed-width (or markdown) table of rows."""
    cells = [COLUMNS] + [row_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join("---" for _ in COLUMNS) + "|")
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    left = {1, 2, 3}
    lines = ["  ".join(v.ljust(w) if i in left else v.rjust(w)
                       for i, (v, w) in enumerate(zip(c, widths, strict=True))).rstrip()
             for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shown_rows(rows: Sequence[PlanRow], chosen: Iterable[PlanRow] = ()) -> list[PlanRow]:
    """What the table prints: the Pareto front, the two extremes, the best input-compression
    row of each format (the smallest within budget, else the most accurate), every trained
    checkpoint and any chosen row, in row order."""
    keep = {id(r) for r in chosen}
    best_input: dict[str, PlanRow] = {}
    for r in rows:
        if r.kind != INPUT:
            continue
        cur = best_input.get(r.codec)
        rank = (not r.feasible, r.uplink_bytes if r.feasible else r.drop_pp)
        if cur is None or rank < (not cur.feasible, cur.uplink_bytes if cur.feasible
                                  else cur.drop_pp):
            best_input[r.codec] = r
    keep |= {id(r) for r in best_input.values()}
    return [r for r in rows if r.pareto or r.kind in (DEVICE, OFFLOAD, TRAINED)
            or id(r) in keep]
