"""The README's main command: ResNet20 on scikit-learn's digits (real 8x8 images, no download).

Float training for 30 epochs, then AdaQAT from 8 bits under a budget of 1/4 of the 8-bit
model's BitOPs for 30 epochs, summary and verified integer export; a few minutes on 2 cores.

  python -m recipes.train --config=recipes/configs/digits_adaqat.py --workdir=runs/digits_adaqat
"""

from recipes.configs import base


def get_config():
    config = base.base_config()
    config.model = "resnet20"
    config.bn_momentum = 0.9  # a few hundred steps: the default 0.99 leaves stale statistics
    config.dataset = "digits"
    config.method = "adaqat"
    config.budget.bitops = 0.25
    config.adaqat.learning_rate = 1.0
    config.optimizer = "adam"
    config.weight_decay = 0.0
    config.batch_size = config.base_batch_size = 64
    config.float_epochs = 30
    config.float_learning_rate = 3e-3
    config.learning_rate = 1e-3
    config.schedule = "cosine"
    config.epochs = 30
    config.verify_examples = 450
    return config
