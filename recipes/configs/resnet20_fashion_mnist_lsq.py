"""ResNet20 / Fashion-MNIST / lsq (see `recipes.configs.base.resnet20_fashion_mnist`).

Needs the data set: `make data` (or `apt-get install dataset-fashion-mnist` as root).

  python -m recipes.train --config=recipes/configs/resnet20_fashion_mnist_lsq.py \
      --workdir=runs/r20_fashion_lsq
"""

from recipes.configs import base


def get_config():
    return base.resnet20_fashion_mnist("lsq")
