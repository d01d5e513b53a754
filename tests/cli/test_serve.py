"""``splitcomp serve``: arguments to a server, and a real server process stopped by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from splitcomp.cli import serve
from splitcomp.cli.serve import build_server, read_listening_url
from splitcomp.runtime import SplitClient, fetch_metrics, parse_prometheus
from splitcomp.runtime.stats import total

from .commands import parse_args

pytestmark = pytest.mark.timeout(60)


def test_arguments_build_deployments() -> None:
    server = build_server(parse_args(serve, [
        "--model", "resnet20", "--split", "layer2", "--weights", "random", "--codec",
        "fp32,slicer", "--port", "0", "--deploy", "deep=resnet20:layer3", "--max-batch-size",
        "4"]))
    assert sorted(server.deployments) == ["deep", "resnet20"]
    dep = server.deployments["resnet20"]
    assert dep.codecs == {"fp32", "slicer"} and dep.max_batch_size == 4
    assert server.deployments["deep"].codecs is None
    for bad in (["--model", "resnet20"], [], ["--deploy", "x=resnet20"],
                ["--model", "resnet20", "--split", "layer2", "--tls-cert", "c.pem"]):
        with pytest.raises(SystemExit):
            build_server(parse_args(serve, bad))


def test_limit_and_metrics_flags(tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("edge edge-token-0123456789\n")
    base = ["--model", "resnet20", "--split", "layer2", "--weights", "random", "--port", "0",
            "--tokens", str(tokens)]
    server = build_server(parse_args(serve, base))
    assert not server.metrics_public  # with tokens, /metrics takes one by default
    assert server.admission.inflight.max_bytes == 64 << 20
    server = build_server(parse_args(serve, [
        *base, "--metrics-public", "--max-inflight-per-client", "8",
        "--max-inflight-bytes-per-client", "1000000", "--max-batch-bytes", "65536",
        "--fair-grace-ms", "0", "--output-pause-bytes", "4096", "--max-output-bytes", "8192"]))
    assert server.metrics_public
    assert (server.admission.inflight.max_requests,
            server.admission.inflight.max_bytes) == (8, 1_000_000)
    assert (server.scheduler.max_batch_bytes, server.scheduler.fair_grace_s) == (65536, 0.0)
    assert (server.output_pause_bytes, server.max_output_bytes) == (4096, 8192)
    with pytest.raises(ValueError):
        build_server(parse_args(serve, [*base, "--output-pause-bytes", "9000",
                                        "--max-output-bytes", "8192"]))


def test_serve_process_answers_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitcomp.cli.serve", "--model", "resnet20", "--split",
         "layer2", "--weights", "random", "--port", "0", "--threads", "1",
         "--deployment", "r20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = read_listening_url(proc.stdout, max_lines=20)
        assert url, proc.stderr.read() if proc.poll() is not None else "no 'listening' line"
        with SplitClient(url, None, "fp32", "r20", timeout_s=20) as client:
            assert client.infer(torch.randn(2, 32, 16, 16)).shape == (2, 10)
        assert total(parse_prometheus(fetch_metrics(url)), "splitcomp_results_total") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_device_flag(capsys) -> None:
    """``--device auto`` serves on the CPU where CUDA is missing (the same deployment as
    ``cpu``); ``--device cuda`` there is one line and exit 2, before any model loads."""
    base = ["--model", "resnet20", "--split", "layer2", "--weights", "random", "--port", "0"]
    want = "cuda" if torch.cuda.is_available() else "cpu"
    server = build_server(parse_args(serve, [*base, "--device", "auto"]))
    assert server.deployments["resnet20"].device.type == want
    assert build_server(parse_args(serve, base)).deployments["resnet20"].device.type == "cpu"
    if torch.cuda.is_available():
        return
    from splitcomp.cli import main

    assert main(["serve", *base, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err and "Traceback" not in err
