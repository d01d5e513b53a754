"""``load_dataset``: a named dataset or any supported folder -> :class:`ImageFolderDataset`."""

from __future__ import annotations

from pathlib import Path

from .dataset import ImageFolderDataset
from .formats import (
    class_folder_samples,
    detect_format,
    foolbox_data_dir,
    foolbox_samples,
    foolbox_subsets,
    imagenet_samples,
)
from .paths import shared_data_dir
from .transforms import CIFAR_EVAL, IMAGENET_EVAL, Preprocess

#: named datasets in the shared data folder: name -> (sub-folder, format)
SHARED_DATASETS = {
    "cifar10": ("cifar10-test", "cifar"),
    "imagenet": ("imagenet-samples", "imagenet"),
}
#: foolbox sample sets are named ``foolbox-<dataset>``
FOOLBOX_PREFIX = "foolbox-"


def default_preprocess(format: str, subset: str | None = None) -> Preprocess:
    """Preprocessing used when none is given: ImageNet-style photos get resize 256 / crop 224."""
    if format == "imagenet" or (format == "foolbox" and subset == "imagenet"):
        return IMAGENET_EVAL
    return CIFAR_EVAL


def dataset_names() -> list[str]:
    """Names :func:`load_dataset` accepts besides folder paths (whether present or not)."""
    return [*SHARED_DATASETS, "foolbox-imagenet", "foolbox-cifar10"]


def resolve_source(source: str | Path) -> tuple[Path, str, str | None]:
    """Named dataset or folder -> ``(folder, format, foolbox subset)``.

    FileNotFoundError, with the reason, when a named dataset is not available here.
    """
    name = str(source)
    if name in SHARED_DATASETS:
        sub, fmt = SHARED_DATASETS[name]
        root = shared_data_dir()
        if root is None or not (root / sub).is_dir():
            raise FileNotFoundError(
                f"dataset {name!r} needs the shared data folder ({sub}); set SPLITCOMP_DATA "
                "or place it at <repo>/../shared/data"
            )
        return root / sub, fmt, None
    if name.startswith(FOOLBOX_PREFIX):
        root = foolbox_data_dir()
        if root is None:
            raise FileNotFoundError(
                f"dataset {name!r} needs the foolbox package (pip install --no-deps foolbox)"
            )
        return root, "foolbox", name[len(FOOLBOX_PREFIX):]
    path = Path(source).expanduser()
    fmt = detect_format(path)
    subsets = foolbox_subsets(path) if fmt == "foolbox" else []
    return path, fmt, subsets[0] if len(subsets) == 1 else None


def load_dataset(
    source: str | Path,
    preprocess: Preprocess | None = None,
    *,
    limit: int | None = None,
    cache: bool = True,
) -> ImageFolderDataset:
    """Open a dataset: ``"cifar10"``, ``"imagenet"``, ``"foolbox-<name>"`` or a folder path.

    ``preprocess`` should come from the model (``model_config(name).preprocess()``), since
    models differ in normalisation; without it a per-format default is used. ``limit`` keeps
    that many images spread evenly over the set (so a class-sorted folder keeps every class).
    """
    root, fmt, subset = resolve_source(source)
    if fmt == "cifar":
        listing = class_folder_samples(root)
    elif fmt == "imagenet":
        listing = imagenet_samples(root)
    else:
        listing = foolbox_samples(root, subset)
    ds = ImageFolderDataset(
        listing.samples, preprocess or default_preprocess(fmt, subset), classes=listing.classes,
        format=fmt if subset is None else f"{FOOLBOX_PREFIX}{subset}", root=root, cache=cache,
    )
    return ds.subset(limit) if limit is not None and limit < len(ds) else ds
