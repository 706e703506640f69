"""Model builders for tfadaqat recipes, benchmarks and tests (not shipped in the wheel)."""

from models.resnet import resnet20, resnet_cifar
from models.small import small_cnn

__all__ = ["resnet20", "resnet_cifar", "small_cnn"]
