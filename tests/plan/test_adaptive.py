"""Rate control on the real runtime: after a bandwidth drop the client sends a smaller setting,
and every answer is the server's tail on what was sent."""

from __future__ import annotations

import asyncio

import torch

from splitcomp import codecs
from splitcomp.plan.adaptive import AdaptiveClient, PacedLink, Sent
from splitcomp.plan.channel import BandwidthTrace, Channel, Pacer
from splitcomp.plan.rate_control import FixedPolicy, RateController, Setting
from splitcomp.runtime import AsyncSplitClient, Server, zoo_deployment

DROP_AT, END, PERIOD = 2.0, 5.0, 0.2
LADDER = {"fp16": codecs.get("fp16"), "int8": codecs.get("int8"),
          "rans bits=2": codecs.get("rans", bits=2)}
ACCURACY = {"fp16": 3.0, "int8": 2.0, "rans bits=2": 1.0}


async def _run(dep, head, settings: list[Setting], inputs: list[torch.Tensor]
               ) -> tuple[list[Sent], RateController]:
    # 10 Mbit/s, then 0.2 Mbit/s: fp16 takes 1.3 s there, rans bits=2 about 0.12 s
    trace = BandwidthTrace((0.0, DROP_AT, DROP_AT + 1e-3, END), (10e6, 10e6, 0.2e6, 0.2e6))
    channel = Channel(rtt_s=0.02, trace=trace)
    controller = RateController(settings, 0.2, channel.rtt_s, initial_bps=10e6,
                                start=len(settings) - 1)
    server = Server(dep, "127.0.0.1", 0, ping_interval=None)
    await server.start()
    try:
        async with AsyncSplitClient(server.url, None, "fp32", dep.name,
                                    head_in_thread=False) as client:
            await client.connect()
            adaptive = AdaptiveClient(client, head, controller, LADDER,
                                      PacedLink(Pacer(channel)), keep_bitstreams=True)
            arrivals = [PERIOD * i for i in range(round(END / PERIOD))]
            sent = await adaptive.run(inputs, arrivals)
    finally:
        await server.stop()
    return sent, controller


def test_adaptive_client_steps_down_after_a_drop_and_answers_right():
    torch.manual_seed(0)
    dep, head = zoo_deployment("resnet20", "layer1", weights="random",
                               codecs=["fp16", "int8", "rans"])
    n = round(END / PERIOD)
    inputs = [torch.randn(1, 3, 32, 32) for _ in range(n)]
    with torch.inference_mode():
        feats = head(inputs[0])
    feats = (feats,) if isinstance(feats, torch.Tensor) else feats
    settings = [Setting(name, len(c.encode(list(feats))), ACCURACY[name])
                for name, c in LADDER.items()]
    with torch.inference_mode():
        sent, controller = asyncio.run(_run(dep, head, settings, inputs))

    assert [s.error for s in sent] == [None] * n
    names = [s.name for s in sent]
    assert names[0] == "fp16"  # starts at the top, as asked
    after = [s for s in sent if s.t >= DROP_AT + 1.0]
    assert len(after) >= 5 and {s.name for s in after} == {"rans bits=2"}, names
    assert controller.switches >= 1
    assert all(s.latency_s > 0 and s.nbytes == len(s.bitstream) for s in sent)

    with torch.inference_mode():
        for x, s in zip(inputs, sent, strict=True):
            assert s.outputs is not None
            expected = dep.tail(*codecs.decode(s.bitstream))
            torch.testing.assert_close(s.outputs[0], expected, rtol=1e-4, atol=1e-4)
            if s.name == "fp16":  # within the codec's error of the unsplit model
                out = head(x)
                exact = dep.tail(*((out,) if isinstance(out, torch.Tensor) else out))
                torch.testing.assert_close(s.outputs[0], exact, rtol=1e-2, atol=1e-2)


def test_a_gate_picks_the_setting_per_input_on_the_real_server():
    """With ``gate``, each request's setting comes from its own features: a gate on the
    feature mean sends bright inputs one way and dark ones the other."""
    torch.manual_seed(0)
    dep, head = zoo_deployment("resnet20", "layer1", weights="random",
                               codecs=["fp16", "int8", "rans"])

    inputs = [torch.randn(1, 3, 32, 32) + (1.5 if i % 2 else -1.5) for i in range(6)]
    with torch.inference_mode():
        means = [float(head(x)[0].mean()) for x in inputs]
    cut = sorted(means)[2]

    class MeanGate(torch.nn.Module):
        def forward(self, f: torch.Tensor) -> torch.Tensor:
            return (f.mean((1, 2, 3)) > cut).long() * 2  # 0: fp16, 2: rans bits=2

    want = [2 if m > cut else 0 for m in means]
    settings = [Setting(name, 1, ACCURACY[name]) for name in LADDER]

    async def run() -> list[Sent]:
        server = Server(dep, "127.0.0.1", 0, ping_interval=None)
        await server.start()
        try:
            async with AsyncSplitClient(server.url, None, "fp32", dep.name,
                                        head_in_thread=False) as client:
                channel = Channel(rtt_s=0.001)
                adaptive = AdaptiveClient(
                    client, head, FixedPolicy(settings, 0), LADDER, PacedLink(Pacer(channel)),
                    gate=MeanGate())
                return await adaptive.run(inputs, [0.01 * i for i in range(len(inputs))])
        finally:
            await server.stop()

    with torch.inference_mode():
        sent = asyncio.run(run())
    assert [s.error for s in sent] == [None] * len(inputs)
    assert [s.setting for s in sent] == want and len(set(want)) == 2
