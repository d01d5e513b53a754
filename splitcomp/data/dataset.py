"""A dataset of labelled image files that decodes each file once and keeps the uint8 result.

Decoding dominates evaluation time on small images (10,000 CIFAR PNGs), and the same images
are usually evaluated many times (one run per codec setting), so decoded images stay in memory
as uint8 after the geometric step; normalisation is done per batch, vectorised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .transforms import Preprocess

Batch = tuple[torch.Tensor, torch.Tensor]


def spread_indices(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)``, first one 0.

    Used for subsets: on a class-sorted folder the first N images would all share one label.
    """
    if n >= n_total:
        return list(range(n_total))
    return [i * n_total // n for i in range(n)]


class ImageFolderDataset(Dataset):
    """Labelled image files -> ``(CHW float32 tensor, int label)``, in a fixed order.

    ``cache=True`` keeps each decoded, resized and cropped image (uint8) after first use.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, int]],
        preprocess: Preprocess,
        *,
        classes: Sequence[str] | None = None,
        format: str = "",
        root: str | Path | None = None,
        cache: bool = True,
    ) -> None:
        self.samples = [(Path(p), int(label)) for p, label in samples]
        self.preprocess = preprocess
        self.classes = tuple(classes) if classes is not None else None
        self.format = format
        self.root = Path(root) if root is not None else None
        self.cache = cache
        self._decoded: list[torch.Tensor | None] = [None] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, format={self.format!r}, "
                f"root={str(self.root)!r}, {self.preprocess})")

    @property
    def labels(self) -> torch.Tensor:
        """All labels as an int64 tensor, in dataset order."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def image_uint8(self, i: int) -> torch.Tensor:
        """Image ``i`` after decoding, resize and crop (CHW uint8), cached when enabled."""
        img = self._decoded[i]
        if img is None:
            img = self.preprocess.load_uint8(self.samples[i][0])
            if self.cache:
                self._decoded[i] = img
        return img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.preprocess.normalize(self.image_uint8(i)), self.samples[i][1]

    def preload(self, workers: int | None = None) -> ImageFolderDataset:
        """Decode every image now (a few threads help on large JPEGs); returns ``self``."""
        missing = [i for i, img in enumerate(self._decoded) if img is None]
        if not missing or not self.cache:
            return self
        workers = workers or min(4, os.cpu_count() or 1)
        paths = [self.samples[i][0] for i in missing]
        if workers <= 1:
            images = [self.preprocess.load_uint8(p) for p in paths]
        else:
            with ThreadPoolExecutor(workers) as pool:
                images = list(pool.map(self.preprocess.load_uint8, paths, chunksize=64))
        for i, img in zip(missing, images, strict=True):
            self._decoded[i] = img
        return self

    def batches(self, batch_size: int = 128) -> Iterator[Batch]:
        """``(x, y)`` batches in order: x is NCHW float32, y int64 (the last may be short)."""
        for start in range(0, len(self), batch_size):
            idx = range(start, min(start + batch_size, len(self)))
            x = torch.stack([self.image_uint8(i) for i in idx])
            y = torch.tensor([self.samples[i][1] for i in idx], dtype=torch.int64)
            yield self.preprocess.normalize(x), y

    def loader(self, batch_size: int = 128, num_workers: int = 0) -> DataLoader:
        """A plain torch DataLoader over this dataset, in order."""
        return DataLoader(self, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    def subset(self, indices: Sequence[int] | int) -> ImageFolderDataset:
        """A dataset over some of the samples (an int means that many, spread evenly).

        The subset shares already decoded images.
        """
        if isinstance(indices, int):
            indices = spread_indices(len(self), indices)
        sub = ImageFolderDataset(
            [self.samples[i] for i in indices], self.preprocess, classes=self.classes,
            format=self.format, root=self.root, cache=self.cache,
        )
        sub._decoded = [self._decoded[i] for i in indices]
        return sub

    @classmethod
    def concat(cls, parts: Sequence[ImageFolderDataset]) -> ImageFolderDataset:
        """The samples of ``parts`` one after another (the first's preprocessing and classes:
        they must share a label space), decoded images kept; one part is returned as is."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            raise ValueError("concat: no datasets")
        out = cls([s for p in parts for s in p.samples], parts[0].preprocess,
                  classes=parts[0].classes, format="+".join(p.format for p in parts),
                  cache=parts[0].cache)
        out._decoded = [img for p in parts for img in p._decoded]
        return out

    def with_preprocess(self, preprocess: Preprocess) -> ImageFolderDataset:
        """The same samples under another preprocessing; decoded images are reused when the
        geometry (resize and crop) is unchanged, since only the normalisation differs."""
        out = ImageFolderDataset(
            self.samples, preprocess, classes=self.classes, format=self.format,
            root=self.root, cache=self.cache,
        )
        same = (preprocess.resize, preprocess.crop) == (self.preprocess.resize,
                                                        self.preprocess.crop)
        if same:
            out._decoded = list(self._decoded)
        return out
