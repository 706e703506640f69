"""ResNet20 / CIFAR-10 / lsq (see `recipes.configs.base.resnet20_cifar10`).

  python -m recipes.train --config=recipes/configs/resnet20_cifar10_lsq.py \
      --workdir=runs/r20_lsq
"""

from recipes.configs import base


def get_config():
    return base.resnet20_cifar10("lsq")
