"""``tfadaqat export`` (and ``python -m tfadaqat.export``): export a saved model from the
command line, optionally verified on scikit-learn's digits."""

from __future__ import annotations

import argparse

import numpy as np

from tfadaqat._compat import tf
from tfadaqat.export.convert import TARGETS, export_tflite
from tfadaqat.export.plan import WEIGHT_STORAGES
from tfadaqat.quantize import load_model
from tfadaqat.runtimes import RUNTIMES, validate_runtimes


def _digits_like(model) -> np.ndarray:
    """scikit-learn's digits test split (the last quarter), resized to the model's input."""
    from sklearn.datasets import load_digits
    images = (load_digits().images / 16.0).astype(np.float32)[..., None]
    height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
    images = tf.image.resize(images, (height, width)).numpy().clip(0.0, 1.0)
    return np.repeat(images, channels, axis=-1)[-len(images) // 4:]


def main(argv=None, prog: str = "python -m tfadaqat.export") -> int:
    """``tfadaqat export --model PATH.keras --out model.tflite [--int8-io]
    [--weight-storage int8|int4] [--verify-digits]`` (see :mod:`tfadaqat_cli`, which keeps
    TensorFlow's start-up lines off the terminal; ``python -m tfadaqat.export`` still works)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Exports a model saved from tfadaqat to an integer TFLite file.")
    parser.add_argument("--model", required=True, help="a .keras file saved from tfadaqat")
    parser.add_argument("--out", required=True, help="the .tflite file to write")
    parser.add_argument("--int8-io", action="store_true", help="int8 input and output")
    parser.add_argument("--target", choices=tuple(TARGETS), default="litert",
                        help="where the file runs: litert (LiteRT/XNNPACK: int8 kernels, "
                             "verified on xnnpack) or tflm (TensorFlow Lite Micro: kernels "
                             "of <= 4 bits packed as int4, verified on tflm)")
    parser.add_argument("--weight-storage", choices=WEIGHT_STORAGES, default=None,
                        help="int4 packs kernels of <= 4 bits (smaller, slower with XNNPACK); "
                             "default: the target's")
    parser.add_argument("--verify-digits", action="store_true",
                        help="compare with Keras on scikit-learn's digits (resized)")
    parser.add_argument("--runtimes", default=None,
                        help=f"comma-separated runtimes to verify on, among "
                             f"{','.join(RUNTIMES)} (default: the target's)")
    args = parser.parse_args(argv)
    runtimes = None if args.runtimes is None else validate_runtimes(
        [name.strip() for name in args.runtimes.split(",") if name.strip()])
    print(f"loading {args.model}", flush=True)
    try:
        model = load_model(args.model)
    except Exception as error:  # h5py, zipfile and Keras each raise their own types
        raise ValueError(f"could not load {args.model} as a saved tfadaqat model: "
                         f"{error}") from error
    io_type = tf.int8 if args.int8_io else tf.float32
    verify = _digits_like(model) if args.verify_digits else None
    report = export_tflite(model, args.out, input_type=io_type, output_type=io_type,
                           verify_with=verify, target=args.target, runtimes=runtimes,
                           weight_storage=args.weight_storage,
                           progress=lambda m: print(m, flush=True))
    print(f"target {report.target}; file {report.file_bytes:,} bytes; float32 "
          f"{report.float32_bytes:,}; packed "
          f"{report.packed_bytes:,.0f}; {report.packing}")
    for row in report.layers:
        print(f"  {row.layer}: {row.bits} bits, {row.distinct_values} distinct of "
              f"{row.allowed_values} allowed")
    for runtime, agreement in report.runtimes.items():
        print(f"verified on {report.examples} images with {runtime}: top-1 agreement "
              f"{agreement['top1_agreement']:.4f}, largest output difference "
              f"{agreement['max_output_difference']:.2f} steps, "
              f"{agreement['differing']:.2%} of outputs differ")
        exact = report.reference_arithmetic.get(runtime)
        if exact is not None:
            print(f"  {runtime} against the file simulated in its arithmetic (two roundings "
                  f"a requantization): {1 - exact['differing']:.2%} of outputs equal, largest "
                  f"difference {exact['max_output_difference']:.2f} steps")
    if report.integer_model:
        print(f"the file's integers rounded once, as Keras rounds: top-1 agreement "
              f"{report.integer_model['top1_agreement']:.4f}, "
              f"{report.integer_model['within_one_step']:.2%} of outputs within 1 step")
    if report.simulation_error:
        print(f"not simulated: {report.simulation_error}")
    if report.tflm_arena:
        arena = report.tflm_arena
        print(f"TFLite Micro arena: {arena['total_bytes']:,} bytes of RAM "
              f"({arena['activation_bytes']:,} hold the activations, "
              f"{arena['persistent_bytes']:,} persist, the rest is used while planning)")
    return 0
