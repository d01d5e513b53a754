"""Trained bottleneck checkpoints served as deployments (``splitcomp serve --checkpoint``).

A checkpoint (``splitcomp.train``) is opened beside the frozen model it was trained around;
the ``bottleneck`` codec's tables (``tables.sbnt``) and the compact-stream template of a
batch of one latent are registered in this process, so the server decodes the 9-byte-header
streams an edge sends with ``compact=True``. Each deployment runs one tail's decoder and
frozen tail (:meth:`~splitcomp.train.Checkpoint.server_model`); the tails of a multi-tail
(``--also``) checkpoint all take the same bitstream, and one deployment can run several of
them on one decoded latent (a tail group ``A+B``: one request, one decode, one answer with
every named tail's output, in order). The edge runs the returned
:class:`~splitcomp.train.EdgeModel` (tuned head + encoder) and the returned codec.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..codecs import Codec
from ..codecs.compact import register_template
from ..codecs.container import template
from ..train import EdgeModel, Trained, open_checkpoints
from ..train.ckpt_eval import checkpoint_codec
from .deployment import Deployment, InputSpec


def tail_names(trained: Trained) -> list[str]:
    """The tails a checkpoint can serve: its model's first, then its extra tails'."""
    return [trained.ckpt.model, *(t.model for t in trained.ckpt.tails)]


class JointTails(torch.nn.Module):
    """Several tails' server models on one latent: decoded once, each decoder and tail run,
    their outputs returned in order (a tuple: the answer's tensors)."""

    def __init__(self, servers: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.servers = torch.nn.ModuleList(servers)

    def forward(self, y_hat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(s(y_hat) for s in self.servers)


def _server_model(trained: Trained, tail: str | None) -> torch.nn.Module:
    ckpt = trained.ckpt
    if tail is not None and "+" in tail:
        names = tail.split("+")
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"tail group {tail!r}: name each tail once")
        return JointTails([_server_model(trained, t) for t in names]).eval()
    if tail is None or tail == ckpt.model:
        return ckpt.server_model(trained.tail)
    for t in ckpt.extra_teachers():
        if t.name == tail:
            return ckpt.server_model(t.tail, t.name)
    raise ValueError(f"{trained.folder}: no tail {tail!r} (has {', '.join(tail_names(trained))})")


def checkpoint_deployments(ckpt_dir: str | Path, tails: Sequence[str | None] | str = (None,),
                           name: str | None = None, weights: str | None = None,
                           **options: Any) -> tuple[list[Deployment], EdgeModel, Codec]:
    """(one deployment per tail of ``tails``, the edge model, the edge's codec).

    ``tails``: tail names (None: the primary model's; ``A+B``: a group run together on one
    decoded latent) or ``"all"``. Deployments are named ``name`` (default: the checkpoint
    folder's name) for one entry, ``NAME.MODEL`` (``NAME.A+B``) for several.
    ``weights``: the teacher's weights where the checkpoint's are elsewhere. ``options`` go to
    :class:`Deployment`; it accepts the ``bottleneck`` codec and the latent's shape only.
    """
    model, (trained,) = open_checkpoints([ckpt_dir], weights)
    names = tail_names(trained) if tails == "all" else list(tails)
    codec, _ = checkpoint_codec(trained.ckpt)
    edge = trained.ckpt.edge_model()
    with torch.inference_mode():
        latent = edge(torch.zeros(1, *model.default_cfg.input_size))
    register_template(template(codec, latent.shape, latent.dtype))
    spec = InputSpec(latent.dtype, tuple(latent.shape[1:]), latent.dim())
    base = name or trained.name
    deployments = [
        Deployment(base if len(names) == 1 else f"{base}.{t or trained.ckpt.model}",
                   _server_model(trained, t), codecs=["bottleneck"], input_specs=[spec],
                   **options)
        for t in names]
    return deployments, edge, codec


def checkpoint_deployment(ckpt_dir: str | Path, tail: str | None = None,
                          name: str | None = None, **options: Any
                          ) -> tuple[Deployment, EdgeModel, Codec]:
    """One tail of a checkpoint (None: the primary) as a deployment, with the edge model and
    codec (:func:`checkpoint_deployments`)."""
    (dep,), edge, codec = checkpoint_deployments(ckpt_dir, (tail,), name, **options)
    return dep, edge, codec
