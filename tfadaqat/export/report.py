"""What :func:`tfadaqat.export_tflite` returns: the file's sizes, ops, stored weights and,
when verified, its agreement with the Keras model on each runtime."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional



@dataclasses.dataclass(frozen=True)
class LayerExport:
    """One quantized weight tensor in the file: learned bits against stored distinct values."""

    layer: str
    bits: int
    allowed_values: int
    distinct_values: int


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_tflite` wrote and, with ``verify_with``, how it agrees with Keras.

    Attributes:
      path: The file written.
      target: Where it is meant to run (``export_tflite``'s `target`: "litert" or "tflm").
      file_bytes: Its size.
      float32_bytes: The model's parameters stored as float32.
      packed_bytes: ``sum(params x bits) / 8`` over kernels, plus int32 biases: what a file
        packing the learned bits would take.
      packing: How kernels are stored: int8, or how many are packed as int4
        (``weight_storage="int4"``).
      ops: The TFLite op names in the file, in order.
      layers: Per quantized kernel, the learned bits and distinct integers in the file.
      examples: Examples compared with the Keras model (0 without ``verify_with``).
      runtimes: Per runtime verified on (:mod:`tfadaqat.runtimes`, ``export_tflite``'s
        `runtimes`), the agreement with the Keras model: ``top1_agreement``,
        ``top1_strict_agreement``, ``max_output_difference``, ``within_one_step``,
        ``within_two_steps`` and ``differing`` (share of output values not equal to Keras').
        The fields below are those of the first runtime.
      top1_agreement: Fraction of examples where the file's and the Keras model's sets of
        top-scoring classes share a class. Quantized logits often tie at the top, and which
        of the tied classes ``argmax`` returns is arbitrary; ties count once.
      top1_strict_agreement: Fraction where ``argmax`` of the two agrees, ties broken by index.
      max_output_difference: Largest ``|tflite - keras|`` over the outputs, in output steps.
      within_two_steps: Fraction of output values within 2 output steps of Keras'.
      output_step: The output step those differences are counted in.
      float_ops: Ops left in float (only with ``allow_float_ops=True``), by TFLite op name.
      reference_arithmetic: Per reference-kernel runtime verified on ("builtin", "tflm"): its
        agreement (same keys as `runtimes`) with the file simulated in that runtime's
        integer arithmetic (:func:`tfadaqat.export.simulation.simulate`), which rounds each
        requantization twice where the Keras model rounds once. Equal outputs mean the
        runtime computes the trained integers and differs from Keras by its rounding only.
      integer_model: With a reference-kernel runtime: the agreement with the Keras model of
        the file's integers rounded once (``simulate(..., "single")``): that the file holds
        what was trained, whatever the runtime.
      simulation_error: Why the two fields above are empty although a reference-kernel
        runtime was verified on (an op the simulation does not cover); None otherwise.
      tflm_arena: When verified on "tflm": the tensor arena TensorFlow Lite Micro needs
        (:func:`tfadaqat.runtimes.tflm_arena`): ``total_bytes`` (the RAM to set aside: the
        smallest arena TFLM accepts), ``activation_bytes`` (int8 activations, placed by its
        memory planner) and ``persistent_bytes``. Empty otherwise.
    """

    path: str
    file_bytes: int
    float32_bytes: int
    packed_bytes: float
    packing: str
    ops: List[str]
    layers: List[LayerExport]
    examples: int = 0
    runtimes: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    top1_agreement: Optional[float] = None
    top1_strict_agreement: Optional[float] = None
    max_output_difference: Optional[float] = None
    within_two_steps: Optional[float] = None
    output_step: Optional[float] = None
    float_ops: List[str] = dataclasses.field(default_factory=list)
    tflm_arena: Dict[str, int] = dataclasses.field(default_factory=dict)
    target: str = "litert"
    reference_arithmetic: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    integer_model: Dict[str, float] = dataclasses.field(default_factory=dict)
    simulation_error: Optional[str] = None
