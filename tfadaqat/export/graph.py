"""Graph emission: the quantized model as a ``tf.function`` of batch-1 inputs in the form
the TFLite converter turns into int8 kernels.

The converter only ever sees 8-bit FakeQuant ops whose step *is* the learned step:

* **Weights** are constants ``r k x scale / r`` behind a symmetric, narrow-range 8-bit
  FakeQuant of range ``+-127 scale / r`` (:mod:`tfadaqat.export.integers`), so the file
  stores the integers exactly, zero point 0.
* **Activations** quantized to ``s k``, ``k`` in ``[low, high]``, get an 8-bit FakeQuant of
  step ``s``. Unsigned (``[0, high]``): range ``[(high - 255) s, high s]``, zero point
  ``127 - high``, so int8's top is ``high s`` and the producing kernel's saturation and fused
  ReLU do the clamp. Signed (``[-high, high]``): the same range, and one MAXIMUM op clamps
  the bottom at ``-high s``. Either way the tensor takes at most ``2^b`` values.
* **Fixed grids.** Softmax and sigmoid outputs were trained on step 1/256 (integers 0..255),
  tanh outputs on 1/128 (-128..127): what TFLite's int8 SOFTMAX, LOGISTIC and TANH produce.
* **Per-channel affine maps** (a BatchNormalization that follows no convolution, Rescaling,
  Normalization, :class:`tfadaqat.layers.ChannelAffine`): ``y = m_c x + o_c`` becomes one
  integer 1x1 depthwise convolution whose weights are ``127 sign(m_c)`` at scale
  ``|m_c| / 127`` (the float32 multiplier itself) and whose bias is ``o_c``.

Every other layer kind of :mod:`tfadaqat.layer_kinds` (convolutions, dense, depthwise,
transposed convolutions, add, multiply, pooling, mean, concatenation, resizing, GELU) is
emitted as the float op the converter makes integer. A layer with no integer kernel raises,
naming it, unless the plan allows float ops.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from tfadaqat._compat import keras, tf, wrapper_output_quantizer, wrapper_weight_quantizers
from tfadaqat.export.integers import INT8_WEIGHT_LIMIT, Kernel, stored_kernel
from tfadaqat.export.plan import ExportPlan, input_grid, is_relu6, make_plan
from tfadaqat.layer_kinds import activation_name, kind_of
from tfadaqat.layer_normalization import Int8LayerNormalization
from tfadaqat.tensors import is_quantized_wrapper, unwrapped_layer

_layers = keras.layers


#: Kinds whose unsigned output needs no ReLU before its FakeQuant (it cannot be negative).
_NON_NEGATIVE_KINDS = ("average_pool", "max_pool", "concatenate", "softmax", "sigmoid",
                       "multiply", "resize_bilinear", "same_grid")


def _fake_quantized_kernel(kernel: Kernel, channel_multiplier, shape=None):
    """The kernel as the converter must see it: a symmetric narrow-range 8-bit FakeQuant whose
    scale is :func:`stored_kernel`'s, so the file holds exactly its integers."""
    integers, scale = stored_kernel(kernel, channel_multiplier, shape)
    values = tf.constant(integers * scale, tf.float32)
    if channel_multiplier is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            values, -127.0 * scale, 127.0 * scale, num_bits=8, narrow_range=True)
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        values, -127.0 * scale, 127.0 * scale, num_bits=8, narrow_range=True)


def _weight_layer(wrapper, x, plan):
    inner = wrapper.layer
    kernel = plan.weights[wrapper.name]
    bias = plan.biases[wrapper.name]
    multiplier = None
    if wrapper.name in plan.affines:
        multiplier, offset = plan.affines[wrapper.name]
        bias = multiplier * bias + offset
    kind = kind_of(inner).name
    if kind == "depthwise_conv":
        height, width, channels, depth = kernel.integers.shape
        if multiplier is not None:  # per output channel c * depth + k: last axis of [.., 1, C*D]
            flat = _fake_quantized_kernel(kernel, multiplier,
                                          (height, width, 1, channels * depth))
            weights = tf.reshape(flat, kernel.integers.shape)
        else:
            weights = _fake_quantized_kernel(kernel, None)
        y = tf.nn.depthwise_conv2d(x, weights, (1,) + tuple(inner.strides) + (1,),
                                   inner.padding.upper(), dilations=inner.dilation_rate)
    elif kind == "conv_transpose":
        output_shape = tuple(int(d) for d in inner.compute_output_shape(x.shape))
        y = tf.nn.conv2d_transpose(x, _fake_quantized_kernel(kernel, None), output_shape,
                                   inner.strides, inner.padding.upper(),
                                   dilations=inner.dilation_rate)
    elif kind == "conv":
        y = tf.nn.conv2d(x, _fake_quantized_kernel(kernel, multiplier), inner.strides,
                         inner.padding.upper(), dilations=inner.dilation_rate)
    elif kind == "conv1d":  # as a 2-D convolution over a height of 1
        if inner.padding == "causal":
            raise ValueError(f"layer {inner.name!r}: Conv1D with causal padding has no integer "
                             "kernel here; use padding='valid' or 'same'")
        width, inputs, outputs = kernel.integers.shape
        image = tf.expand_dims(x, 1)
        y = tf.nn.conv2d(image, _fake_quantized_kernel(kernel, multiplier,
                                                       (1, width, inputs, outputs)),
                         (1, inner.strides[0]), inner.padding.upper(),
                         dilations=(1, inner.dilation_rate[0]))
        y = tf.squeeze(y, 1)
    elif len(x.shape) > 2 or multiplier is not None:
        # Dense on a feature map, or with per-channel scales (TFLite's FULLY_CONNECTED takes
        # no per-channel weights from the converter): a 1x1 convolution.
        inputs, outputs = kernel.integers.shape
        shape = x.shape
        image = tf.reshape(x, [-1, 1, 1, inputs]) if len(shape) == 2 else tf.reshape(
            x, [-1, 1, int(np.prod(shape[1:-1])), inputs]) if len(shape) != 4 else x
        y = tf.nn.conv2d(image, _fake_quantized_kernel(kernel, multiplier,
                                                       (1, 1, inputs, outputs)), 1, "VALID")
        y = tf.reshape(y, [-1] + [int(d) for d in shape[1:-1]] + [outputs])
    else:
        y = tf.matmul(x, _fake_quantized_kernel(kernel, multiplier))
    if inner.use_bias or multiplier is not None:
        y = y + tf.constant(np.asarray(bias, np.float32))
    return _activation(inner, inner.activation, y, quantized=wrapper.name in plan.output_grids)


def _channel_affine(layer, x, plan):
    """``m_c x + o_c`` as an integer 1x1 depthwise convolution (see the module docstring)."""
    multiplier, offset = plan.channel_affines[layer.name]
    return _depthwise_affine(x, multiplier, offset)


def _depthwise_affine(x, multiplier, offset=None):
    """``m_c x + o_c`` on the last axis of `x` (any rank) by a 1x1 depthwise convolution whose
    int8 weights are ``127 sign(m_c)`` with scale ``|m_c| / 127``: the file stores ``m_c``
    exactly, and the converter quantizes ``o_c`` onto the int32 bias grid. No offset: no
    bias add."""
    shape = x.shape
    channels = int(shape[-1])
    multiplier = np.broadcast_to(multiplier, (channels,)).astype(np.float32)
    scale = np.maximum(np.abs(multiplier) / INT8_WEIGHT_LIMIT, 1e-12).astype(np.float32)
    integers = np.where(multiplier == 0, 0.0, INT8_WEIGHT_LIMIT * np.sign(multiplier))
    weights = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.constant((integers * scale).reshape(1, 1, 1, channels), tf.float32),
        -127.0 * scale, 127.0 * scale, num_bits=8, narrow_range=True)
    image = x if len(shape) == 4 else tf.reshape(
        x, [-1, 1, 1 if len(shape) == 2 else int(np.prod(shape[1:-1])), channels])
    y = tf.nn.depthwise_conv2d(image, tf.reshape(weights, (1, 1, channels, 1)), (1, 1, 1, 1),
                               "VALID")
    if offset is not None:
        y = y + tf.constant(np.broadcast_to(offset, (channels,)).astype(np.float32))
    return y if len(shape) == 4 else tf.reshape(y, [-1] + [int(d) for d in shape[1:]])


_ACTIVATION_OPS = {"softmax": tf.nn.softmax, "sigmoid": tf.sigmoid, "tanh": tf.tanh,
                   "gelu": lambda y: tf.nn.gelu(y, approximate=False)}


def _activation(layer, activation, y, quantized: bool = False):
    if activation in (None, keras.activations.linear):
        return y
    if activation is keras.activations.relu:
        return tf.nn.relu(y)
    if is_relu6(activation):
        return tf.nn.relu(y) if quantized else tf.nn.relu6(y)
    name = activation_name(layer)
    if name in _ACTIVATION_OPS and type(layer) is _layers.Activation:
        if name == "gelu" and getattr(activation, "__defaults__", None) == (True,):
            return tf.nn.gelu(y, approximate=True)
        return _ACTIVATION_OPS[name](y)
    raise ValueError(f"layer {layer.name!r}: activation {name!r} has no integer kernel here; "
                     f"allowed: linear, relu, relu6, {', '.join(_ACTIVATION_OPS)}")


def _is_plain_relu(layer) -> bool:
    inner = unwrapped_layer(layer)
    if isinstance(inner, _layers.ReLU):
        return not (inner.max_value or inner.negative_slope or inner.threshold)
    return isinstance(inner, _layers.Activation) and activation_name(inner) == "relu"


def _relu_beside_another(layer, plan) -> bool:
    """Whether `layer` is a plain ReLU whose input also feeds another plain ReLU layer."""
    if not _is_plain_relu(layer) or len(plan.inputs.get(layer.name, [])) != 1:
        return False
    source = plan.inputs[layer.name][0]
    return any(node.layer.name != layer.name and plan.inputs.get(node.layer.name) == [source]
               and _is_plain_relu(node.layer) for node in plan.nodes)


def _relu_layer(layer, y, quantized: bool):
    if layer.negative_slope or layer.threshold:
        raise ValueError(f"layer {layer.name!r}: a ReLU with negative_slope or threshold has no "
                         "integer kernel here")
    if layer.max_value is None or quantized:  # a quantized output's grid holds the cap
        return tf.nn.relu(y)
    return tf.clip_by_value(y, 0.0, float(layer.max_value))


def _quantize_output(wrapper, y, plan):
    """Clamps `y` to the learned grid and fake-quantizes it with the 8-bit range of that step.

    A ReLU cap ``c`` (ReLU6) is part of the grid: Keras computes ``round(min(y, c) / s)``,
    which is ``round(y / s)`` clamped at ``round(c / s)``, so the grid's top integer becomes
    ``min(high, floor(c / s + 1/2))``. (The converter leaves a convolution in float when a
    separate clip sits between it and its FakeQuant.)
    """
    scale, low, high, bits = plan.output_grids[wrapper.name]  # a cap is applied there
    if (low == 0 and high > 255) or (low < 0 and high > 127):
        raise ValueError(f"layer {wrapper.layer.name!r}: its output has {bits} bits; "
                         "activations above 8 bits (int16) are not supported by this export yet")
    if low == 0:
        # Pooling and concatenation of unsigned tensors are non-negative already; a ReLU there
        # (no kernel to fuse into) would make the converter round once more on the input grid.
        if kind_of(wrapper.layer).name not in _NON_NEGATIVE_KINDS:
            y = tf.nn.relu(y)
        # Zero point 127 - high puts int8's top at high * scale: the kernel's own saturation
        # clamps there, and its fused ReLU at 0, with no MINIMUM op.
        return _int8_fake_quant(y, scale, high)
    # Signed: the same top at high * scale; the bottom needs one MAXIMUM op. After an average
    # pool whose input cannot take the mean below the grid's bottom (low - 1/2 steps) the clamp
    # is left out: there a MAXIMUM made the converter give the MEAN the input's scale and
    # requantize after it (a second rounding: 24-30% of EfficientNetV2B0's squeeze-excite
    # means one step off Keras's), or refuse the MAXIMUM when the two steps are close
    # (MobileNetV3Small). Where the mean can go below it (an output step finer than the
    # input's), the int8 range reaches (high - 255) steps, far below a low-bit grid's bottom:
    # the mean is rounded onto the grid first, then an exact identity convolution (a MAXIMUM
    # right after the MEAN is what the converter mishandles) carries it to the clamp.
    if kind_of(wrapper.layer).name == "average_pool" and not _pools_by_convolution(wrapper):
        y = _int8_fake_quant(y, scale, high)
        if _mean_stays_on_grid(plan, wrapper.name, scale, low):
            return y
        return _fake_quant_on_grid(_int8_fake_quant(_identity_conv(y), scale, high), scale,
                                   low, high)
    return _fake_quant_on_grid(y, scale, low, high)


def _mean_stays_on_grid(plan, layer_name: str, scale: float, low: int) -> bool:
    """Whether an average of the layer's input can never round below ``low x scale``."""
    grid = input_grid(plan, layer_name)
    return grid is not None and grid[0] * grid[1] >= (low - 0.5) * scale


def _same_step(grid, scale: float) -> bool:
    return grid is not None and np.isclose(grid[0], scale, rtol=1e-6, atol=0.0)


def _identity_conv(x):
    """`x` through a 1x1 depthwise convolution of weight 1 (int8 127, scale 1/127): with the
    FakeQuant after it, an int8 DEPTHWISE_CONV_2D that requantizes `x` onto a new step.

    XNNPACK runs a plain requantization (QUANTIZE int8 -> int8) with a multiplier of 8
    fractional bits, which moved 0.4% of the values of a concatenation one step off Keras;
    a convolution's requantization uses 32 bits and matches Keras' rounding."""
    return _depthwise_affine(x, 1.0)


def _pools_by_convolution(layer) -> bool:
    """Whether `layer` (or its quantize wrapper) is an average pool exported as depthwise
    convolutions (see :func:`_average_pool_convolutions`)."""
    inner = unwrapped_layer(layer)
    return isinstance(inner, _layers.AveragePooling2D) and inner.data_format == "channels_last"


def _window_groups(size: int, pool: int, stride: int, padding: str):
    """The output positions of one axis grouped by how their window is cut at the borders.

    Returns:
      ``[(first input index, input span, window length, outputs)]`` in order: the outputs of
      a group read windows of `window length` values (the pool cut by the padding) every
      `stride`, starting at `first input index`.
    """
    if padding == "valid":
        outputs = (size - pool) // stride + 1
        return [(0, (outputs - 1) * stride + pool, pool, outputs)]
    outputs = -(-size // stride)
    before = max((outputs - 1) * stride + pool - size, 0) // 2
    groups = []
    for index in range(outputs):
        start = index * stride - before
        cut_before, cut_after = max(0, -start), max(0, start + pool - size)
        length = pool - cut_before - cut_after
        if groups and groups[-1][2] == length and groups[-1][4] == (cut_before, cut_after):
            first, _, _, count, cuts = groups[-1]
            groups[-1] = (first, count * stride + length, length, count + 1, cuts)
        else:
            groups.append((start + cut_before, length, length, 1, (cut_before, cut_after)))
    return [group[:4] for group in groups]


def _average_pool_convolutions(x, layer, grid):
    """The average pool `layer` as int8 depthwise convolutions of weights ``1 / n``.

    TFLite's int8 AVERAGE_POOL_2D keeps its input's scale: the average is rounded onto the
    input's grid and a QUANTIZE op then rounds it onto the layer's own, twice where Keras
    rounds once (2x2 and 3x3 pools of a small model: 28-75% of its outputs one to six steps
    off, on XNNPACK and the reference kernels alike). A depthwise convolution of weights
    ``1 / n`` (int8 127 at scale ``1 / (127 n)``) requantizes the sum onto the layer's grid in
    one rounding, as Keras does. A window that "same" padding cuts averages fewer values:
    the output is assembled from one convolution per kind of cut (border rows and columns,
    corners, interior), each on the layer's `grid` ``(scale, low, high)`` so that the
    concatenations keep it.
    """
    inner = unwrapped_layer(layer)
    height, width = (int(d) for d in x.shape[1:3])
    rows = _window_groups(height, inner.pool_size[0], inner.strides[0], inner.padding)
    columns = _window_groups(width, inner.pool_size[1], inner.strides[1], inner.padding)
    bands = []
    for row_start, row_span, window_rows, _ in rows:
        pieces = []
        for column_start, column_span, window_columns, _ in columns:
            piece = _average_convolution(
                x[:, row_start:row_start + row_span, column_start:column_start + column_span],
                (window_rows, window_columns), inner.strides)
            if grid is not None and (len(rows) > 1 or len(columns) > 1):
                piece = _fake_quant_on_grid(piece, *grid)
            pieces.append(piece)
        bands.append(pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=2))
    return bands[0] if len(bands) == 1 else tf.concat(bands, axis=1)


def _average_convolution(x, window, strides):
    """The mean of every `window` (``(rows, columns)``) at `strides`, "valid" padding, as a
    depthwise convolution whose int8 weights are all 127 with scale ``1 / (127 n)``."""
    channels = int(x.shape[-1])
    height, width = int(window[0]), int(window[1])
    scale = np.float32(1.0 / (INT8_WEIGHT_LIMIT * height * width))
    kernel = np.full((height, width, channels, 1), INT8_WEIGHT_LIMIT * scale, np.float32)
    weights = tf.quantization.fake_quant_with_min_max_vars(  # one scale for every channel
        tf.constant(kernel), -127.0 * scale, 127.0 * scale, num_bits=8, narrow_range=True)
    return tf.nn.depthwise_conv2d(x, weights, (1, int(strides[0]), int(strides[1]), 1),
                                  "VALID")


def _fake_quant_on_grid(y, scale: float, low: int, high: int):
    """`y` rounded onto ``scale x [low, high]`` as an int8 tensor of that step and top.

    The clamp at the bottom is kept even where `y` cannot go below it: between two FakeQuant
    ops the converter needs an op to carry the requantization (without one it kept the first
    scale and broke CONCATENATION's same-scale rule)."""
    return _int8_fake_quant(tf.maximum(y, low * scale), scale, high)


def _int8_fake_quant(y, scale: float, high: int):
    """`y` as int8 with step `scale` and top ``high x scale`` (zero point ``127 - high``)."""
    return tf.quantization.fake_quant_with_min_max_vars(y, (high - 255.0) * scale,
                                                        high * scale, num_bits=8)


def _layer_op(layer, inputs, plan) -> tf.Tensor:
    """The float ops of one layer on its input tensors (quantization is added by the caller)."""
    inner = unwrapped_layer(layer)
    kind = kind_of(inner)
    x = inputs[0] if len(inputs) == 1 else None
    name = kind.name if kind is not None else None
    if layer.name in plan.folded or (kind is not None and kind.weights):
        if not is_quantized_wrapper(layer) or not wrapper_weight_quantizers(layer):
            return _float_layer(inner, inputs, plan, "it is not quantized (skipped or float)")
        return _weight_layer(layer, x, plan)
    if isinstance(inner, _layers.BatchNormalization) and inner.name in plan.folded_batch_norms:
        return x
    quantized = layer.name in plan.output_grids
    if name == "channel_affine":
        return _channel_affine(inner, x, plan)
    if quantized and _relu_beside_another(layer, plan):
        # Two ReLU layers on one tensor, each with its own grid: the converter merges the two
        # RELU ops into one, whose one output cannot take both scales, and leaves it in float
        # (NASNetMobile's cells). Each moves onto its own grid first (a requantization), then
        # the ReLU runs on that grid: distinct ops, both int8. (A convolution of weight 1,
        # which rounds as Keras does, is merged with its twin like the RELU.)
        scale, _, high, _ = plan.output_grids[layer.name]
        return tf.nn.relu(_int8_fake_quant(x, scale, high))
    if isinstance(inner, _layers.ReLU):
        return _relu_layer(inner, x, quantized)
    if isinstance(inner, _layers.Activation):
        if kind is None:
            return _float_layer(inner, inputs, plan, f"activation {activation_name(inner)!r} "
                                "has no integer kernel here")
        return _activation(inner, inner.activation, x, quantized)
    if name == "layer_norm":
        if isinstance(inner, Int8LayerNormalization):
            # Every intermediate carries its own FakeQuant range: the converter takes them.
            return inner(x, training=False)
        if not plan.calibrated:
            return _float_layer(inner, inputs, plan, "the statistics inside a "
                                "LayerNormalization need a representative_dataset to be "
                                "quantized")
        return inner(x)
    if name == "add":
        return tf.add_n(inputs) if len(inputs) > 2 else inputs[0] + inputs[1]
    if name == "multiply":
        y = inputs[0]
        for other in inputs[1:]:
            y = y * other
        return y
    if isinstance(inner, _layers.Concatenate):
        if quantized:
            # Each input moves onto the output's grid first, rounded once, as in Keras. Left
            # to itself the converter requantizes one input onto the other's scale and the
            # concatenation onto the output's: two roundings, one step off for ~16% of values.
            scale, low, high, _ = plan.output_grids[layer.name]
            sources = plan.inputs[layer.name]
            inputs = [_fake_quant_on_grid(
                t if _same_step(plan.output_grids.get(source), scale) else _identity_conv(t),
                scale, low, high) for t, source in zip(inputs, sources)]
        return tf.concat(inputs, axis=inner.axis)
    if _pools_by_convolution(layer):
        grid = plan.output_grids.get(layer.name)
        return _average_pool_convolutions(x, layer, None if grid is None else grid[:3])
    if isinstance(inner, (_layers.AveragePooling2D, _layers.MaxPooling2D)):
        pool = tf.nn.avg_pool2d if isinstance(inner, _layers.AveragePooling2D) else tf.nn.max_pool2d
        return pool(x, inner.pool_size, inner.strides, inner.padding.upper())
    if isinstance(inner, (_layers.GlobalAveragePooling2D, _layers.GlobalMaxPooling2D,
                          _layers.GlobalAveragePooling1D, _layers.GlobalMaxPooling1D)):
        reduce = (tf.reduce_mean if isinstance(inner, (_layers.GlobalAveragePooling2D,
                                                       _layers.GlobalAveragePooling1D))
                  else tf.reduce_max)
        axes = [1, 2] if len(x.shape) == 4 else [1]
        return reduce(x, axis=axes, keepdims=bool(inner.keepdims))
    if isinstance(inner, _layers.Flatten):
        return tf.reshape(x, [tf.shape(x)[0], -1])
    if isinstance(inner, _layers.Reshape):
        return tf.reshape(x, [tf.shape(x)[0]] + list(inner.target_shape))
    if isinstance(inner, _layers.ZeroPadding2D):
        (top, bottom), (left, right) = inner.padding
        return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    if isinstance(inner, (_layers.Dropout, _layers.SpatialDropout2D, _layers.Identity)):
        return x
    if isinstance(inner, (_layers.Cropping2D, _layers.UpSampling2D)) or name in (
            "same_grid", "max_pool", "resize_bilinear"):
        return inner(x)  # slicing and resizing: the converter makes them integer
    return _float_layer(inner, inputs, plan, "it has no integer kernel in this export")


def _float_layer(layer, inputs, plan, reason: str):
    """The layer itself, in float, when `plan` allows float ops; else the error naming it."""
    if not plan.allow_float_ops:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be exported "
                         f"with integer kernels: {reason}. Pass allow_float_ops=True for a "
                         "file that runs it in float (listed in the report's float_ops), or "
                         "quantize the model without skipping it.")
    return layer(*inputs) if len(inputs) > 1 else layer(inputs[0])


def _pin_kept_grid(layer, y, plan):
    """Restates the grid a value-moving layer (reshape, padding, nearest resizing, max pooling)
    keeps, as a FakeQuant of the same range, so that the converter never gives its output
    another scale (it would propagate a consumer's scale back through these ops and fail
    their same-scale constraint). The values are on that grid already: nothing changes."""
    kind = kind_of(unwrapped_layer(layer))
    if kind is None or kind.output != "keep" or isinstance(layer, _layers.InputLayer):
        return y
    grid = input_grid(plan, layer.name)
    if grid is None or y.dtype != tf.float32:
        return y
    scale, _, high, _ = grid
    return _int8_fake_quant(y, scale, high)


def integer_function(model) -> Callable:
    """The model as a ``tf.function`` of batch-1 inputs, in the form the converter makes int8.

    Raises:
      ValueError: For a model without tfadaqat quantizers, multiple inputs or outputs, or a
        layer that has no integer kernel (named in the message).
    """
    return build_integer_function(model, make_plan(model))


def build_integer_function(model, plan: ExportPlan) -> Callable:
    output_name = model.outputs[0]._keras_history.layer.name
    spec = tf.TensorSpec([1] + list(model.inputs[0].shape[1:]), tf.float32)

    def forward(images):
        values: Dict[str, tf.Tensor] = {}
        for node in plan.nodes:
            layer = node.layer
            if isinstance(layer, _layers.InputLayer):
                values[layer.name] = images
                continue
            with tf.name_scope(unwrapped_layer(layer).name):
                y = _layer_op(layer, [values[name] for name in plan.inputs[layer.name]], plan)
                if is_quantized_wrapper(layer) and wrapper_output_quantizer(layer)[0] is not None:
                    y = _quantize_output(layer, y, plan)
                else:
                    y = _pin_kept_grid(layer, y, plan)
            values[layer.name] = y
        return values[output_name]

    # Build once eagerly so every layer error is raised here, with its name.
    forward(tf.zeros(spec.shape))
    return tf.function(forward, input_signature=[spec])
