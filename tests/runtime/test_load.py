"""The load generator against a real embedded server on 127.0.0.1 (ResNet-20, random weights,
a few foolbox CIFAR images): both arms answered, figures filled, lossless split agrees."""

from __future__ import annotations

import pytest

from splitcomp.data import foolbox_data_dir
from splitcomp.runtime.load import prepare, run_embedded

pytestmark = pytest.mark.skipif(foolbox_data_dir() is None, reason="foolbox images missing")


def test_load_split_and_full_offload() -> None:
    setup = prepare("resnet20", "layer2", "foolbox-cifar10", codec="fp32", weights="random",
                    limit=4)
    report = run_embedded(setup, clients=4, requests=16)
    split, full = report["split"], report["full_offload"]
    assert split["requests"] == full["requests"] == 16
    assert split["wire_bytes_per_request"] > 32 * 16 * 16 * 4  # fp32 features + framing
    assert full["wire_bytes_per_request"] > 3 * 32 * 32  # uint8 pixels + framing
    assert split["server_compute_us_per_request"] > 0
    assert report["server_light_ratio"] > 0
    assert 1 <= split["batch_size_mean"] <= 4
    assert report["agreement_with_local"] == 100.0  # lossless codec: same predictions
    assert split["p99_ms"] >= split["p50_ms"] > 0
