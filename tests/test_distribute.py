"""Bit-width learning under tf.distribute.MirroredStrategy matches one device."""

import json
import os
import subprocess
import sys

import pytest

from tests.distributed_run import DQ_LEARNING_RATE

pytestmark = pytest.mark.slow  # multi-minute: outside the fast subset (setup.cfg)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(method: str, replicas: int, data: str = ""):
    result = subprocess.run([sys.executable, "-m", "tests.distributed_run", method,
                             str(replicas)] + ([data] if data else []), cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["adaqat", "adaqat_budget", "dq"])
def test_two_replicas_learn_the_same_bits_as_one_device(method):
    single, mirrored = _run(method, 1), _run(method, 2)
    assert mirrored["bits"] == single["bits"]
    for key, value in single["relaxed"].items():
        assert mirrored["relaxed"][key] == pytest.approx(value, abs=1e-4)
    assert mirrored["prices"] == pytest.approx(single["prices"], abs=1e-4)
    assert mirrored["scalars"].keys() == single["scalars"].keys()
    for key, value in single["scalars"].items():
        assert mirrored["scalars"][key] == pytest.approx(
            value, rel=1e-3, abs=_one_clipped_update(method, key, single["scalars"])), key
    if method.startswith("adaqat"):  # the rule did move bits, so the comparison means something
        assert any(value < 8.0 for value in single["relaxed"].values())
    else:
        kernel_bits = [bits["kernel"] for bits in single["bits"].values() if "kernel" in bits]
        assert min(kernel_bits) < 8
        # DQ's budget pressure grew, and its steps were among the values compared.
        assert single["scalars"]["dq_pressure"] > 1.0
        assert any(key.endswith("/step") for key in single["scalars"])


def _one_clipped_update(method: str, key: str, scalars) -> float:
    """The absolute tolerance for `key`: 1e-5, or for a DQ range ``q_max`` one SGD update of
    a gradient clipped to ``[-d, d]`` (``DQ_LEARNING_RATE * d``, ``d`` the final step).

    Under the budget every update of ``d`` and ``q_max`` here is such a clipped one (``d``
    grows by 10% a step, ``q_max`` falls by ``0.1 d``). A CI run once ended one device's
    ``out/kernel/q_max`` at 0.45943 and two replicas' at 0.46152, 0.55 of one update apart,
    with every ``d`` equal; every run on the development machine (one device or two, oneDNN
    limited to SSE4.1, AVX or AVX2, one thread, six runs at once) ends at 0.46152, so the cause
    was not reproduced. ``d`` stays compared at 1e-3 relative: its updates compound.
    """
    if method != "dq" or not key.endswith("/q_max"):
        return 1e-5
    return DQ_LEARNING_RATE * scalars[key[:-len("q_max")] + "step"]


@pytest.mark.parametrize("method", ["adaqat_budget", "dq"])
def test_a_nan_on_one_replica_skips_the_step_on_every_replica(method):
    """One NaN in the first replica's half of a batch: both replicas skip that step, and
    every weight and optimizer variable ends bit-identical to training without the batch."""
    skipped, dropped = _run(method, 2, "nan"), _run(method, 2, "drop")
    assert skipped["skipped_steps"] == [1.0] * 6
    assert dropped["skipped_steps"] == [0.0] * 6
    assert skipped["weights"] == dropped["weights"]
    assert skipped["optimizer"] == dropped["optimizer"]
    assert skipped["loss"] == dropped["loss"]
    assert skipped["bits"] == dropped["bits"]
