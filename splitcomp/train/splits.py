"""A fixed, seeded split of a labelled dataset into a train part and a disjoint eval part.

Trained components learn on the train part; every figure they report comes from the eval part.
The split is recorded in each checkpoint (:class:`SplitRecord`): seed, sizes, a digest of the
eval file list, and a fingerprint of every train image's pixels, so an evaluation can refuse
images the checkpoint trained on even when they come from another folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import ImageFolderDataset


class TrainedOnError(ValueError):
    """An evaluation was asked to report on images a checkpoint trained on."""


def image_fingerprint(img: torch.Tensor) -> str:
    """16 hex digits of the SHA-256 of an image's decoded uint8 pixels (and its shape)."""
    arr = img.contiguous().numpy()
    return hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()[:16]


def _list_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


@dataclass
class SplitRecord:
    """How a dataset was split: enough to rebuild the split and to check an eval set."""

    seed: int
    n_train: int
    n_eval: int
    eval_digest: str  #: SHA-256 of the eval part's relative file names, in order
    train_fingerprints: list[str] = field(default_factory=list, repr=False)
    #: train-part images kept out of training for a later component (:func:`reserve_part`)
    reserved: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SplitRecord:
        return cls(int(d["seed"]), int(d["n_train"]), int(d["n_eval"]), str(d["eval_digest"]),
                   [str(f) for f in d.get("train_fingerprints", [])], int(d.get("reserved", 0)))

    def same_split(self, other: SplitRecord) -> bool:
        """Whether ``other`` cut the same dataset into the same train and eval parts."""
        return (self.seed, self.n_train, self.n_eval, self.eval_digest) == (
            other.seed, other.n_train, other.n_eval, other.eval_digest)

    def check_disjoint(self, ds: ImageFolderDataset) -> None:
        """Raise :class:`TrainedOnError` if any image of ``ds`` is one the split trained on."""
        trained = set(self.train_fingerprints)
        hits = [i for i in range(len(ds)) if image_fingerprint(ds.image_uint8(i)) in trained]
        if hits:
            raise TrainedOnError(f"{len(hits)} of {len(ds)} images were in the checkpoint's "
                                 f"train part (e.g. {ds.samples[hits[0]][0]}): evaluate on "
                                 "the eval part only")


def _relative_names(ds: ImageFolderDataset, indices: list[int]) -> list[str]:
    root = ds.root
    out = []
    for i in indices:
        p = ds.samples[i][0]
        out.append(str(p.relative_to(root)) if root is not None and p.is_relative_to(root)
                   else p.name)
    return out


def _split_indices(ds: ImageFolderDataset, n_train: int, seed: int
                   ) -> tuple[list[int], list[int]]:
    """(train indices, eval indices) of the seeded, class-stratified split, each sorted."""
    rng = np.random.default_rng(seed)
    labels = ds.labels.numpy()
    order = []
    for c in np.unique(labels):  # interleave classes so any prefix is balanced
        members = np.flatnonzero(labels == c)
        order.append(rng.permutation(members))
    width = max(len(m) for m in order)
    flat = [int(m[k]) for k in range(width) for m in order if k < len(m)]
    return sorted(flat[:n_train]), sorted(flat[n_train:])


def split_dataset(ds: ImageFolderDataset, n_train: int | None = None, seed: int = 0
                  ) -> tuple[ImageFolderDataset, ImageFolderDataset, SplitRecord]:
    """(train part, eval part, record): a seeded, class-stratified split. ``n_train``: images
    in the train part (default half); the rest is the eval part."""
    n = len(ds)
    n_train = n // 2 if n_train is None else n_train
    if not 0 < n_train < n:
        raise ValueError(f"n_train={n_train}: need 0 < n_train < {n} (the dataset's size)")
    train_idx, eval_idx = _split_indices(ds, n_train, seed)
    train, held = ds.subset(train_idx), ds.subset(eval_idx)
    train.preload()
    record = SplitRecord(seed, len(train_idx), len(eval_idx),
                         _list_digest(_relative_names(ds, eval_idx)),
                         [image_fingerprint(train.image_uint8(i)) for i in range(len(train))])
    return train, held, record


def eval_indices(ds: ImageFolderDataset, record: SplitRecord) -> list[int] | None:
    """The indices of the eval part of ``ds`` under ``record`` when ``ds`` is the dataset the
    split was made from (same size, same eval file list: nothing is decoded), else None."""
    if len(ds) != record.n_train + record.n_eval:
        return None
    _, eval_idx = _split_indices(ds, record.n_train, record.seed)
    return eval_idx if _list_digest(_relative_names(ds, eval_idx)) == record.eval_digest else None


def eval_part(ds: ImageFolderDataset, record: SplitRecord) -> ImageFolderDataset:
    """The eval part of ``ds`` under ``record`` (the same data as at training: checked by the
    file list digest), else ``ds`` itself after checking it shares no image with the train
    part (another folder)."""
    held = eval_indices(ds, record)
    if held is not None:
        return ds.subset(held)
    record.check_disjoint(ds)
    return ds


#: seed offset of the reserved part's draw (apart from the exits' and gates' seed + 1)
_RESERVE_SEED = 101


def reserve_part(train: ImageFolderDataset, record: SplitRecord
                 ) -> tuple[ImageFolderDataset, ImageFolderDataset | None]:
    """(images to train on, reserved images or None): ``record.reserved`` images of the train
    part, drawn class-stratified by the split's seed, kept for a component trained after this
    one (a gate must learn which option answers right on images no option trained on)."""
    n = record.reserved
    if n <= 0:
        return train, None
    if n >= len(train):
        raise ValueError(f"--reserve {n}: the train part has only {len(train)} images")
    used, kept, _ = split_dataset(train, len(train) - n, record.seed + _RESERVE_SEED)
    return used, kept
