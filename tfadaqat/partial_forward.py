"""Forward passes of a Functional model that re-run only the layers from a cut onwards.

AdaQAT's probe (:func:`tfadaqat.adaqat.probe`) measures the loss of the step's batch with one
tensor a bit lower. Every layer that runs before the probed tensor's layer computes exactly
what it computed in the step's own forward pass (same inputs, weights and bit-widths), so the
probe only needs the layers from that one onwards. This module runs a tf-keras Functional
model the way Keras does (nodes by decreasing depth, the same argument mapping), with two
additions:

* **recording**: the output of every node of one forward pass is kept, by the id of the
  Keras tensor it stands for (trace-time bookkeeping only: nothing is copied when it runs);
* **resuming**: given such a record and a *restart point* (a position in the execution
  order), the nodes before it are not run; their recorded outputs are used instead.

A resumed pass gives the same outputs as a full one, as long as the nodes before the restart
point are deterministic and unchanged since the recorded pass (tested against a full pass).
Layers that draw random numbers in training (Dropout) draw them again in the nodes that run,
as a second full pass would.

Restart points: a probe's branch must exist in the traced graph for every tensor that can be
probed, and every branch is a copy of the layers it re-runs. :func:`restart_points` therefore
picks a few (``count``) positions, each the position of some learned tensor's layer, spread
evenly over the tensors, and maps every tensor to the last one at or before its layer. With
``k`` points, a probe re-runs on average about ``(k + 1) / (2 k)`` of the layers, against all
of them for a full pass, and the trace holds about ``(k + 1) / 2`` copies of the forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from tfadaqat._compat import functional_nodes_by_depth, tf
from tfadaqat.tensors import unwrapped_layer


def execution_order(model) -> List:
    """The non-input nodes of Functional `model`, in the order Keras runs them (by decreasing
    depth, and within a depth in the order Keras lists them)."""
    nodes_by_depth = functional_nodes_by_depth(model)
    return [node for depth in sorted(nodes_by_depth, reverse=True)
            for node in nodes_by_depth[depth] if not node.is_input]


@dataclasses.dataclass
class ForwardRecord:
    """The tensors one forward pass computed, by the id of the Keras tensor they stand for."""

    outputs: Dict[str, tf.Tensor] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ForwardPlan:
    """What :func:`run` does besides Keras' plain pass.

    Attributes:
      record: Filled with every node's outputs, or None.
      resume_from: ``(position, record)``: the nodes before `position` in
        :func:`execution_order` are not run; their outputs come from `record`. Or None.
    """

    record: Optional[ForwardRecord] = None
    resume_from: Optional[Tuple[int, ForwardRecord]] = None


def run(model, inputs, mask, plan: ForwardPlan):
    """Runs Functional `model` on `inputs` as ``Functional._run_internal_graph`` does, with
    `plan`'s recording and resuming. Call it from the model's ``_run_internal_graph`` (inside
    the model's ``__call__``, which sets the training mode and input casting)."""
    inputs = model._flatten_to_reference_inputs(inputs)
    masks = [None] * len(inputs) if mask is None else model._flatten_to_reference_inputs(mask)
    for tensor, tensor_mask in zip(inputs, masks):
        if tensor is not None:
            tensor._keras_mask = tensor_mask
    usage_count = model._tensor_usage_count
    # Keras' argument mapping pops one value per use of a tensor: a list of them per tensor.
    values: Dict[str, List[tf.Tensor]] = {}

    def store(tensor_id: str, value) -> None:
        values[tensor_id] = [value] * usage_count[tensor_id]
        if plan.record is not None:
            plan.record.outputs[tensor_id] = value

    for reference, value in zip(model.inputs, inputs):
        store(str(id(reference)), model._conform_to_reference_input(value, ref_input=reference))
    start, earlier = plan.resume_from if plan.resume_from is not None else (0, None)
    for position, node in enumerate(execution_order(model)):
        if position < start:
            for tensor_id in node.flat_output_ids:
                if tensor_id in earlier.outputs:
                    store(tensor_id, earlier.outputs[tensor_id])
            continue
        if any(tensor_id not in values for tensor_id in node.flat_input_ids):
            continue  # not computable from these inputs (as Keras skips it)
        args, kwargs = node.map_arguments(values)
        outputs = node.layer(*args, **kwargs)
        for tensor_id, value in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
            store(tensor_id, value)
    results = []
    for reference in model.outputs:
        tensor_id = str(id(reference))
        if tensor_id not in values:
            raise ValueError(f"{model.name}: could not compute the output {reference.name}")
        results.append(values[tensor_id].pop())
    return tf.nest.pack_sequence_as(model._nested_outputs, results)


def first_positions(model, layers: Sequence) -> List[int]:
    """For each of `layers`, the position in :func:`execution_order` of its first node."""
    order = execution_order(model)
    positions = []
    for layer in layers:
        found = [position for position, node in enumerate(order) if node.layer is layer]
        if not found:
            raise ValueError(f"{model.name}: layer {layer.name!r} is not called in the model")
        positions.append(found[0])
    return positions


def restart_points(positions: Sequence[int], count: int) -> Tuple[List[int], List[int]]:
    """At most `count` restart points for tensors whose layers run at `positions`.

    Args:
      positions: For each tensor, the position of its layer (:func:`first_positions`).
      count: How many restart points at most (>= 1).

    Returns:
      ``(points, branch)``: the restart positions in increasing order, each one of
      `positions`, the first the smallest of them (points taken at evenly spaced ranks of the
      sorted positions); and for each tensor the index of the last point at or before its
      position.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not positions:
        return [], []
    ordered = sorted(set(positions))
    points = sorted({ordered[(index * len(ordered)) // count] for index in range(count)})
    branch = [max(index for index, point in enumerate(points) if point <= position)
              for position in positions]
    return points, branch


def moving_statistics(model, start: int) -> List[tf.Variable]:
    """The BatchNormalization moving statistics of the layers a pass resumed at `start` runs
    (the state a training-mode forward pass writes)."""
    found, seen = [], set()
    for node in execution_order(model)[start:]:
        for name in ("moving_mean", "moving_variance"):
            variable = getattr(unwrapped_layer(node.layer), name, None)
            if isinstance(variable, tf.Variable) and variable.ref() not in seen:
                seen.add(variable.ref())
                found.append(variable)
    return found
