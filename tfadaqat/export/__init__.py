"""Integer TFLite export that stores the learned bit-widths and computes what was trained.

Why not hand TFMOT's graph to the converter: with TF 2.21 the TFLite converter refuses
FakeQuant ops below 8 bits on activations (it makes ``i4`` tensors that ``tfl.conv_2d``
rejects) and gives 4-bit weights non-zero zero points that the interpreter refuses. So the
learned ``b``-bit grids are mapped onto int8 storage here, and the converter only ever sees
8-bit FakeQuant ops whose scale *is* the learned step. :func:`export_tflite` runs these
steps, one module each:

1. :mod:`~tfadaqat.export.biases`: align every bias with TFLite's int32 bias grid, in the
   Keras model (``align=True``, the default; undone if the export fails).
2. :mod:`~tfadaqat.export.plan`: read the model once: graph order, BatchNormalization
   layers that fold, kernel integers (:mod:`~tfadaqat.export.integers`), output grids.
3. :mod:`~tfadaqat.export.graph`: emit the integer-ready ``tf.function`` and convert it.
4. :mod:`~tfadaqat.export.packing`: with ``weight_storage="int4"``, pack kernels of 4 bits
   or fewer two per byte.
5. :mod:`~tfadaqat.export.verification`: check every kernel is integer, count each stored
   kernel's distinct values, and with ``verify_with`` compare the file's outputs with the
   Keras model's on each runtime; the result is an :class:`ExportReport`
   (:mod:`~tfadaqat.export.report`).
6. Write the file whole (:mod:`~tfadaqat.export.convert`); :mod:`~tfadaqat.export.cli` is
   the command line (``tfadaqat export``).

Activations above 8 bits (int16) are not supported: they raise (see the README for what was
tried).
"""

from tfadaqat.export.biases import align_biases
from tfadaqat.export.cli import main
from tfadaqat.export.convert import TARGETS, export_tflite
from tfadaqat.export.integers import channel_affine_parameters
from tfadaqat.export.graph import integer_function
from tfadaqat.export.plan import WEIGHT_STORAGES
from tfadaqat.export.report import ExportReport, LayerExport
from tfadaqat.export.verification import INTEGER_KERNELS, output_agreement

__all__ = ["ExportReport", "INTEGER_KERNELS", "LayerExport", "TARGETS", "WEIGHT_STORAGES",
           "align_biases", "channel_affine_parameters", "export_tflite", "integer_function", "main",
           "output_agreement"]
