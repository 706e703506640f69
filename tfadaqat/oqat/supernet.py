"""The quantized once-for-all supernet: every sub-network in one set of weights and steps.

Each block slot (stage ``s``, block ``b < max depth``) holds the largest weights any
sub-network uses: an expand kernel to ``C_in x max(e)`` channels, a ``max(k) x max(k)``
depthwise kernel, a project kernel and three BatchNormalizations. A sub-network runs a slice:

* **kernel size** ``k``: the centre ``k x k`` of the depthwise kernel (once-for-all's
  "simpler rule", without its learned kernel transform). It is computed as the full kernel
  with the outer ring masked to zero, which for "same" padding and strides 1 or 2 gives the
  output of the ``k x k`` kernel exactly;
* **expand ratio** ``e``: the first ``e C_in`` hidden channels (the others masked to zero);
* **depth** ``d``: the first ``d`` blocks of the stage (the others, all residual, pass their
  input through).

Masks instead of slices keep one traced graph for every sub-network, so the sandwich rule can
draw random sub-networks inside ``fit``. Every quantized layer has ONE LSQ step for its
weights and one for its output, read by every sub-network whatever slice it takes (OQAT's
shared step size). The stem convolution and the classifier stay in float. Quantization points
are those :func:`tfadaqat.quantize_model` gives the sub-network's own model, so that
:func:`extract` reproduces the supernet's outputs.

BatchNormalization during training normalises with the sub-network's batch statistics and
does not update moving statistics (they would mix sub-networks); :func:`recalibrate` sets
them for one sub-network from a few batches, as once-for-all does before evaluating it.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import numpy as np

from tfadaqat._compat import keras, tf
from tfadaqat.oqat.architecture import SupernetSpec, build_subnet
from tfadaqat.oqat.space import SearchSpace, SubnetConfig
from tfadaqat.quantizers import LSQQuantizer

_EPSILON = 1e-3  # Keras' BatchNormalization default, which extracted models use


class _BatchNorm(tf.Module):
    """BatchNormalization parameters over the largest channel count."""

    def __init__(self, channels: int, name: str):
        super().__init__(name=name)
        self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
        self.beta = tf.Variable(tf.zeros([channels]), name="beta")
        self.moving_mean = tf.Variable(tf.zeros([channels]), trainable=False,
                                       name="moving_mean")
        self.moving_variance = tf.Variable(tf.ones([channels]), trainable=False,
                                           name="moving_variance")

    def __call__(self, x, batch_statistics: bool, moments: Optional[List] = None):
        if batch_statistics:
            mean, variance = tf.nn.moments(x, axes=list(range(len(x.shape) - 1)))
            if moments is not None:
                moments.append((self, mean, variance))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, _EPSILON)


class _Step(tf.Module):
    """One shared LSQ step and the quantizer that uses it."""

    def __init__(self, bits: int, signed: bool, kind: str, name: str):
        super().__init__(name=name)
        self.quantizer = LSQQuantizer(bits, signed=signed, kind=kind)
        self.step = tf.Variable(1.0, name="step",
                                constraint=lambda step: tf.maximum(step, 1e-8))

    def __call__(self, x, initialize: bool = False):
        if initialize:
            self.step.assign(self.quantizer._initial_values(x)["step"])
        return self.quantizer._quantize(x, {"step": self.step})


class _BlockSlot(tf.Module):
    """The largest weights, BatchNormalizations and shared steps of one block position."""

    def __init__(self, input_channels: int, output_channels: int, stride: int,
                 space: SearchSpace, bits: int, name: str, seed: int):
        super().__init__(name=name)
        self.input_channels, self.output_channels, self.stride = (
            input_channels, output_channels, stride)
        self.hidden = input_channels * space.expand_ratios[-1]
        self.kernel_size = space.kernel_sizes[-1]
        initializer = keras.initializers.HeNormal(seed=seed)
        self.expand = tf.Variable(initializer([1, 1, input_channels, self.hidden]),
                                  name="expand_kernel")
        self.depthwise = tf.Variable(
            keras.initializers.HeNormal(seed=seed + 1)(
                [self.kernel_size, self.kernel_size, self.hidden, 1]), name="depthwise_kernel")
        self.project = tf.Variable(
            keras.initializers.HeNormal(seed=seed + 2)([1, 1, self.hidden, output_channels]),
            name="project_kernel")
        self.expand_bn = _BatchNorm(self.hidden, "expand_bn")
        self.depthwise_bn = _BatchNorm(self.hidden, "depthwise_bn")
        self.project_bn = _BatchNorm(output_channels, "project_bn")
        self.steps = {
            "expand_conv": _Step(bits, True, "weight", "expand_conv_step"),
            "expand_relu": _Step(bits, False, "activation", "expand_relu_step"),
            "depthwise_conv": _Step(bits, True, "weight", "depthwise_conv_step"),
            "depthwise_relu": _Step(bits, False, "activation", "depthwise_relu_step"),
            "project_conv": _Step(bits, True, "weight", "project_conv_step"),
            "project_bn": _Step(bits, True, "activation", "project_bn_step"),
            "add": _Step(bits, True, "activation", "add_step")}

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.input_channels == self.output_channels

    def __call__(self, x, kernel_mask, channel_mask, active, batch_statistics: bool,
                 initialize: bool, moments: Optional[List]):
        steps = self.steps
        weights = steps["expand_conv"](self.expand * channel_mask, initialize)
        y = tf.nn.conv2d(x, weights, 1, "SAME")
        y = tf.nn.relu(self.expand_bn(y, batch_statistics, moments)) * channel_mask
        y = steps["expand_relu"](y, initialize)
        depthwise = self.depthwise * kernel_mask[:, :, None, None] * channel_mask[:, None]
        y = tf.nn.depthwise_conv2d(y, steps["depthwise_conv"](depthwise, initialize),
                                   [1, self.stride, self.stride, 1], "SAME")
        y = tf.nn.relu(self.depthwise_bn(y, batch_statistics, moments)) * channel_mask
        y = steps["depthwise_relu"](y, initialize)
        project = self.project * channel_mask[:, None]
        y = tf.nn.conv2d(y, steps["project_conv"](project, initialize), 1, "SAME")
        y = steps["project_bn"](self.project_bn(y, batch_statistics, moments), initialize)
        if not self.residual:
            return y
        added = steps["add"](x + y, initialize)
        return active * added + (1.0 - active) * x


class Supernet(keras.Model):
    """OQAT's weight-shared, step-shared quantized supernet at a fixed bit-width.

    Call it as ``supernet(images, config=SubnetConfig(...))`` (the largest sub-network when
    `config` is None). ``fit`` trains it with the sandwich rule: each step runs the largest,
    the smallest and `random_subnets` random sub-networks on the batch and applies the sum of
    their gradients.

    Args:
      spec: The skeleton (:class:`tfadaqat.oqat.SupernetSpec`).
      space: The search space.
      bits: Bit-width of every quantized weight and activation (>= 2).
      random_subnets: Random sub-networks per sandwich step.
      seed: Seed of the weight initialisation.

    Raises:
      ValueError: For bits below 2 or a space that does not fit `spec`.
    """

    def __init__(self, spec: SupernetSpec, space: SearchSpace = SearchSpace(), bits: int = 4,
                 random_subnets: int = 2, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        spec.check(space)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an integer in [2, 8], got {bits!r}")
        self.spec, self.space, self.bits, self.random_subnets = spec, space, bits, random_subnets
        self.stem = keras.layers.Conv2D(spec.stem_channels, 3, strides=spec.stem_stride,
                                        padding="same", use_bias=False, name="stem_conv")
        self.stem_bn = keras.layers.BatchNormalization(momentum=spec.bn_momentum,
                                                       name="stem_bn")
        self.stem_step = _Step(bits, False, "activation", "stem_relu_step")
        self.pool_step = _Step(bits, True, "activation", "pool_step")
        self.classifier = keras.layers.Dense(spec.num_classes, name="classifier")
        self.slots: List[List[_BlockSlot]] = []
        channels = spec.stem_channels
        for stage in range(spec.stages):
            stage_slots = []
            for block in range(space.max_depth):
                stride = spec.stage_strides[stage] if block == 0 else 1
                stage_slots.append(_BlockSlot(channels, spec.stage_channels[stage], stride,
                                              space, bits, f"stage{stage + 1}_block{block + 1}",
                                              seed + 10 * (stage * space.max_depth + block)))
                channels = spec.stage_channels[stage]
            self.slots.append(stage_slots)

    # -- configs as tensors ----------------------------------------------------------------

    def config_tensors(self, config: SubnetConfig) -> Dict[str, tf.Tensor]:
        """`config` as ``active``, ``kernel_size`` and ``expand_ratio`` tensors of shape
        ``[stages, max depth]`` (inactive slots hold the smallest choices)."""
        self.space.validate(config)
        shape = (self.spec.stages, self.space.max_depth)
        active = np.zeros(shape, np.float32)
        kernels = np.full(shape, self.space.kernel_sizes[0], np.int32)
        ratios = np.full(shape, self.space.expand_ratios[0], np.int32)
        for stage, block, kernel, ratio in config.blocks():
            active[stage, block], kernels[stage, block], ratios[stage, block] = 1.0, kernel, ratio
        return {"active": tf.constant(active), "kernel_size": tf.constant(kernels),
                "expand_ratio": tf.constant(ratios)}

    def _random_config_tensors(self) -> Dict[str, tf.Tensor]:
        shape = (self.spec.stages, self.space.max_depth)

        def pick(choices, size):
            index = tf.random.uniform(size, 0, len(choices), dtype=tf.int32)
            return tf.gather(tf.constant(choices, tf.int32), index)

        depths = pick(self.space.depths, [self.spec.stages])
        active = tf.cast(tf.range(self.space.max_depth)[None, :] < depths[:, None], tf.float32)
        return {"active": active, "kernel_size": pick(self.space.kernel_sizes, shape),
                "expand_ratio": pick(self.space.expand_ratios, shape)}

    # -- forward ---------------------------------------------------------------------------

    def _forward(self, images, tensors, *, batch_statistics: bool, initialize: bool = False,
                 moments: Optional[List] = None):
        x = self.stem(images)
        x = self.stem_bn(x, training=batch_statistics)
        x = self.stem_step(tf.nn.relu(x), initialize)
        largest = self.space.kernel_sizes[-1]
        offsets = tf.abs(tf.range(largest) - largest // 2)
        for stage, stage_slots in enumerate(self.slots):
            for block, slot in enumerate(stage_slots):
                half = (tensors["kernel_size"][stage, block] - 1) // 2
                line = tf.cast(offsets <= half, tf.float32)
                kernel_mask = line[:, None] * line[None, :]
                hidden = slot.input_channels * tensors["expand_ratio"][stage, block]
                channel_mask = tf.cast(tf.range(slot.hidden) < hidden, tf.float32)
                x = slot(x, kernel_mask, channel_mask, tensors["active"][stage, block],
                         batch_statistics, initialize, moments)
        x = self.pool_step(tf.reduce_mean(x, axis=[1, 2]), initialize)
        return self.classifier(x)

    def call(self, images, training=None, config: Optional[SubnetConfig] = None):
        tensors = self.config_tensors(config or self.space.largest())
        return self._forward(images, tensors, batch_statistics=bool(training))

    def initialize_steps(self, images) -> None:
        """Sets every shared step from `images` run through the largest sub-network (LSQ's
        ``2 mean|x| / sqrt(Q_p)``)."""
        self._forward(images, self.config_tensors(self.space.largest()), batch_statistics=True,
                      initialize=True)

    def train_step(self, data):
        images, labels = data[0], data[1]
        configs = [self.config_tensors(self.space.largest()),
                   self.config_tensors(self.space.smallest())]
        configs += [self._random_config_tensors() for _ in range(self.random_subnets)]
        variables = self.trainable_variables
        total = [tf.zeros_like(v) for v in variables]
        losses = []
        for tensors in configs:
            with tf.GradientTape() as tape:
                logits = self._forward(images, tensors, batch_statistics=True)
                loss = self.compiled_loss(labels, logits, regularization_losses=self.losses)
            gradients = tape.gradient(loss, variables)
            total = [t if g is None else t + g for t, g in zip(total, gradients)]
            losses.append(loss)
        self.optimizer.apply_gradients(zip(total, variables))
        self.compiled_metrics.update_state(labels, logits)  # the last (random) sub-network
        return {"loss": tf.add_n(losses) / len(losses),
                **{m.name: m.result() for m in self.metrics if m.name != "loss"}}


def recalibrate(supernet: Supernet, config: SubnetConfig, batches: Iterable) -> None:
    """Sets the moving BatchNorm statistics `config` uses to the mean over `batches` (images,
    or ``(images, labels)``) of its batch statistics. The stem's BatchNormalization, shared by
    every sub-network, is left as training set it."""
    tensors = supernet.config_tensors(config)
    sums: Dict[int, list] = {}
    count = 0
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        moments: List = []
        supernet._forward(images, tensors, batch_statistics=True, moments=moments)
        for batch_norm, mean, variance in moments:
            entry = sums.setdefault(id(batch_norm), [batch_norm, 0.0, 0.0])
            entry[1] += mean.numpy()
            entry[2] += variance.numpy()
        count += 1
    if not count:
        raise ValueError("recalibrate needs at least one batch")
    for batch_norm, mean, variance in sums.values():
        batch_norm.moving_mean.assign(mean / count)
        batch_norm.moving_variance.assign(variance / count)


def inherit(supernet: Supernet, bits: int) -> Supernet:
    """The ``bits``-bit supernet made from `supernet`: same weights, every step doubled per bit
    removed (OQAT's bit inheritance; fine-tune it briefly afterwards).

    Raises:
      ValueError: If `bits` is below 2 or not below the supernet's bit-width.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits < supernet.bits:
        raise ValueError(f"bits must be an integer in [2, {supernet.bits - 1}] (below the "
                         f"supernet's {supernet.bits} bits), got {bits!r}")
    child = Supernet(supernet.spec, supernet.space, bits, supernet.random_subnets)
    sample = tf.zeros((1,) + tuple(supernet.spec.input_shape))
    child(sample)
    supernet(sample)
    factor = 2.0 ** (supernet.bits - bits)
    steps = {id(step) for step in shared_steps(supernet).values()}
    for target, source in zip(child.variables, supernet.variables):
        target.assign(source * (factor if id(source) in steps else 1.0))
    return child


def extract(supernet: Supernet, config: SubnetConfig):
    """The standalone quantized Keras model of `config`, with its slices of the supernet's
    weights, recalibrated BatchNorm statistics and the shared steps; its outputs equal
    ``supernet(x, config=config)`` in inference mode, and :func:`tfadaqat.summary` and
    :func:`tfadaqat.export_tflite` accept it."""
    from tfadaqat.quantize import quantize_model, quantized_tensors, unwrapped_layer

    float_model = build_subnet(config, supernet.spec, supernet.space,
                               name=f"oqat_{supernet.bits}bit_subnet")
    model = quantize_model(float_model, "lsq", weight_bits=supernet.bits,
                           activation_bits=supernet.bits, skip=("stem_conv", "classifier"),
                           quantize_inputs=False)
    layers = {unwrapped_layer(layer).name: layer for layer in model.layers}

    def kernel(name):  # a wrapper's layer attribute holds the quantized tensor, not the variable
        variable, = [w for w in layers[name].weights
                     if w.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel")]
        return variable

    layers["stem_conv"].set_weights(supernet.stem.get_weights())
    layers["stem_bn"].set_weights(supernet.stem_bn.get_weights())
    layers["classifier"].set_weights(supernet.classifier.get_weights())
    steps = shared_steps(supernet)
    for stage, block, kernel_size, ratio in config.blocks():
        slot = supernet.slots[stage][block]
        hidden = slot.input_channels * ratio
        start = (slot.kernel_size - kernel_size) // 2
        prefix = f"stage{stage + 1}_block{block + 1}"
        kernel(f"{prefix}_expand_conv").assign(slot.expand[:, :, :, :hidden])
        kernel(f"{prefix}_depthwise_conv").assign(
            slot.depthwise[start:start + kernel_size, start:start + kernel_size, :hidden])
        kernel(f"{prefix}_project_conv").assign(slot.project[:, :, :hidden])
        for part, batch_norm, size in (("expand", slot.expand_bn, hidden),
                                       ("depthwise", slot.depthwise_bn, hidden),
                                       ("project", slot.project_bn, slot.output_channels)):
            unwrapped_layer(layers[f"{prefix}_{part}_bn"]).set_weights(
                [v.numpy()[:size] for v in (batch_norm.gamma, batch_norm.beta,
                                            batch_norm.moving_mean,
                                            batch_norm.moving_variance)])
    for layer_name, _, _, variables, _ in quantized_tensors(model):
        variables["step"].assign(steps[layer_name])  # the layers carry the steps' names
        variables["initialized"].assign(1.0)
    return model


def shared_steps(supernet: Supernet) -> Dict[str, tf.Variable]:
    """Every shared step variable, by the name of the layer it quantizes in an extracted
    model (``stem_relu``, ``stage1_block1_expand_conv``, ..., ``pool``)."""
    steps = {"stem_relu": supernet.stem_step.step, "pool": supernet.pool_step.step}
    for stage_slots in supernet.slots:
        for slot in stage_slots:
            steps.update({f"{slot.name}_{part}": step.step for part, step in slot.steps.items()})
    return steps


def step_values(supernet: Supernet) -> Dict[str, float]:
    """Every shared step's value, named as in :func:`shared_steps`."""
    return {name: float(step.numpy()) for name, step in shared_steps(supernet).items()}

