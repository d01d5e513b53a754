"""The planner's predicted end-to-end latency against the real runtime on loopback.

A plan is profiled and chosen for ResNet-20 (random weights, random images: accuracy is not
the point) cut after layer2 and sent as fp16 over a 2 Mbit/s, 20 ms RTT channel, so the
transfer (about 85 ms) dominates compute. A real :class:`~splitcomp.runtime.Server` serves the
tail on 127.0.0.1; the client runs the head, encodes, paces its bytes with the channel model,
sends and waits for the answer. The prediction must be within 25 % of the measured median.
"""

from __future__ import annotations

import pytest
import torch

from splitcomp.data.transforms import CIFAR_EVAL
from splitcomp.partition import split
from splitcomp.plan import Channel, Profiler, build_rows, choose, get_device, load_plan
from splitcomp.plan.planfile import plan_from_row, save_plan
from splitcomp.plan.validate import measure_split
from splitcomp.zoo import create_model

pytestmark = pytest.mark.timeout(120)


def test_predicted_latency_matches_loopback(tmp_path, single_thread) -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", weights=None).eval()
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    prof = Profiler(model, "resnet20", images, torch.zeros(16, dtype=torch.int64), CIFAR_EVAL,
                    codec_names=("fp16",), input_formats=(), repeats=10)
    prof.labels = prof.classify(images)  # labels = the model's own answers
    profile = prof.profile(["layer2"])
    channel = Channel.parse("2Mbit", "20ms")
    rows = build_rows(profile, channel, get_device("server"), max_drop=0.5, queue_ms=2.0,
                      deployment="plan")
    best = choose(rows, "latency", exclude=("device", "offload", "input"))
    assert (best.split, best.codec) == ("layer2", "fp16")
    assert best.transfer_ms > 3 * (best.end_to_end_ms - best.transfer_ms)  # pacing dominates
    path = tmp_path / "plan.json"
    save_plan(plan_from_row(best, model="resnet20", channel=channel, device={},
                            objective="latency", max_drop=0.5), path)
    plan = load_plan(path)

    head, tail = split(model, plan.split, (torch.zeros(1, 3, 32, 32),))
    inputs = [CIFAR_EVAL.normalize(images[i : i + 1]) for i in range(11)]
    measured = measure_split(head, tail, plan.make_codec(), plan.channel_model(), inputs,
                             warmup=2, max_wait_ms=2.0)
    assert measured.uplink_bytes == round(best.bytes_per_sample)
    predicted, actual = plan.predicted_ms, measured.median_ms
    print(f"predicted {predicted:.1f} ms, measured median {actual:.1f} ms "
          f"over {len(measured.end_to_end_s)} requests")
    assert abs(predicted - actual) <= 0.25 * actual
