"""Which runtimes run INT2 weights (TF 2.21's schema has ``TensorType.INT2 = 19``)?

A small model (conv, depthwise conv, dense) quantized with LSQ at 2-bit weights, trained one
epoch, is exported with ``weight_storage="int4"`` (each kernel's integers, in [-2, 1], stored
unrefined and packed two per byte). Then, one op at a time, that op's INT4 kernel is rewritten
as an INT2 tensor (four values per byte, lowest bits first), and the file is run on every
runtime of :mod:`tfadaqat.runtimes` against the INT4 file.

Measured 2026-12-07 (ai-edge-litert 2.3, tflite-micro 0.dev20261023182759):

* CONV_2D: LiteRT refuses the INT2 filter ("Weight type INT2 (20) not supported for filter"),
  on XNNPACK and on the built-in kernels; TFLite Micro cannot load an INT2 tensor at all.
* DEPTHWISE_CONV_2D: LiteRT refuses it (its prepare accepts int8 and int4 filters only).
* FULLY_CONNECTED: LiteRT runs it; the built-in kernels give the INT4 file's outputs exactly,
  XNNPACK does not (its outputs differ from its INT4 run's by up to 0.061 on logits of order
  1); TFLite Micro cannot load it.

So INT2 packing would help only the dense layers of a file for LiteRT's built-in kernels, and
not on microcontrollers: tfadaqat packs at most to int4. This bench is a probe: it prints what
runs and exits 0 (non-zero only if the export itself fails).

Run from the repository root:  python -m bench.int2_support
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from absl import app

import tfadaqat
from tfadaqat import runtimes
from tfadaqat._compat import keras, tflite_schema

OPS = ("conv", "depthwise", "dense")


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    hidden = keras.layers.DepthwiseConv2D(3, activation="relu", name="depthwise")(hidden)
    outputs = keras.layers.Dense(5, name="dense")(keras.layers.Flatten()(hidden))
    return keras.Model(inputs, outputs)


def int4_to_int2(content: bytes, layer: str) -> bytes:
    """`content` with `layer`'s INT4 kernel rewritten as INT2 (its values must be in [-2, 1])."""
    schema = tflite_schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    rewritten = 0
    for tensor in model.subgraphs[0].tensors:
        if tensor.type != schema.TensorType.INT4 or not tensor.name.decode().startswith(
                layer + "/"):
            continue
        packed = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.uint8)
        nibbles = np.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1).astype(np.int16)
        values = np.where(nibbles > 7, nibbles - 16, nibbles)[:int(np.prod(tensor.shape))]
        if values.min() < -2 or values.max() > 1:
            raise ValueError(f"layer {layer!r}: values {np.unique(values)} do not fit INT2")
        crumbs = (values & 0x3).astype(np.uint8)
        crumbs = np.concatenate([crumbs, np.zeros(-len(crumbs) % 4, np.uint8)])
        model.buffers[tensor.buffer].data = (crumbs[0::4] | crumbs[1::4] << 2
                                             | crumbs[2::4] << 4 | crumbs[3::4] << 6)
        tensor.type = schema.TensorType.INT2
        rewritten += 1
    if rewritten != 1:
        raise ValueError(f"layer {layer!r}: {rewritten} INT4 kernels found, expected 1")
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def main(argv) -> int:
    del argv
    qmodel = tfadaqat.quantize_model(_model(), "lsq", weight_bits=2, activation_bits=4)
    qmodel.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), np.float32)
    qmodel.fit(x, rng.random((64, 5), np.float32), batch_size=32, verbose=0)
    path = "/tmp/int2_support_int4.tflite"
    report = tfadaqat.export_tflite(qmodel, path, weight_storage="int4")
    print(f"exported: {report.packing}")
    content = open(path, "rb").read()
    images = x[:16]
    reference = {runtime: runtimes.run(content, runtime, images)
                 for runtime in runtimes.RUNTIMES}
    print(f"{'op':<10} {'runtime':<8} result")
    for layer in OPS:
        int2 = int4_to_int2(content, layer)
        for runtime in runtimes.RUNTIMES:
            try:
                outputs = runtimes.run(int2, runtime, images)
            except RuntimeError as error:
                print(f"{layer:<10} {runtime:<8} refused: {str(error).splitlines()[0][:100]}")
                continue
            difference = float(np.abs(outputs - reference[runtime]).max())
            print(f"{layer:<10} {runtime:<8} runs; largest difference from the INT4 file "
                  f"{difference:.4g}")
    return 0


if __name__ == "__main__":
    app.run(main)
