"""ResNet18 / ImageNet / lsq (see `recipes.configs.base.resnet18_imagenet`).

  python -m recipes.train --config=recipes/configs/resnet18_imagenet_lsq.py \
      --workdir=runs/r18_lsq \
      --config.data_dir=/data/tensorflow_datasets
"""

from recipes.configs import base


def get_config():
    return base.resnet18_imagenet("lsq")
