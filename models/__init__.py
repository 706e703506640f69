"""Model builders for tfadaqat recipes, benchmarks and tests (not shipped in the wheel)."""

from models.resnet import resnet20, resnet_cifar

__all__ = ["resnet20", "resnet_cifar"]
