"""Helper for tests/test_distribute.py: trains a toy model, prints its bits as JSON.

Run as ``python -m tests.distributed_run METHOD REPLICAS [DATA]``; logical CPU devices must be
set before TensorFlow starts, hence a process of its own. DATA ``nan`` puts one NaN into the
second batch of every epoch (in the first replica's half of it), ``drop`` leaves that batch
out; the JSON then also holds every weight and the skipped-step counts.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfadaqat  # noqa: E402
from tfadaqat._compat import keras, tf  # noqa: E402


BAD_BATCH = slice(16, 32)
# The DQ model's SGD learning rate (tests/test_distribute.py's tolerances depend on it).
DQ_LEARNING_RATE = 0.1


def main(method: str, replicas: int, data: str = "") -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    keras.utils.set_random_seed(0)
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
                if replicas > 1 else tf.distribute.get_strategy())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32")
    with strategy.scope():
        inputs = keras.Input((16,))
        hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
        outputs = keras.layers.Dense(4, name="out")(hidden)
        model = keras.Model(inputs, outputs)
        if method.startswith("adaqat"):
            budget = tfadaqat.Budget.relative(bitops=0.3) if method == "adaqat_budget" else None
            qmodel = tfadaqat.quantize_model(model, "adaqat", budget=budget,
                                             adaqat_rule=tfadaqat.AdaQATRule(learning_rate=2.0))
            optimizer = keras.optimizers.SGD(0.0)
        else:
            qmodel = tfadaqat.quantize_model(
                model, "dq", budget=tfadaqat.Budget.relative(weight_kb=0.5))
            # SGD, not Adam: Adam turns a near-zero, sign-flipping gradient (the output
            # step's) into full-size steps, so float-rounding differences between one and two
            # replicas grew to 13% of that step with Adam(0.01) while every other value agreed.
            optimizer = keras.optimizers.SGD(DQ_LEARNING_RATE)
        target = (x[:, :4] > 0).astype("float32")
        if data == "nan":
            x[BAD_BATCH.start + 3, 5] = np.nan
        elif data == "drop":
            keep = np.ones(len(x), bool)
            keep[BAD_BATCH] = False
            x, target = x[keep], target[keep]
        qmodel.initialize_quantizers(x[:8])
        qmodel.compile(optimizer, keras.losses.MeanSquaredError())
    history = qmodel.fit(x, target, batch_size=16, epochs=6, shuffle=False, verbose=0)
    relaxed = {f"{name}/{role}": float(v["relaxed_bits"].numpy())
               for name, role, _, v, _ in tfadaqat.quantized_tensors(qmodel)
               if "relaxed_bits" in v}
    # Every scalar quantizer variable (AdaQAT's clips; DQ's steps and ranges), and DQ's
    # budget pressure: what the replicas must agree on besides the bits.
    scalars = {f"{name}/{role}/{key}": float(variable.numpy())
               for name, role, _, variables, _ in tfadaqat.quantized_tensors(qmodel)
               for key, variable in variables.items()
               if variable.shape.rank == 0 and key not in ("initialized", "relaxed_bits")}
    if qmodel.dq_pressure is not None:
        scalars["dq_pressure"] = float(qmodel.dq_pressure.numpy())
    state = qmodel.adaqat_budget_state
    prices = [] if state is None else state["multipliers"].numpy().tolist()
    result = {"bits": tfadaqat.bit_widths(qmodel), "relaxed": relaxed, "prices": prices,
              "scalars": scalars}
    if data:
        result["weights"] = [v.numpy().ravel().tolist() for v in qmodel.weights]
        result["optimizer"] = [v.numpy().ravel().tolist() for v in qmodel.optimizer.variables]
        result["skipped_steps"] = history.history["skipped_steps"]
        result["loss"] = history.history["loss"]
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
