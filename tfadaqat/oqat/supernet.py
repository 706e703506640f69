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
shared step size). The stem convolution and the classifier stay in float as in OQAT, or,
with ``edge_bits=8``, are quantized at that bit-width (input, stem kernel, classifier kernel
and logits, each with its own LSQ step) so that extracted sub-networks export to integer
TFLite. Quantization points are those :func:`tfadaqat.quantize_model` gives the
sub-network's own model, so that :func:`extract` reproduces the supernet's outputs.

BatchNormalization during training (the stem's too) normalises with the sub-network's batch
statistics and does not update moving statistics (they would mix sub-networks);
:func:`recalibrate` sets them for one sub-network from a few batches, as once-for-all does
before evaluating it. Evaluating or searching sub-networks therefore changes nothing a later
evaluation of another one depends on.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import numpy as np

from tfadaqat import first_execution
from tfadaqat._compat import keras, tf
from tfadaqat.cost import cost
from tfadaqat.methods.shared_step import SharedStep
from tfadaqat.oqat.architecture import SupernetSpec, build_subnet
from tfadaqat.oqat.space import SearchSpace, SubnetConfig
from tfadaqat.quantize import quantize_model
from tfadaqat.tensors import quantized_tensors, unwrapped_layer

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
            "expand_conv": SharedStep(bits, True, "weight", "expand_conv_step"),
            "expand_relu": SharedStep(bits, False, "activation", "expand_relu_step"),
            "depthwise_conv": SharedStep(bits, True, "weight", "depthwise_conv_step"),
            "depthwise_relu": SharedStep(bits, False, "activation", "depthwise_relu_step"),
            "project_conv": SharedStep(bits, True, "weight", "project_conv_step"),
            "project_bn": SharedStep(bits, True, "activation", "project_bn_step"),
            "add": SharedStep(bits, True, "activation", "add_step")}

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
    their gradients. With `distillation` (in-place distillation of once-for-all), the largest
    learns from the labels and every other sub-network from the largest's predictions:
    ``loss = CE(softmax(stop_gradient(z_largest)), softmax(z))``.

    Args:
      spec: The skeleton (:class:`tfadaqat.oqat.SupernetSpec`).
      space: The search space.
      bits: Bit-width of every quantized weight and activation of the blocks, and of the
        stem's and the pooling's outputs (an integer in [2, 8]).
      random_subnets: Random sub-networks per sandwich step.
      seed: Seed of the weight initialisation.
      distillation: Whether the smaller sub-networks learn from the largest's predictions.
      edge_bits: None keeps the stem convolution and the classifier in float (OQAT); an
        integer in [2, 8] quantizes the input, the stem kernel, the classifier kernel and
        the logits at that bit-width (needed to export extracted sub-networks).

    Raises:
      ValueError: For bits or edge_bits outside [2, 8] or a space that does not fit `spec`.
    """

    def __init__(self, spec: SupernetSpec, space: SearchSpace = SearchSpace(), bits: int = 4,
                 random_subnets: int = 2, seed: int = 0, edge_bits: Optional[int] = None,
                 distillation: bool = False, **kwargs):
        super().__init__(**kwargs)
        spec.check(space)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an integer in [2, 8], got {bits!r}")
        if edge_bits is not None and (isinstance(edge_bits, bool) or
                                      not isinstance(edge_bits, int) or not 2 <= edge_bits <= 8):
            raise ValueError(f"edge_bits must be None or an integer in [2, 8], got {edge_bits!r}")
        self.spec, self.space, self.bits, self.random_subnets = spec, space, bits, random_subnets
        if isinstance(random_subnets, bool) or not isinstance(random_subnets, int) or (
                random_subnets < 0):
            raise ValueError(f"random_subnets must be a non-negative integer, got "
                             f"{random_subnets!r}")
        self.seed, self.edge_bits, self.distillation = seed, edge_bits, bool(distillation)
        # The sandwich's mean loss; compile()'s own tracker would average only the label losses.
        self.sandwich_loss = keras.metrics.Mean(name="loss")
        self.stem_kernel = tf.Variable(
            keras.initializers.GlorotUniform(seed=seed + 7)(
                [3, 3, spec.input_shape[-1], spec.stem_channels]), name="stem_kernel")
        self.stem_bn = _BatchNorm(spec.stem_channels, "stem_bn")
        self.stem_step = SharedStep(bits, False, "activation", "stem_relu_step")
        self.pool_step = SharedStep(bits, True, "activation", "pool_step")
        self.classifier_kernel = tf.Variable(
            keras.initializers.GlorotUniform(seed=seed + 8)(
                [spec.stage_channels[-1], spec.num_classes]), name="classifier_kernel")
        self.classifier_bias = tf.Variable(tf.zeros([spec.num_classes]), name="classifier_bias")
        # "layer/tensor" of the extracted model -> step; empty with a float stem and classifier.
        self.edge_steps: Dict[str, SharedStep] = {}
        if edge_bits is not None:
            self.edge_steps = {
                "image_quantize_point/output": SharedStep(edge_bits, True, "activation",
                                                          "image_step"),
                "stem_conv/kernel": SharedStep(edge_bits, True, "weight", "stem_conv_step"),
                "classifier/kernel": SharedStep(edge_bits, True, "weight",
                                                "classifier_kernel_step"),
                "classifier/output": SharedStep(edge_bits, True, "activation",
                                                "classifier_output_step")}
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
        images = tf.convert_to_tensor(images, tf.float32)
        edges = self.edge_steps
        kernel = self.stem_kernel
        if edges:
            images = edges["image_quantize_point/output"](images, initialize)
            kernel = edges["stem_conv/kernel"](kernel, initialize)
        x = tf.nn.conv2d(images, kernel, self.spec.stem_stride, "SAME")
        x = self.stem_bn(x, batch_statistics, moments)
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
        kernel = self.classifier_kernel
        if edges:
            kernel = edges["classifier/kernel"](kernel, initialize)
        logits = tf.matmul(x, kernel) + self.classifier_bias
        if edges:
            logits = edges["classifier/output"](logits, initialize)
        return logits

    def call(self, images, training=None, config: Optional[SubnetConfig] = None):
        tensors = self.config_tensors(config or self.space.largest())
        return self._forward(images, tensors, batch_statistics=bool(training))

    def initialize_steps(self, images) -> None:
        """Sets every shared step from `images` run through the largest sub-network (LSQ's
        ``2 mean|x| / sqrt(Q_p)``)."""
        self._forward(images, self.config_tensors(self.space.largest()), batch_statistics=True,
                      initialize=True)

    def make_train_function(self, force=False):
        """Keras' train function, whose first call runs eagerly: the sandwich step is then
        traced once instead of twice (:mod:`tfadaqat.first_execution`)."""
        return first_execution.first_call_eager(self, super().make_train_function,
                                                "train_function", force)

    def train_step(self, data):
        images, labels = data[0], data[1]
        configs = [self.config_tensors(self.space.largest()),
                   self.config_tensors(self.space.smallest())]
        configs += [self._random_config_tensors() for _ in range(self.random_subnets)]
        variables = self.trainable_variables
        total = [tf.zeros_like(v) for v in variables]
        losses = []
        teacher = None
        for tensors in configs:
            with tf.GradientTape() as tape:
                logits = self._forward(images, tensors, batch_statistics=True)
                if teacher is None:
                    loss = self.compiled_loss(labels, logits, regularization_losses=self.losses)
                else:
                    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                        teacher, logits))
            if self.distillation and teacher is None:
                teacher = tf.nn.softmax(tf.stop_gradient(logits))
            gradients = tape.gradient(loss, variables)
            total = [t if g is None else t + g for t, g in zip(total, gradients)]
            losses.append(loss)
        self.optimizer.apply_gradients(zip(total, variables))
        self.sandwich_loss.update_state(tf.add_n(losses) / len(losses))
        self.compiled_metrics.update_state(labels, logits)  # the last (random) sub-network
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        """The sandwich's mean loss, then the compiled metrics (of the last sub-network)."""
        return [self.sandwich_loss] + [m for m in super().metrics if m.name != "loss"]


def recalibrate(supernet: Supernet, config: SubnetConfig, batches: Iterable) -> None:
    """Sets the moving BatchNorm statistics `config` uses (the stem's included) to the mean
    over `batches` (images, or ``(images, labels)``) of its batch statistics."""
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
    removed, i.e. ``log s + log 2`` each (OQAT's bit inheritance; fine-tune it afterwards). The
    steps of a quantized stem and classifier (``edge_bits``) keep their bit-width and values.

    Raises:
      ValueError: If `bits` is below 2 or not below the supernet's bit-width.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits < supernet.bits:
        raise ValueError(f"bits must be an integer in [2, {supernet.bits - 1}] (below the "
                         f"supernet's {supernet.bits} bits), got {bits!r}")
    child = Supernet(supernet.spec, supernet.space, bits, supernet.random_subnets,
                     supernet.seed, supernet.edge_bits, supernet.distillation)
    sample = tf.zeros((1,) + tuple(supernet.spec.input_shape))
    child(sample)
    supernet(sample)
    shift = (supernet.bits - bits) * np.log(2.0)  # steps x 2 per bit: log steps + log 2
    steps = {id(step) for step in shared_steps(supernet).values()}
    for target, source in zip(child.variables, supernet.variables):
        target.assign(source + shift if id(source) in steps else source)
    return child


def extract(supernet: Supernet, config: SubnetConfig):
    """The standalone quantized Keras model of `config`, with its slices of the supernet's
    weights, recalibrated BatchNorm statistics and the shared steps; its outputs equal
    ``supernet(x, config=config)`` in inference mode, and :func:`tfadaqat.summary` and
    :func:`tfadaqat.export_tflite` accept it."""
    float_model = build_subnet(config, supernet.spec, supernet.space,
                               name=f"oqat_{supernet.bits}bit_subnet")
    model = quantize_subnet(float_model, supernet.bits, supernet.edge_bits)
    layers = {unwrapped_layer(layer).name: layer for layer in model.layers}

    def kernel(name):  # a wrapper's layer attribute holds the quantized tensor, not the variable
        variable, = [w for w in layers[name].weights
                     if w.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel")]
        return variable

    kernel("stem_conv").assign(supernet.stem_kernel)
    unwrapped_layer(layers["stem_bn"]).set_weights(
        [v.numpy() for v in (supernet.stem_bn.gamma, supernet.stem_bn.beta,
                             supernet.stem_bn.moving_mean, supernet.stem_bn.moving_variance)])
    kernel("classifier").assign(supernet.classifier_kernel)
    bias, = [w for w in layers["classifier"].weights if w.name.endswith("bias:0")]
    bias.assign(supernet.classifier_bias)
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
    for layer_name, role, _, variables, _ in quantized_tensors(model):
        if f"{layer_name}/{role}" in supernet.edge_steps:
            variables["step"].assign(supernet.edge_steps[f"{layer_name}/{role}"].step)
        else:
            variables["step"].assign(tf.exp(steps[layer_name]))  # named as the layers
        variables["initialized"].assign(1.0)
    return model


def quantize_subnet(float_model, bits: int, edge_bits: Optional[int] = None):
    """A :func:`build_subnet` model quantized as the supernet quantizes it: LSQ at `bits`
    everywhere, the stem convolution and the classifier in float (`edge_bits` None) or, with
    the input, at `edge_bits`."""
    if edge_bits is None:
        edges = {"skip": ("stem_conv", "classifier"), "quantize_inputs": False}
    else:
        edges = {"layer_bits": {"image_quantize_point": edge_bits, "stem_conv": edge_bits,
                                "classifier": edge_bits}}
    return quantize_model(float_model, "lsq", weight_bits=bits, activation_bits=bits, **edges)


def network_cost(config: SubnetConfig, spec: SupernetSpec, space: SearchSpace, bits: int,
                 edge_bits: Optional[int] = None):
    """:func:`tfadaqat.cost` of the whole quantized sub-network `config` (stem and
    classifier included, as counted for any other quantized model), without a supernet."""
    return cost(quantize_subnet(build_subnet(config, spec, space), bits, edge_bits))


def shared_steps(supernet: Supernet) -> Dict[str, tf.Variable]:
    """Every shared step's variable (``log s``, see ``SharedStep``) at the supernet's bit-width, by
    the name of the layer it quantizes in an extracted model (``stem_relu``,
    ``stage1_block1_expand_conv``, ..., ``pool``); the ``edge_bits`` steps are in
    ``supernet.edge_steps``."""
    steps = {"stem_relu": supernet.stem_step.log_step, "pool": supernet.pool_step.log_step}
    for stage_slots in supernet.slots:
        for slot in stage_slots:
            steps.update({f"{slot.name}_{part}": step.log_step
                          for part, step in slot.steps.items()})
    return steps


def step_values(supernet: Supernet) -> Dict[str, float]:
    """Every shared step's value ``s``, named as in :func:`shared_steps`."""
    return {name: float(np.exp(step.numpy())) for name, step in shared_steps(supernet).items()}

