"""A Keras model's first training/test/predict execution, run eagerly where that is safe.

``tf.function`` traces a function again after a call that created variables, and the first
step of ``fit`` creates some (the optimizer's slots, the metrics). So a plain Keras ``fit``
traces its step twice, and tracing, not running, is most of a short ``fit`` on a large model
(a quantized ResNet20's first two-step fit: 7.6 of 10.6 CPU seconds). Run eagerly, the first
execution creates those variables and the traced step is traced once.
"""

from __future__ import annotations

from typing import Callable

from tfadaqat._compat import tf


def can_run_eagerly(model) -> bool:
    """Whether `model`'s first execution may run eagerly: one step per execution, no XLA, no
    cluster coordinator and no distribution strategy (replicas run eagerly in threads, and
    two workers then ended 2e-4 away from one process with two replicas, where traced they
    agree within 1e-5)."""
    steps = model._steps_per_execution
    several_steps = (steps is not None and int(steps.numpy()) != 1) or \
        model.autotune_steps_per_execution
    distributed = model._distribution_strategy is not None or tf.distribute.has_strategy()
    return not (several_steps or distributed or model.jit_compile
                or model._cluster_coordinator)


def eager_function(model, make: Callable[[bool], Callable]) -> Callable:
    """``make(True)`` (a Keras ``make_*_function``) built as its eager version where
    :func:`can_run_eagerly`, else as it is."""
    if not can_run_eagerly(model):
        return make(True)
    run_eagerly = model._run_eagerly
    model._run_eagerly = True
    try:
        return make(True)
    finally:
        model._run_eagerly = run_eagerly


def first_call_eager(model, make: Callable[[bool], Callable], attribute: str,
                     force: bool) -> Callable:
    """What ``make_train_function`` (or test/predict; `attribute` names it) returns: its first
    call runs :func:`eager_function`, later calls the traced function, traced once."""
    function = make(force)
    if getattr(function, "first_call_eager", False) or not can_run_eagerly(model):
        return function
    eager = eager_function(model, make)

    def first_call(*args, **kwargs):
        setattr(model, attribute, function)
        return eager(*args, **kwargs)

    first_call.first_call_eager = True
    setattr(model, attribute, first_call)
    return first_call
