"""Bit-width learning under tf.distribute.MirroredStrategy matches one device."""

import json
import os
import subprocess
import sys

import pytest

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
        assert mirrored["scalars"][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    if method.startswith("adaqat"):  # the rule did move bits, so the comparison means something
        assert any(value < 8.0 for value in single["relaxed"].values())
    else:
        kernel_bits = [bits["kernel"] for bits in single["bits"].values() if "kernel" in bits]
        assert min(kernel_bits) < 8
        # DQ's budget pressure grew, and its steps were among the values compared.
        assert single["scalars"]["dq_pressure"] > 1.0
        assert any(key.endswith("/step") for key in single["scalars"])


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
