"""Evaluation data: image folders (CIFAR, ImageNet, foolbox samples) and where data lives."""

from .dataset import Batch, ImageFolderDataset, spread_indices
from .formats import (
    CIFAR10_CLASSES,
    FORMATS,
    SampleList,
    class_folder_samples,
    detect_format,
    foolbox_data_dir,
    foolbox_samples,
    foolbox_subsets,
    imagenet_samples,
    imagenet_synsets,
)
from .loader import dataset_names, default_preprocess, load_dataset, resolve_source
from .paths import cache_dir, package_dir, repo_root, shared_data_dir, shared_data_path
from .transforms import (
    CIFAR_EVAL,
    IMAGENET_EVAL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    Preprocess,
)

__all__ = [
    "Batch", "CIFAR10_CLASSES", "CIFAR_EVAL", "FORMATS", "IMAGENET_EVAL", "IMAGENET_MEAN",
    "IMAGENET_STD", "ImageFolderDataset", "Preprocess", "SampleList", "TF_LITE_MEAN",
    "TF_LITE_STD", "cache_dir", "class_folder_samples", "dataset_names", "default_preprocess",
    "detect_format", "foolbox_data_dir", "foolbox_samples", "foolbox_subsets",
    "imagenet_samples", "imagenet_synsets", "load_dataset", "package_dir", "repo_root",
    "resolve_source", "shared_data_dir", "shared_data_path", "spread_indices",
]
