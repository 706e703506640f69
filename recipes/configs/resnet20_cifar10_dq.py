"""ResNet20 / CIFAR-10 / dq (see `recipes.configs.base.resnet20_cifar10`).

  python -m recipes.train --config=recipes/configs/resnet20_cifar10_dq.py \
      --workdir=runs/r20_dq
"""

from recipes.configs import base


def get_config():
    return base.resnet20_cifar10("dq")
