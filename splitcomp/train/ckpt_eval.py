"""Evaluating a trained bottleneck on the eval part of its split, through the real codec.

Every eval image is run through the checkpoint's edge model (tuned head, encoder), its latent
encoded as its own compact ``bottleneck`` bitstream (header and CRC included in the byte count;
the self-describing size is reported too),
decoded with :func:`splitcomp.codecs.decode` and run through the decoder and the frozen tail.
The baseline is the unsplit teacher (head, tail) on the same images. A checkpoint with extra
tails (:mod:`.tails`) is scored for each tail too, on the same decoded latent (the bytes are
counted once: one bitstream serves all tails). The codec's tables are
the checkpoint's own (``tables.sbnt``), registered and passed to the decoder explicitly, so
the figures do not depend on what a training run left in the process.

Over a link with bit errors (:func:`evaluate_over_channel`, ``eval --checkpoint --ber``):
each image's stream (plain, or ``resilient`` with ``slices``) goes through the bit-flipping
channel (seeded per image); a stream the decoder rejects is a lost request, scored wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import codecs
from ..codecs.bottleneck import BottleneckTables, register_tables
from ..codecs.channel_errors import sample_rng, transmit
from ..data import ImageFolderDataset
from ..partition.costs import FLOPS_NOTE, count_flops
from .checkpoint import Checkpoint
from .entropy_model import EntropyBottleneck
from .splits import eval_part
from .tails import Teacher


def model_tables(entropy: EntropyBottleneck) -> BottleneckTables:
    """The ``bottleneck`` codec's tables of a trained entropy model."""
    return BottleneckTables.from_model_tables(*entropy.frequency_tables())


def checkpoint_tables(ckpt: Checkpoint) -> BottleneckTables:
    """The checkpoint's saved tables (what a deployment ships), else its entropy model's."""
    return (BottleneckTables.from_bytes(ckpt.tables) if ckpt.tables
            else model_tables(ckpt.bottleneck.entropy))


def checkpoint_codec(ckpt: Checkpoint) -> tuple[codecs.Codec, dict[int, BottleneckTables]]:
    """The ``bottleneck`` codec with the checkpoint's tables registered, and the decode
    contexts that name them (``codecs.decode(data, contexts=...)``)."""
    tables = checkpoint_tables(ckpt)
    tid = register_tables(tables)
    return codecs.get("bottleneck", tables=tid), {tid: tables}


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def evaluate_checkpoint(ckpt: Checkpoint, head: nn.Module, tail: nn.Module,
                        eval_ds: ImageFolderDataset, batch_size: int = 128, *,
                        limit: int | None = None, device: str = "cpu",
                        progress: Callable[[int], None] | None = None,
                        extra: Sequence[Teacher] | None = None) -> dict[str, Any]:
    """Top-1 of the teacher (``head`` + ``tail``, the original halves at ``ckpt.cut``) and of
    the checkpoint through the codec, on the eval part of ``eval_ds`` under the checkpoint's
    split (:func:`~.splits.eval_part`: :class:`~.splits.TrainedOnError` if ``eval_ds`` holds
    train-part images). ``limit``: that many eval images, spread evenly. ``progress`` gets
    the number of images of each batch done. ``extra``: the teachers of the checkpoint's
    extra tails (default: rebuilt from its records). Returns the JSON figures; ``tails``
    holds each tail's top-1, the primary's first."""
    held = eval_part(eval_ds, ckpt.split)
    if limit is not None and limit < len(held):
        held = held.subset(limit)
    codec, contexts = checkpoint_codec(ckpt)
    (tid,) = contexts
    dev = torch.device(device)
    ckpt.student.head.to(dev), ckpt.bottleneck.to(dev)  # the entropy model too
    teachers = [Teacher(ckpt.model, head, tail), *(
        ckpt.extra_teachers() if extra is None else extra)]
    for t in teachers:
        t.head.eval().to(dev), t.tail.eval().to(dev)
    edge = ckpt.edge_model()
    servers = [ckpt.server_model(t.tail, t.name) for t in teachers]
    base_oks, oks = [0] * len(teachers), [0] * len(teachers)
    n = agree = wire = wire_full = 0
    est_bits = 0.0
    elements = 0
    for x, y in held.batches(batch_size):
        x, y = x.to(dev), y.to(dev)
        latent = edge(x)
        _, lik = ckpt.bottleneck.entropy(latent, training=False)
        est_bits += float(EntropyBottleneck.bits(lik))
        y_hats = []
        for z in latent.cpu().split(1):
            data = codec.encode(z, compact=True)  # the header agreed per deployment
            wire += len(data)
            wire_full += len(codec.encode(z))
            (y_hat,) = codecs.decode(data, contexts=contexts)
            y_hats.append(y_hat)
        y_hat = torch.cat(y_hats).to(dev)
        for k, (t, server) in enumerate(zip(teachers, servers, strict=True)):
            (feat,) = t.head(x)
            t_logits, s_logits = t.tail(feat), server(y_hat)
            base_oks[k] += int((t_logits.argmax(-1) == y).sum())
            oks[k] += int((s_logits.argmax(-1) == y).sum())
            if k == 0:
                elements = feat[0].numel()
                agree += int((s_logits.argmax(-1) == t_logits.argmax(-1)).sum())
        n += x.shape[0]
        if progress is not None:
            progress(x.shape[0])
    if n == 0:
        raise ValueError("evaluate_checkpoint: the eval part is empty")
    one = held[0][0].unsqueeze(0).to(dev)
    (crossing,) = head(one)
    enc, dec = ckpt.bottleneck.encoder, ckpt.bottleneck.decoder
    latent_shape = list(edge(one).shape[1:])
    tails = {t.name: {"top1_baseline": 100.0 * b / n, "top1": 100.0 * o / n,
                      "drop_pp": 100.0 * b / n - 100.0 * o / n}
             for t, b, o in zip(teachers, base_oks, oks, strict=True)}
    return {
        "model": ckpt.model, "split": ckpt.cut, "codec": "bottleneck",
        "n_train": ckpt.split.n_train - ckpt.split.reserved, "reserved": ckpt.split.reserved,
        "n_eval": n, **tails[ckpt.model],
        "bytes_per_sample": wire / n, "bits_per_element": 8.0 * wire / (n * elements),
        "bytes_per_sample_full_header": wire_full / n,
        "header_note": "bytes_per_sample: compact streams (9 bytes of header and CRC a sample, "
                       "the template agreed once per deployment, docs/bitstream.md); "
                       "bytes_per_sample_full_header: self-describing streams",
        "encoder_params": _params(enc),
        "encoder_mflops": count_flops(enc, crossing) / 1e6,
        "head_mflops": count_flops(head, one) / 1e6,
        "train_seconds": float(ckpt.info.get("train_seconds", 0.0)),
        "weights": ckpt.weights, "tables_id": tid, "channels": ckpt.bottleneck.channels,
        "stride": ckpt.bottleneck.stride, "beta": ckpt.config.beta,
        "tuned_blocks": ckpt.student.tuned_blocks,
        "tuned_tail_blocks": ckpt.student.tuned_tail_blocks, "latent_shape": latent_shape,
        "cut_elements": elements, "agreement_pct": 100.0 * agree / n,
        "estimated_bytes_per_sample": est_bits / 8 / n,
        "decoder_params": _params(dec), "decoder_mflops": count_flops(dec, edge(one)) / 1e6,
        "steps": ckpt.step, "tails": tails,
        "n_eval_note": f"one image of {n} is {100.0 / n:.3f} pp of top-1",
        "flops_note": FLOPS_NOTE + ", as in `splitcomp candidates`; the edge runs the head "
                      "(its tuned copy) plus the encoder",
    }


@dataclass
class Latents:
    """The edge's latents of some eval images (CPU, one row an image), their labels and
    whether the teacher (the unsplit model) got each one right."""

    latents: torch.Tensor
    labels: torch.Tensor
    teacher_ok: torch.Tensor


@torch.no_grad()
def checkpoint_latents(ckpt: Checkpoint, head: nn.Module, tail: nn.Module,
                       eval_ds: ImageFolderDataset, batch_size: int = 128, *,
                       limit: int | None = None, device: str = "cpu",
                       progress: Callable[[int], None] | None = None) -> Latents:
    """The latents of the eval part of ``eval_ds`` (``limit``: that many, spread evenly), as
    :func:`evaluate_checkpoint` picks the images: computed once, sent many times."""
    held = eval_part(eval_ds, ckpt.split)
    if limit is not None and limit < len(held):
        held = held.subset(limit)
    dev = torch.device(device)
    ckpt.student.head.to(dev), ckpt.bottleneck.to(dev)
    head.eval().to(dev), tail.eval().to(dev)
    edge = ckpt.edge_model()
    lat, labels, ok = [], [], []
    for x, y in held.batches(batch_size):
        x, y = x.to(dev), y.to(dev)
        lat.append(edge(x).cpu())
        (feat,) = head(x)
        ok.append((tail(feat).argmax(-1) == y).cpu())
        labels.append(y.cpu())
        if progress is not None:
            progress(x.shape[0])
    if not lat:
        raise ValueError("checkpoint_latents: the eval part is empty")
    return Latents(torch.cat(lat), torch.cat(labels), torch.cat(ok))


@torch.no_grad()
def channel_eval(ckpt: Checkpoint, tail: nn.Module, lat: Latents, ber: float, *,
                 slices: int | None = None, slice_axis: int = 2, seed: int = 0,
                 batch_size: int = 128, device: str = "cpu") -> dict[str, Any]:
    """Top-1 of the checkpoint when each image's compact stream crosses a link flipping bits
    at ``ber`` (``slices``: the ``resilient`` codec around ``bottleneck``, its failed slices
    concealed with the channel medians; None: the plain stream). A stream the decoder
    rejects is a lost request, scored wrong. ``top1_clean`` is the same streams without
    errors, ``ber_drop_pp`` what the errors cost."""
    codec, contexts = checkpoint_codec(ckpt)
    if slices is not None:
        codec = codecs.get("resilient", inner="bottleneck", slices=slices,
                           slice_axis=slice_axis, tables=codec.params["tables"])
    dev = torch.device(device)
    server = ckpt.server_model(tail).to(dev)
    n = lat.latents.shape[0]
    received, clean = [], []
    lost = torch.zeros(n, dtype=torch.bool)
    wire = concealed = hit = 0
    for i in range(n):
        z = lat.latents[i : i + 1]
        d = transmit(codec, z, ber, sample_rng(seed, i), compact=True, contexts=contexts)
        wire += len(d.sent)
        hit += d.flipped
        concealed += d.concealed
        ref = (codecs.decode(d.sent, contexts=contexts) if d.flipped or d.lost
               else d.tensors)[0]
        clean.append(ref)
        lost[i] = d.lost
        received.append(ref if d.tensors is None else d.tensors[0])
    oks = []
    for batch in (torch.cat(received), torch.cat(clean)):
        hits = [server(batch[s : s + batch_size].to(dev)).argmax(-1).cpu()
                == lat.labels[s : s + batch_size] for s in range(0, n, batch_size)]
        oks.append(torch.cat(hits))
    ok = oks[0] & ~lost
    top1, top1_clean = 100.0 * float(ok.float().mean()), 100.0 * float(oks[1].float().mean())
    base = 100.0 * float(lat.teacher_ok.float().mean())
    return {
        "model": ckpt.model, "split": ckpt.cut, "ber": ber, "seed": seed,
        "codec": codec.name, "resilient": slices is not None, "slices": slices,
        "slice_axis": slice_axis if slices is not None else None, "n_eval": n,
        "top1_baseline": base, "top1": top1, "drop_pp": base - top1,
        "top1_clean": top1_clean, "ber_drop_pp": top1_clean - top1,
        "requests_lost": int(lost.sum()), "requests_lost_pct": 100.0 * float(lost.sum()) / n,
        "concealed_slices": concealed, "streams_hit": hit, "bytes_per_sample": wire / n,
        "channel_note": "each image's compact stream through a binary symmetric channel at "
                        "`ber` (seeded per image); a rejected stream is a lost request, "
                        "scored wrong; top1_baseline: the unsplit teacher",
    }


def evaluate_over_channel(ckpt: Checkpoint, head: nn.Module, tail: nn.Module,
                          eval_ds: ImageFolderDataset, ber: float, *,
                          slices: int | None = None, slice_axis: int = 2, seed: int = 0,
                          batch_size: int = 128, limit: int | None = None,
                          device: str = "cpu",
                          progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """:func:`channel_eval` on the eval part of ``eval_ds`` (as :func:`evaluate_checkpoint`
    picks the images, trained-on images refused)."""
    lat = checkpoint_latents(ckpt, head, tail, eval_ds, batch_size, limit=limit,
                             device=device, progress=progress)
    return channel_eval(ckpt, tail, lat, ber, slices=slices, slice_axis=slice_axis,
                        seed=seed, batch_size=batch_size, device=device)
