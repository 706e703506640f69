"""Model builders for tfadaqat recipes, benchmarks and tests (not shipped in the wheel).

Each builder returns a tf-keras Functional model from images to logits with deterministic layer
names. :func:`build_model` picks one by name, at full size or as a tiny variant of the same
family for tests (a few filters; builds and runs a batch in well under a second).
"""

from models.mobilenet_v2 import mobilenet_v2
from models.resnet import resnet20, resnet32, resnet44, resnet56, resnet_cifar
from models.resnet_imagenet import resnet18
from models.small import small_cnn

__all__ = ["MODEL_NAMES", "build_model", "mobilenet_v2", "resnet18", "resnet20", "resnet32",
           "resnet44", "resnet56", "resnet_cifar", "small_cnn"]

MODEL_NAMES = ("small_cnn", "resnet20", "resnet32", "resnet44", "resnet56", "resnet18",
               "mobilenet_v2")

# name -> (builder, its arguments at full size, the arguments that replace them when tiny).
# Tiny CIFAR ResNets all have depth 8 (one block per stage): the depth is what tells ResNet20
# from ResNet56, and tests of the family do not need it.
_BUILDERS = {
    "small_cnn": (small_cnn, {}, {"width": 4}),
    "resnet20": (resnet_cifar, {"depth": 20}, {"depth": 8, "width": 4}),
    "resnet32": (resnet_cifar, {"depth": 32}, {"depth": 8, "width": 4}),
    "resnet44": (resnet_cifar, {"depth": 44}, {"depth": 8, "width": 4}),
    "resnet56": (resnet_cifar, {"depth": 56}, {"depth": 8, "width": 4}),
    "resnet18": (resnet18, {}, {"width": 8}),
    "mobilenet_v2": (mobilenet_v2, {}, {"width_multiplier": 0.25}),
}


def build_model(name: str, /, *, input_shape, num_classes: int, tiny: bool = False,
                bn_momentum: float = None, **options):
    """Builds the model called `name`.

    Tiny variants: small_cnn with width 4; every CIFAR ResNet as depth 8 with width 4;
    resnet18 with width 8; mobilenet_v2 with width multiplier 0.25 (its final 1280 channels
    stay). Their default model name is ``tiny_{name}``.

    Args:
      name: One of :data:`MODEL_NAMES` (positional, so that ``name=`` in `options` names the
        model).
      input_shape: ``(height, width, channels)``.
      num_classes: Size of the classifier output (logits).
      tiny: Build the tiny variant of the family, for tests.
      bn_momentum: Momentum of every BatchNormalization's moving statistics; None keeps the
        builder's own default (Keras' 0.99, except small_cnn's 0.9). Runs of a few hundred
        steps on small data sets want 0.9.
      **options: Further keyword arguments of the builder (for example ``small_input=True``
        for mobilenet_v2 on 32x32 images, ``width``, or ``name`` for the model's name); they
        override the tiny ones.

    Returns:
      A Functional model from images to logits.

    Raises:
      ValueError: For a name not in :data:`MODEL_NAMES`, or bad arguments of the builder.
      TypeError: For an option the builder does not take.

    Example:
      >>> model = build_model("resnet20", input_shape=(32, 32, 3), num_classes=10, tiny=True)
      >>> model.name, model.output_shape
      ('tiny_resnet20', (None, 10))
    """
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    builder, arguments, tiny_arguments = _BUILDERS[name]
    arguments = dict(arguments)
    if tiny:
        arguments.update(tiny_arguments, name=f"tiny_{name}")
    if bn_momentum is not None:
        arguments["bn_momentum"] = bn_momentum
    arguments.update(options)
    return builder(input_shape=input_shape, num_classes=num_classes, **arguments)
