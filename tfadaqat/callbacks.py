"""Keras callbacks that record how learned bit-widths and hardware cost evolve during ``fit``.

:class:`BitWidthLogger` adds, at the end of every epoch, the integer bit-width of each
quantized tensor (``bits/<layer>/<tensor>``) and the totals ``bitops``, ``weight_kb`` and
``activation_kb`` to the epoch logs, so they appear in the ``History`` that ``fit`` returns
and, with a ``log_dir``, in TensorBoard. Its ``records`` feed :func:`tfadaqat.plot_bit_widths`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from tfadaqat._compat import keras, tf
from tfadaqat.cost import cost
from tfadaqat.tensors import bit_widths


class BitWidthLogger(keras.callbacks.Callback):
    """Logs per-tensor bit-widths, BitOPs and memory at the end of each epoch.

    Args:
      log_dir: Directory for TensorBoard scalars (same layout as Keras' TensorBoard
        callback's ``train`` writer); None logs only to ``History``.
      activation_reduce: "max" or "sum" for the activation-memory total.

    Attributes:
      records: One dict per epoch: ``{"epoch": e, "bits": {layer: {tensor: b}}, "bitops": ...,
        "weight_kb": ..., "activation_kb": ...}``.

    Example:
      >>> logger = BitWidthLogger()
      >>> history = qmodel.fit(x, y, epochs=3, callbacks=[logger])  # doctest: +SKIP
      >>> history.history["bitops"]  # doctest: +SKIP
    """

    def __init__(self, log_dir: Optional[str] = None, activation_reduce: str = "max"):
        super().__init__()
        self.log_dir = log_dir
        self.activation_reduce = activation_reduce
        self.records: List[Dict[str, Any]] = []
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/train")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        bits = bit_widths(self.model)
        totals = cost(self.model, activation_reduce=self.activation_reduce)
        scalars = {f"bits/{layer}/{tensor}": value
                   for layer, tensors in bits.items() for tensor, value in tensors.items()}
        scalars.update(bitops=float(totals.bitops), weight_kb=totals.weight_kb,
                       activation_kb=totals.activation_kb)
        logs.update(scalars)
        self.records.append({"epoch": epoch, "bits": bits, "bitops": totals.bitops,
                             "weight_kb": totals.weight_kb,
                             "activation_kb": totals.activation_kb})
        if self._writer is not None:
            with self._writer.as_default():
                for name, value in scalars.items():
                    tf.summary.scalar(name, value, step=epoch)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
