"""ResNet18 / ImageNet / dq (see `recipes.configs.base.resnet18_imagenet`).

  python -m recipes.train --config=recipes/configs/resnet18_imagenet_dq.py \
      --workdir=runs/r18_dq \
      --config.data_dir=/data/tensorflow_datasets
"""

from recipes.configs import base


def get_config():
    return base.resnet18_imagenet("dq")
