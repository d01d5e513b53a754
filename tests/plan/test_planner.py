"""Costing, Pareto front and choice on a synthetic profile; the plan file round trip."""

from __future__ import annotations

import pytest

from splitcomp.plan import (
    Channel,
    CodecOption,
    CutProfile,
    ModelProfile,
    PlanRow,
    TrainedProfile,
    build_rows,
    choose,
    format_table,
    get_device,
    load_plan,
    plan_from_row,
    plan_front,
    save_plan,
)
from splitcomp.plan.devices import DeviceProfile, available_devices
from splitcomp.plan.planner import request_wire_bytes, shown_rows


def synthetic_profile() -> ModelProfile:
    """A 10 ms model: an early cut with big features, a later one with a cheap head and small
    features (a bottleneck)."""
    early = CutProfile("early", 3, 1.0, 9.0, 100, 10, 100, 40_000, [
        CodecOption("fp16", {}, 20_000, 0.0, 0.2, 0.1),
        CodecOption("slicer", {"quality": 0.5}, 2_000, 0.3, 1.0, 0.5),
        CodecOption("slicer", {"quality": 0.2}, 1_000, 2.0, 1.0, 0.5),  # over budget
    ])
    late = CutProfile("late", 9, 2.0, 8.0, 900, 80, 100, 4_000, [
        CodecOption("fp16", {}, 2_000, 0.0, 0.1, 0.05),
        CodecOption("slicer", {"quality": 0.5}, 300, 0.2, 0.2, 0.3),
    ])
    return ModelProfile("toy", (3, 32, 32), 200, 90.0, 10.0,
                        CodecOption("raw", {"dtype": "uint8"}, 3_100, 0.0, 0.01, 0.01), 80,
                        cuts=[early, late],
                        inputs=[CodecOption("jpeg", {"quality": 90}, 3_000, 0.4, 0.3, 0.2)])


def row(name: str, **kw) -> PlanRow:
    base = dict(kind="split", split="s", codec="fp16", params={}, bytes_per_sample=0.0,
                drop_pp=0.0, head_ms=0.0, encode_ms=0.0, transfer_ms=0.0, queue_ms=0.0,
                decode_ms=0.0, tail_ms=0.0, uplink_bytes=0, downlink_bytes=0, energy_j=0.0,
                name=name)
    return PlanRow(**{**base, **kw})


def test_plan_front_on_synthetic_rows() -> None:
    a = row("a", head_ms=10, uplink_bytes=100, energy_j=1.0)
    b = row("b", head_ms=20, uplink_bytes=50, energy_j=1.0)  # slower but fewer bytes
    c = row("c", head_ms=25, uplink_bytes=100, energy_j=2.0)  # dominated by a
    d = row("d", head_ms=10, uplink_bytes=100, energy_j=1.0)  # ties a: both kept
    e = row("e", head_ms=5, uplink_bytes=10, energy_j=0.5, drop_pp=-1.0)  # dominates all
    assert {r.name for r in plan_front([a, b, c, d])} == {"a", "b", "d"}
    assert {r.name for r in plan_front([a, b, c, d, e])} == {"e"}
    f = row("f", head_ms=5, uplink_bytes=10, energy_j=0.5, drop_pp=-3.0)
    assert {r.name for r in plan_front([e, f])} == {"e", "f"}  # gains count as no drop


def test_rows_cost_model() -> None:
    prof = synthetic_profile()
    ch = Channel(1e6, 0.02)
    dev = DeviceProfile("x", 4.0, 2.0, 1e-6, 5e-7, 0.1)
    rows = build_rows(prof, ch, dev, max_drop=0.5, queue_ms=2.0, deployment="toy")
    kinds = [r.kind for r in rows]
    assert kinds[:3] == ["device", "offload", "input"] and len(rows) == 3 + 5
    local = rows[0]
    assert local.end_to_end_ms == pytest.approx(40.0) and local.uplink_bytes == 0
    assert local.server_ms == 0 and local.energy_j == pytest.approx(2.0 * 0.04)
    r = next(r for r in rows if r.split == "late" and r.codec == "slicer")
    up = request_wire_bytes(300, "toy")
    assert up == 300 + 12 + 1 + 3 + 2 + 2 + 4  # frame, WebSocket header, mask
    down = 80 + 2
    assert r.uplink_bytes == up and r.downlink_bytes == down
    assert r.head_ms == pytest.approx(8.0) and r.encode_ms == pytest.approx(0.8)
    assert r.transfer_ms == pytest.approx(1e3 * ch.round_trip(up, down))
    assert r.end_to_end_ms == pytest.approx(8 + 0.8 + r.transfer_ms + 2 + 0.3 + 8.0)
    assert r.server_ms == pytest.approx(8.3)
    energy = 2.0 * 0.0088 + 1e-6 * up + 5e-7 * down + 0.1 * (r.transfer_ms + 10.3) / 1e3
    assert r.energy_j == pytest.approx(energy)
    over = next(r for r in rows if r.params.get("quality") == 0.2)
    assert not over.feasible and not over.pareto


def test_choice_per_objective() -> None:
    prof = synthetic_profile()
    slow = Channel(1e6, 0.02)
    phone = get_device("phone")
    rows = build_rows(prof, slow, phone, max_drop=0.5)
    by = {o: choose(rows, o) for o in ("latency", "server", "uplink", "energy")}
    # on a 1 Mbit/s link the 300-byte bottleneck beats sending anything bigger
    assert (by["latency"].split, by["latency"].codec) == ("late", "slicer")
    assert by["server"].kind == by["uplink"].kind == "device"  # no server work, no bytes
    offload = choose(rows, "server", exclude=("device",))
    assert offload.server_ms == min(r.server_ms for r in rows if r.kind != "device"
                                    and r.feasible)
    # on a very fast link and a very slow edge, sending the raw input wins latency
    fast = build_rows(prof, Channel(1e9, 0.001), get_device("mcu"), max_drop=0.5)
    assert choose(fast, "latency").kind == "offload"
    # with the edge as fast as the server and a slow link, running locally wins
    local = build_rows(prof, Channel(1e5, 0.1), get_device("server"), max_drop=0.5)
    assert choose(local, "latency").kind == "device"
    with pytest.raises(ValueError):
        choose(rows, "latency", max_latency_ms=0.001)
    with pytest.raises(ValueError):
        choose(rows, "speed")


def test_table_shows_front_and_extremes() -> None:
    rows = build_rows(synthetic_profile(), Channel(1e6, 0.02), get_device("phone"))
    shown = shown_rows(rows)
    assert {"device", "offload", "input"} <= {r.kind for r in shown}
    assert all(r.pareto or r.kind != "split" for r in shown)
    text = format_table(shown)
    assert "e2e ms" in text and "(all on edge)" in text
    assert format_table(shown, markdown=True).startswith("| plan |")


def test_device_registry() -> None:
    assert {"server", "laptop", "phone", "mcu"} <= set(available_devices())
    assert get_device("phone", 2.0).slowdown == 2 * get_device("phone").slowdown
    with pytest.raises(KeyError):
        get_device("toaster")


def test_plan_file_round_trip(tmp_path) -> None:
    rows = build_rows(synthetic_profile(), Channel(1e6, 0.02, loss=0.01), get_device("phone"))
    best = choose(rows, "latency")
    plan = plan_from_row(best, model="toy", channel=Channel(1e6, 0.02, loss=0.01),
                         device=get_device("phone").to_json(), objective="latency",
                         max_drop=0.5, alternatives=[r for r in rows if r.pareto])
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    back = load_plan(path)
    assert back == plan
    assert back.kind == "split" and back.split == "late" and back.codec == "slicer"
    assert back.predicted_ms == pytest.approx(best.end_to_end_ms)
    assert back.channel_model() == Channel(1e6, 0.02, loss=0.01)
    assert back.make_codec().params["quality"] == 0.5
    assert all(a["end_to_end_ms"] >= back.predicted_ms - 1e-9 for a in back.alternatives)
    path.write_text(path.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(ValueError):
        load_plan(path)


def test_a_trained_checkpoint_is_one_more_candidate(tmp_path) -> None:
    prof = synthetic_profile()
    opt = CodecOption("bottleneck", {"channels": 8, "stride": 2, "beta": 1.0}, 120, 0.1, 0.3,
                      0.2)
    prof.trained = [TrainedProfile("/ck/run1", "late", 2.5, 8.6, 1_000, 90, opt, 5_000)]
    assert ModelProfile.from_json(prof.to_json()) == prof
    dev = DeviceProfile("x", 4.0, 2.0, 1e-6, 5e-7, 0.1)
    rows = build_rows(prof, Channel(1e6, 0.02), dev, deployment="toy")
    (t,) = [r for r in rows if r.kind == "trained"]
    assert (t.split, t.codec, t.setting, t.checkpoint) == ("late", "bottleneck", "ckpt=run1",
                                                         "/ck/run1")
    assert t.head_ms == pytest.approx(4 * 2.5) and t.encode_ms == pytest.approx(4 * 0.3)
    assert t.server_ms == pytest.approx(0.2 + 8.6) and t.uplink_bytes == request_wire_bytes(
        120, "toy")
    assert t in shown_rows(rows) and "ckpt=run1" in format_table(shown_rows(rows))
    best = choose(rows, "uplink", exclude=("device",))
    assert best is t
    plan = plan_from_row(best, model="toy", channel=Channel(1e6, 0.02), device=dev.to_json(),
                         objective="uplink", max_drop=0.5, alternatives=rows)
    save_plan(plan, tmp_path / "plan.json")
    back = load_plan(tmp_path / "plan.json")
    assert (back.kind, back.split, back.checkpoint, back.deployment) == (
        "trained", "late", "/ck/run1", None)
    with pytest.raises(ValueError):
        back.make_codec()
