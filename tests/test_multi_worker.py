"""`recipes.train --strategy=multi_worker` with two real worker processes on localhost.

Each worker is its own process with its own ``TF_CONFIG`` and its own workdir (as on two
machines). The reference is one process with the same global batch split the same way: two
logical CPU devices under MirroredStrategy (``--cpu_devices=2 --strategy=mirrored``), so the
same two half-batch gradients are summed. (Against one device, quantized training drifts
apart step by step: round-off moves the odd value across a rounding boundary; see
tests/test_recipes.py's two-step comparison.) DQ under the recipe's
budget on digits, tiny ResNet20, 8 steps per epoch: small enough for CI, and bits do move
(kernels 6-7, activations 7-8 after 3 epochs). SGD, not the config's Adam: Adam divides
each update by the gradient's running size, so it would hide a gradient scaled by the number
of workers, and it turns float-rounding differences of near-zero gradients into whole steps.

Every process runs TensorFlow's kernels on one intra-op thread with oneDNN's kernels off
(``TF_NUM_INTRAOP_THREADS=1``, ``TF_ENABLE_ONEDNN_OPTS=0``): with the defaults, two replicas in
one process and two worker processes already differed by one float32 ulp after the first step
(BatchNormalization moments summed in another order), and 24 quantized steps grew that into
3.4e-4 on a range and 0.03 on a kernel (2026-12-07, the same on this machine and in CI). With
those two settings the runs end within 2e-7 of each other. The fused quantizer kernels are off
too (``TFADAQAT_FUSED_KERNELS=0``): they add a sum in double and round it once per replica, so
two half-batch sums all-reduced in float part from the one-process sum in the last bit, and
24 steps grew that into 2.4e-4 on a DQ range (2026-12-07). This test is about distribution
(gradients summed once, bit-widths the same on every worker); the kernels against the
TensorFlow ops are tests/test_fused_kernels.py's.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 3
FLAGS = ["--config=recipes/configs/digits_adaqat.py", "--config.tiny=True",
         "--config.float_epochs=0", f"--config.epochs={EPOCHS}",
         "--config.method=dq", "--config.optimizer=sgd", "--config.learning_rate=0.05",
         "--config.steps_per_epoch=8", "--config.eval_steps=2",
         "--config.verify_examples=64", "--config.keep_checkpoints=5"]
TIMEOUT = 900
CHIEF_ONLY = ("model.keras", "model.tflite", "summary.json", "summary.txt",
              "export_report.json", "bit_history.json", "logs")

pytestmark = pytest.mark.slow


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _environment(tf_config=None):
    environment = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
                   "TF_NUM_INTRAOP_THREADS": "1", "TF_ENABLE_ONEDNN_OPTS": "0",
                   "TFADAQAT_FUSED_KERNELS": "0"}
    environment.pop("TF_CONFIG", None)
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return environment


def _start(workdir, strategy, tf_config=None, log=None, cpu_devices=0):
    return subprocess.Popen(
        [sys.executable, "-m", "recipes.train", *FLAGS, f"--workdir={workdir}",
         f"--strategy={strategy}", f"--cpu_devices={cpu_devices}"], cwd=ROOT,
        env=_environment(tf_config), stdout=log, stderr=subprocess.STDOUT, text=True)


def _start_workers(workdirs, ports, logs):
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    return [_start(workdir, "multi_worker", {"cluster": cluster,
                                             "task": {"type": "worker", "index": index}},
                   log)
            for index, (workdir, log) in enumerate(zip(workdirs, logs))]


def _wait(processes, logs):
    for process, log in zip(processes, logs):
        process.wait(timeout=TIMEOUT)
        log.flush()
        assert process.returncode == 0, open(log.name).read()[-4000:]


def _result(workdir):
    with open(os.path.join(workdir, "summary.json")) as file:
        summary = json.load(file)
    model = tfadaqat.load_model(os.path.join(workdir, "model.keras"))
    return summary, tfadaqat.bit_widths(model), [w.numpy() for w in model.weights]


def _assert_same_training(result, reference):
    (summary, bits, weights), (ref_summary, ref_bits, ref_weights) = result, reference
    assert bits == ref_bits
    assert any(b < 8 for tensors in bits.values() for b in tensors.values())  # bits did move
    assert len(weights) == len(ref_weights)
    for value, ref_value in zip(weights, ref_weights):
        np.testing.assert_allclose(value, ref_value, rtol=0, atol=1e-5)
    assert summary["accuracy"] == pytest.approx(ref_summary["accuracy"], abs=1e-6)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("single")
    with open(workdir / "log.txt", "w") as log:
        process = _start(workdir / "run", "mirrored", log=log, cpu_devices=2)
        _wait([process], [log])
    assert "2 replica(s)" in open(workdir / "log.txt").read()
    return _result(workdir / "run")


def test_two_workers_train_like_one_process_and_only_the_chief_writes(single_process,
                                                                       tmp_path):
    workdirs = [tmp_path / "worker0", tmp_path / "worker1"]
    logs = [open(tmp_path / f"log{i}.txt", "w") for i in range(2)]
    try:
        _wait(_start_workers(workdirs, _free_ports(2), logs), logs)
    finally:
        for log in logs:
            log.close()
    _assert_same_training(_result(workdirs[0]), single_process)
    assert "2 replica(s)" in open(logs[0].name).read()
    for name in CHIEF_ONLY:
        assert (workdirs[0] / name).exists(), name
        assert not (workdirs[1] / name).exists(), name
    # The other worker's checkpoints go where nobody reads them; the chief's to the run's.
    assert sorted(os.listdir(workdirs[1] / "checkpoints")) == ["quantized_worker_1"]
    assert sorted(os.listdir(workdirs[0] / "checkpoints")) == ["quantized"]


def test_killing_a_worker_and_restarting_both_resumes_to_the_same_bits(single_process,
                                                                      tmp_path):
    workdirs = [tmp_path / "worker0", tmp_path / "worker1"]
    logs = [open(tmp_path / f"log{i}.txt", "w") for i in range(2)]
    try:
        ports = _free_ports(2)
        workers = _start_workers(workdirs, ports, logs)
        checkpoints = str(workdirs[0] / "checkpoints" / "quantized")
        deadline = time.time() + TIMEOUT
        while tf.train.latest_checkpoint(checkpoints) is None:
            assert time.time() < deadline, "no checkpoint after the first epoch"
            assert all(worker.poll() is None for worker in workers), "a worker ended early"
            time.sleep(0.5)
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
        # The chief cannot finish without its peer: stop it as a cluster manager would.
        try:
            workers[0].wait(timeout=20)
        except subprocess.TimeoutExpired:
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
        assert not (workdirs[0] / "model.keras").exists()
        for log in logs:
            log.write("\n--- restarted ---\n")
            log.flush()
        _wait(_start_workers(workdirs, _free_ports(2), logs), logs)
    finally:
        for log in logs:
            log.close()
    chief_log = open(logs[0].name).read().split("--- restarted ---")[1]
    assert "[quantized] resumed from" in chief_log
    _assert_same_training(_result(workdirs[0]), single_process)
