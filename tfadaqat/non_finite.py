"""Training steps that never apply a non-finite update.

One NaN or Inf in a batch (a corrupt pixel, a division by zero in a loss) poisons every
quantizer of a quantized model in one step: the forward pass feeds NaN into BatchNormalization's
moving statistics and into the data-dependent clips and steps, and the optimizer writes NaN
into every weight its gradient reaches. From then on the model predicts a constant and nothing
says why. :class:`tfadaqat.QuantizedModel` therefore guards each training step:

1. before the step, the value of every variable the step can write is kept (the model's
   weights, BatchNormalization statistics and quantizer state included, and the optimizer's
   slots and iteration count);
2. after the step, the step is *finite* when the loss and every gradient are finite on every
   replica (one ``all_reduce`` of a flag);
3. a step that is not finite is undone: every kept variable gets its value back (one
   ``tf.cond``, so a finite step pays for the copies only), the metrics forget the batch, and
   the per-epoch metric ``skipped_steps`` counts it.

After ``max_consecutive_skipped_steps`` skipped steps in a row, :class:`StopOnSkippedSteps`
ends ``fit`` with a :class:`FloatingPointError`; the model then holds the weights of its last
finite step.
"""

from __future__ import annotations

import warnings
from typing import List, Sequence

from tfadaqat._compat import keras, tf

DEFAULT_MAX_CONSECUTIVE_SKIPPED_STEPS = 10
SKIPPED_STEPS_METRIC = "skipped_steps"


def all_finite(loss: tf.Tensor, gradients: Sequence) -> tf.Tensor:
    """Whether `loss` and every gradient (None skipped) are finite, on every replica.

    Returns:
      A boolean scalar, the same on every replica (the count of non-finite replicas,
      summed across them, is 0).
    """
    checks = [tf.reduce_all(tf.math.is_finite(tf.cast(loss, tf.float32)))]
    for gradient in gradients:
        if gradient is None:
            continue
        if isinstance(gradient, tf.IndexedSlices):
            gradient = gradient.values
        checks.append(tf.reduce_all(tf.math.is_finite(gradient)))
    failed = 1.0 - tf.cast(tf.reduce_all(tf.stack(checks)), tf.float32)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        failed = context.all_reduce(tf.distribute.ReduceOp.SUM, failed)
    return failed < 0.5


def unique_variables(variables) -> List[tf.Variable]:
    """`variables` without repeats (a variable can be reachable twice), order kept."""
    seen, unique = set(), []
    for variable in variables:
        if variable.ref() not in seen:
            seen.add(variable.ref())
            unique.append(variable)
    return unique


def snapshot(variables) -> List[tf.Tensor]:
    """The current values of `variables` (copies: a later assign does not change them)."""
    return [tf.identity(variable) for variable in variables]


def restore_unless(finite: tf.Tensor, variables, values, replica_local: bool = False) -> None:
    """Assigns `values` back to `variables` when `finite` is False (else nothing happens).

    Args:
      finite: A boolean scalar, the same on every replica.
      variables: The variables to restore.
      values: Their kept values (:func:`snapshot`), in the same order.
      replica_local: True for variables each replica updates on its own (metrics, which sync
        on read): they are assigned where they are. False (model and optimizer variables):
        the assignment runs in a ``merge_call``, so variables that may only be updated
        across replicas (trainable weights, optimizer slots) are restored on every device
        from that device's kept value, under any strategy.
    """
    variables, values = list(variables), list(values)
    if not variables:
        return

    def assign_all(assign, kept_values):
        for variable, value in zip(variables, kept_values):
            assign(variable, value)
        return tf.constant(True)

    if replica_local:
        tf.cond(finite, lambda: tf.constant(True),
                lambda: assign_all(lambda variable, value: variable.assign(value), values))
        return

    def restore(strategy, finite, values):
        if strategy.num_replicas_in_sync > 1:
            finite = strategy.experimental_local_results(finite)[0]

        def assign(variable, value):
            strategy.extended.update(variable, lambda v, kept: v.assign(kept), args=(value,),
                                     group=False)

        # `values` here are the merged (per-device) values merge_call passes in.
        tf.cond(finite, lambda: tf.constant(True), lambda: assign_all(assign, values))

    tf.distribute.get_replica_context().merge_call(restore, args=(finite, values))


def build_optimizer(optimizer, variables) -> None:
    """Creates `optimizer`'s slots for `variables` now (so that they can be kept before the
    first step writes them); does nothing when they exist."""
    with tf.init_scope():
        if hasattr(optimizer, "build") and not isinstance(optimizer,
                                                          keras.optimizers.legacy.Optimizer):
            optimizer.build(variables)
        elif hasattr(optimizer, "_create_all_weights"):
            optimizer._create_all_weights(variables)  # legacy optimizers


class SkippedStepsMetric(keras.metrics.Sum):
    """The per-epoch count of skipped steps, in the logs as ``skipped_steps``.

    It is one of the model's ``metrics`` (so that Keras resets it every epoch and reports it
    beside the loss) but holds no state worth keeping: it is neither saved nor loaded, so a
    model saved by a tfadaqat without it (before the guard existed), or compiled without the
    guard, loads either way.
    """

    def __init__(self, name: str = SKIPPED_STEPS_METRIC, dtype=tf.float32):
        super().__init__(name=name, dtype=dtype)

    def save_own_variables(self, store):
        del store

    def load_own_variables(self, store):
        del store


class StopOnSkippedSteps(keras.callbacks.Callback):
    """Warns on every skipped step and ends ``fit`` after `limit` of them in a row.

    :class:`tfadaqat.QuantizedModel` adds it to ``fit`` itself. It reads the model's counters
    (``skipped_steps_total`` and ``consecutive_skipped_steps``, kept by the training step).

    Args:
      limit: Consecutive skipped steps that end training (None: never).
    """

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self._supports_tf_logs = True
        self._seen = 0

    def on_train_begin(self, logs=None):
        self._seen = int(self.model.skipped_steps_total.numpy())

    def on_train_batch_end(self, batch, logs=None):
        total = int(self.model.skipped_steps_total.numpy())
        if total == self._seen:
            return
        self._seen = total
        consecutive = int(self.model.consecutive_skipped_steps.numpy())
        warnings.warn(f"{self.model.name}: batch {batch}: the loss or a gradient was NaN or "
                      f"Inf, so the step was skipped (weights, BatchNormalization statistics, "
                      f"quantizer and optimizer state kept); {total} skipped in this fit, "
                      f"{consecutive} in a row", RuntimeWarning, stacklevel=2)
        if self.limit is not None and consecutive >= self.limit:
            self.model.stop_training = True
            raise FloatingPointError(
                f"{self.model.name}: {consecutive} training steps in a row had a NaN or Inf "
                f"loss or gradient (max_consecutive_skipped_steps={self.limit}); the model "
                f"keeps the weights of its last finite step. Look for NaN/Inf in the input "
                f"data and labels, lower the learning rate, or pass a larger "
                f"max_consecutive_skipped_steps (or None) to compile().")
