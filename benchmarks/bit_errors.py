"""Top-1 against the bit error rate of a raw link: plain streams, JPEG input, resilient streams.

    python benchmarks/bit_errors.py [--checkpoint docs/results/checkpoints/resnet20_layer2_b3]
        [--ber-aware-checkpoint DIR] [--limit 500] [--slices 8] [--json PATH]
        [--png docs/results/bit_errors.png]

Every eval image (the eval part of the checkpoint's split, ``--limit`` of them spread evenly)
is sent as one stream over a link that flips each bit independently at the BER (a binary
symmetric channel, no retransmission; seeded per image, ``--seed``), then decoded as a server
would. Rows:

* ``plain stream``: the checkpoint's compact ``bottleneck`` stream; any error fails its CRC,
  the request is lost (scored wrong);
* ``JPEG input``: the image's JPEG file (``--jpeg-quality``, 4:4:4) through the same channel,
  the full model on what decodes; a file that does not decode (or decodes to another size) is
  a lost request, one that decodes with damage is classified as it is;
* ``resilient``: the latent in the ``resilient`` codec (``--slices`` slices along the rows,
  each with a CRC-16; a failed slice concealed with the channel medians; a header error loses
  the request); ``resilient, channel slices`` cuts along the channels instead;
* ``resilient + BER-aware``: the same with ``--ber-aware-checkpoint`` (a bottleneck trained
  with ``splitcomp train bottleneck ... --symbol-error-rate P``), if given.

Prints one JSON document (per row and BER, means over ``--repeats`` channel seeds on the same
images: top-1, drop against the teacher, drop against the same stream without errors,
requests lost, slices concealed, bytes per image) and draws top-1 against BER into ``--png``
(with 95 % Wilson intervals over the images; SVG and PDF copies beside it).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitcomp.bench.input_compression import encode_image  # noqa: E402
from splitcomp.bench.plots import CI_NOTE, accuracy_yerr, save_figure  # noqa: E402
from splitcomp.codecs.channel_errors import flip_bits, sample_rng  # noqa: E402
from splitcomp.data import load_dataset  # noqa: E402
from splitcomp.train import eval_part, open_checkpoints  # noqa: E402
from splitcomp.train.ckpt_eval import Latents, channel_eval, checkpoint_latents  # noqa: E402

BERS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
DEFAULT_CKPT = "docs/results/checkpoints/resnet20_layer2_b3"


def received_image(data: bytes, size: tuple[int, int]) -> torch.Tensor | None:
    """A received JPEG file as a CHW uint8 image, or None when it does not decode to an image
    of ``size`` (the request is lost)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.size != size:
                return None
            arr = np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - Pillow raises many types on a corrupt file: all = lost
        return None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@torch.no_grad()
def jpeg_rows(model: torch.nn.Module, images: list[torch.Tensor], labels: torch.Tensor,
              quality: int, bers: tuple[float, ...], seed: int) -> list[dict[str, Any]]:
    """The JPEG input row: each image's file through the channel, the full model on it."""
    model.eval()
    prep = model.default_cfg.preprocess()
    files = [encode_image(img, "jpeg", quality) for img in images]
    size = (images[0].shape[2], images[0].shape[1])
    clean = [received_image(data, size) for data in files]
    rows = []
    for ber in bers:
        got, lost = list(clean), torch.zeros(len(images), dtype=torch.bool)
        hit = 0
        for i, data in enumerate(files):
            noisy = flip_bits(data, ber, sample_rng(seed, i))
            if noisy == data:
                continue
            hit += 1
            out = received_image(noisy, size)
            lost[i] = out is None
            got[i] = clean[i] if out is None else out
        hits = []
        for s in range(0, len(got), 256):
            x = prep.normalize(torch.stack(got[s : s + 256]))
            hits.append(model(x).argmax(-1) == labels[s : s + 256])
        ok = torch.cat(hits) & ~lost
        rows.append({"ber": ber, "top1": 100.0 * float(ok.float().mean()),
                     "requests_lost": int(lost.sum()), "streams_hit": hit,
                     "concealed_slices": 0,
                     "bytes_per_sample": sum(map(len, files)) / len(files)})
    return rows


def checkpoint_rows(trained, lat: Latents, slices: int | None, axis: int,
                    bers: tuple[float, ...], seed: int) -> list[dict[str, Any]]:
    keep = ("ber", "top1", "requests_lost", "streams_hit", "concealed_slices",
            "bytes_per_sample")
    return [{k: r[k] for k in keep} for r in (
        channel_eval(trained.ckpt, trained.tail, lat, ber, slices=slices, slice_axis=axis,
                     seed=seed) for ber in bers)]


def repeated(make, repeats: int, seed: int) -> list[dict[str, Any]]:
    """``make(seed)``'s rows averaged over ``repeats`` channel seeds (the same images, other
    bit errors): less channel noise in a few hundred images."""
    runs = [make(seed + k) for k in range(repeats)]
    out = []
    for rows in zip(*runs, strict=True):
        avg = {k: sum(r[k] for r in rows) / repeats for k in rows[0] if k != "ber"}
        out.append({"ber": rows[0]["ber"], **avg, "repeats": repeats})
    return out


def finish(rows: list[dict[str, Any]], teacher: float) -> list[dict[str, Any]]:
    """Drops against the teacher and against the row's own error-free figure."""
    clean = next(r["top1"] for r in rows if r["ber"] == 0.0)
    for r in rows:
        r["drop_pp"] = teacher - r["top1"]
        r["ber_drop_pp"] = clean - r["top1"]
        for k in ("top1", "drop_pp", "ber_drop_pp"):
            r[k] = round(r[k], 3)
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bers = result["bers"]
    xs = range(len(bers))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"plain stream": "o-", "JPEG input": "s-", "resilient": "^-",
              "resilient, channel slices": "v--", "resilient + BER-aware": "D-"}
    for name, rows in result["rows"].items():
        b = rows[0]["bytes_per_sample"]
        ys = [r["top1"] for r in rows]
        ax.errorbar(xs, ys, yerr=accuracy_yerr(ys, result["n_images"]), fmt=styles.get(name, ".-"),
                    capsize=2, elinewidth=0.8, label=f"{name} ({b:.0f} B)")
    ax.axhline(result["teacher_top1"], color="grey", lw=0.8, ls=":",
               label=f"unsplit model ({result['teacher_top1']:.1f} %)")
    ax.set_xticks(list(xs), ["0" if b == 0 else f"{b:g}" for b in bers])
    ax.set_xlabel("bit error rate (each bit flipped independently, no retransmission)")
    ax.set_ylabel("top-1 (%) (a rejected stream = wrong)")
    ax.set_title(f"{result['model']} @ {result['split']}, CIFAR-10, "
                 f"{result['n_images']} eval images\n({CI_NOTE})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=130)  # PNG, SVG and PDF
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=Path(DEFAULT_CKPT))
    p.add_argument("--ber-aware-checkpoint", type=Path,
                   help="a bottleneck trained with --symbol-error-rate (same model and cut)")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--limit", type=int, default=500, help="eval images, spread evenly")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--bers", default=",".join(f"{b:g}" for b in BERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="channel seeds averaged (seed, "
                   "seed + 1, ...): the same images, other bit errors")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path, default=Path("docs/results/bit_errors.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bers = tuple(float(b) for b in args.bers.split(","))
    if 0.0 not in bers:
        bers = (0.0, *bers)
    t0 = time.perf_counter()
    folders = [args.checkpoint] + ([args.ber_aware_checkpoint] if args.ber_aware_checkpoint
                                   else [])
    model, opened = open_checkpoints(folders)
    ds = load_dataset(args.data, model.default_cfg.preprocess())
    lats = [checkpoint_latents(t.ckpt, t.head, t.tail, ds, limit=args.limit) for t in opened]
    if len(lats) > 1 and not torch.equal(lats[0].labels, lats[1].labels):
        print("warning: the two checkpoints' eval parts differ (another split seed?)",
              file=sys.stderr)
    base = opened[0]
    teacher = 100.0 * float(lats[0].teacher_ok.float().mean())
    held = eval_part(ds, base.ckpt.split)
    held = held.subset(args.limit) if args.limit < len(held) else held
    images = [held.image_uint8(i) for i in range(len(held))]
    r, seed = args.repeats, args.seed
    rows = {
        "plain stream": repeated(
            lambda s: checkpoint_rows(base, lats[0], None, 2, bers, s), r, seed),
        "JPEG input": repeated(
            lambda s: jpeg_rows(model, images, held.labels, args.jpeg_quality, bers, s), r,
            seed),
        "resilient": repeated(
            lambda s: checkpoint_rows(base, lats[0], args.slices, 2, bers, s), r, seed),
        "resilient, channel slices": repeated(
            lambda s: checkpoint_rows(base, lats[0], args.slices, 1, bers, s), r, seed),
    }
    if len(opened) > 1:
        rows["resilient + BER-aware"] = repeated(
            lambda s: checkpoint_rows(opened[1], lats[1], args.slices, 2, bers, s), r, seed)
    rows = {k: finish(v, teacher) for k, v in rows.items()}
    result: dict[str, Any] = {
        "model": base.ckpt.model, "split": base.ckpt.cut, "n_images": len(images),
        "checkpoint": str(args.checkpoint),
        "ber_aware_checkpoint": str(args.ber_aware_checkpoint or "") or None,
        "ber_aware_symbol_error_rate": (opened[1].ckpt.config.symbol_error_rate
                                        if len(opened) > 1 else None),
        "slices": args.slices, "jpeg_quality": args.jpeg_quality, "seed": args.seed,
        "repeats": args.repeats,
        "bers": list(bers), "teacher_top1": teacher, "rows": rows,
        "note": "each image one stream through a binary symmetric channel (seeded per image); "
                "a stream the receiver rejects is a lost request, scored wrong; figures "
                "are means over `repeats` channel seeds (requests_lost, concealed_slices: "
                "per run); drop_pp: against the unsplit model, ber_drop_pp: against the same "
                "row at BER 0",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    plot(result, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
