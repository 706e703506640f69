"""ResNet20 / CIFAR-10 / adaqat (see `recipes.configs.base.resnet20_cifar10`).

  python -m recipes.train --config=recipes/configs/resnet20_cifar10_adaqat.py \
      --workdir=runs/r20_adaqat
"""

from recipes.configs import base


def get_config():
    return base.resnet20_cifar10("adaqat")
