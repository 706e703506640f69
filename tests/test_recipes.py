"""recipes.training: every config trains a step on mock data; resume, distribution, bad input."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfadaqat
from tfadaqat._compat import keras, tf
from recipes import data, training
from tests.conftest import write_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(path for path in glob.glob(os.path.join(ROOT, "recipes", "configs", "*_*.py"))
                 if not os.path.basename(path).startswith("_"))


def _load_config(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _quick(config, **changes):
    """`config` shrunk to a tiny model and a step or two per stage."""
    config.tiny = True
    config.epochs = 1
    config.float_epochs = min(config.float_epochs, 1)
    config.batch_size = config.base_batch_size = 8
    config.steps_per_epoch = 1
    config.eval_steps = 1
    config.verify_examples = 8
    config.export = False
    if config.dataset == "imagenet2012":
        config.image_size = 64
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def _digits(**changes):
    return _quick(_load_config(os.path.join(ROOT, "recipes", "configs", "digits_adaqat.py")),
                  **changes)


def _silent(*_):
    pass


@pytest.fixture(scope="module")
def fashion_mnist_files(tmp_path_factory):
    """Mock Fashion-MNIST IDX files, with 16 training images besides the 5,000 that the
    recipes' default validation split holds out."""
    folder = str(tmp_path_factory.mktemp("fashion_mnist"))
    write_fashion_mnist(folder, data.FASHION_MNIST_VALIDATION_SIZE + 16, 16)
    return folder


def test_every_config_is_found_and_valid():
    names = {os.path.basename(path) for path in CONFIGS}
    assert {"digits_adaqat.py", "resnet20_cifar10_adaqat.py", "resnet20_cifar10_dq.py",
            "resnet20_cifar10_lsq.py", "resnet18_imagenet_adaqat.py", "resnet18_imagenet_dq.py",
            "resnet18_imagenet_lsq.py", "resnet20_fashion_mnist_adaqat.py",
            "resnet20_fashion_mnist_dq.py", "resnet20_fashion_mnist_lsq.py"} <= names
    for path in CONFIGS:
        training.validate_config(_load_config(path))


def test_paper_settings_of_resnet20_cifar10():
    config = _load_config(os.path.join(ROOT, "recipes", "configs", "resnet20_cifar10_dq.py"))
    assert (config.model, config.dataset, config.method) == ("resnet20", "cifar10", "dq")
    assert (config.optimizer, config.momentum, config.batch_size) == ("sgd", 0.9, 128)
    assert (config.weight_decay, config.epochs, tuple(config.decay_epochs)) == (
        2e-4, 160, (80, 120))


def test_settings_of_the_quickstart_digits_run():
    config = _load_config(os.path.join(ROOT, "recipes", "configs", "digits_adaqat.py"))
    assert (config.model, config.dataset, config.method) == ("resnet20", "digits", "adaqat")
    assert (config.float_epochs, config.epochs, config.weight_bits) == (30, 30, 8)
    assert (config.budget.units, config.budget.bitops) == ("relative", 0.25)


@pytest.mark.parametrize("method", ["adaqat", "dq", "lsq"])
def test_settings_of_resnet18_imagenet(method):
    config = _load_config(os.path.join(ROOT, "recipes", "configs",
                                       f"resnet18_imagenet_{method}.py"))
    assert (config.model, config.dataset, config.method) == ("resnet18", "imagenet2012", method)
    assert (config.batch_size, config.weight_decay, config.epochs) == (256, 1e-4, 90)
    assert tuple(config.decay_epochs) == (30, 60, 80)


@pytest.mark.parametrize("method, budget, bits", [
    ("adaqat", 0.125, 8), ("dq", 0.125, 8), ("lsq", 0.0, 4)])
def test_settings_of_resnet20_fashion_mnist(method, budget, bits):
    config = _load_config(os.path.join(ROOT, "recipes", "configs",
                                       f"resnet20_fashion_mnist_{method}.py"))
    assert (config.model, config.dataset, config.method) == ("resnet20", "fashion_mnist", method)
    assert (config.float_epochs, config.epochs, config.schedule) == (15, 15, "cosine")
    assert (config.float_learning_rate, config.learning_rate) == (0.1, 0.01)
    assert (config.budget.units, config.budget.bitops) == ("relative", budget)
    assert (config.weight_bits, config.activation_bits) == (bits, bits)
    assert config.reestimate_batch_norm_batches == 50
    assert training.budget_from_config(config) == (
        tfadaqat.Budget.relative(bitops=budget) if budget else None)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_one_training_step_of_every_config(path, tmp_path, fashion_mnist_files):
    config = _quick(_load_config(path))
    if config.dataset == "fashion_mnist":
        config.data_dir = fashion_mnist_files
    with tfds.testing.mock_data(num_examples=16):
        result = training.train_and_evaluate(config, str(tmp_path / "run"), say=_silent)
        # Oracle: the saved model's argmax on the first evaluation batch (eval_steps = 1),
        # counted in NumPy, is the accuracy the recipe reports.
        spec = data.dataset_spec(config.dataset, image_size=config.image_size or None)
        images, labels = next(iter(data.build_dataset(
            config.dataset, spec.eval_split, batch_size=config.batch_size, training=False,
            seed=config.seed, data_dir=config.data_dir or None,
            image_size=config.image_size or None)))
    saved = tfadaqat.load_model(result["artifacts"]["model"])
    predicted = np.argmax(saved.predict(images, verbose=0), axis=-1)
    assert result["accuracy"] == pytest.approx(float(np.mean(predicted == labels.numpy())))
    assert result["summary"]["totals"]["bitops"] > 0
    for name in ("model", "summary", "summary_json", "bit_widths_plot", "checkpoints",
                 "tensorboard"):
        assert os.path.exists(result["artifacts"][name]), name
    restored = tfadaqat.bit_widths(tfadaqat.load_model(result["artifacts"]["model"]))
    kernels = {row["layer"]: row["weight_bits"] for row in result["summary"]["layers"]
               if row["weight_bits"] is not None}
    assert kernels and kernels == {layer: tensors["kernel"] for layer, tensors in restored.items()
                                   if "kernel" in tensors}


@pytest.mark.slow
def test_digits_run_writes_every_artifact_and_a_verified_tflite(tmp_path):
    config = _digits(export=True, epochs=2, steps_per_epoch=2, verify_examples=32)
    result = training.train_and_evaluate(config, str(tmp_path / "run"), say=_silent)
    artifacts = result["artifacts"]
    for name in ("float_model", "model", "summary", "summary_json", "bit_widths_plot", "tflite",
                 "export_report", "checkpoints", "tensorboard"):
        assert os.path.exists(artifacts[name]), name
    with open(artifacts["export_report"]) as handle:
        report = json.load(handle)
    assert report["examples"] == 32 and report["top1_agreement"] >= 0.9
    assert len(json.load(open(os.path.join(tmp_path, "run", "bit_history.json")))) == 2
    events = glob.glob(os.path.join(artifacts["tensorboard"], "quantized", "events.*"))
    assert events
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        tags.update(value.tag for value in event.summary.value)
    assert {"loss", "accuracy", "bitops", "weight_kb", "learning_rate"} <= tags
    assert any(tag.startswith("bits/") for tag in tags)
    summary_text = open(artifacts["summary"]).read()
    assert "BitOPs" in summary_text and "test accuracy" in summary_text
    # Started again on the finished workdir: no training, the same model, and the summary
    # and the export written again.
    for name in ("summary", "tflite"):
        os.utime(artifacts[name], (0, 0))
    again = training.train_and_evaluate(config, str(tmp_path / "run"), say=_silent)
    assert again["accuracy"] == result["accuracy"]
    for name in ("summary", "tflite"):
        assert os.path.getmtime(artifacts[name]) > 0, name
    # --init_from: another run quantizes that float model as it is (no float stage).
    init = _digits(float_epochs=0, init_from=artifacts["float_model"])
    started = training.train_and_evaluate(init, str(tmp_path / "init"), say=_silent)
    assert started["float_accuracy"] == result["float_accuracy"]
    copied = keras.models.load_model(os.path.join(tmp_path, "init", "float_model.keras"))
    source = keras.models.load_model(artifacts["float_model"])
    for a, b in zip(copied.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)


def _final_state(workdir):
    model = tfadaqat.load_model(os.path.join(workdir, "model.keras"))
    return tfadaqat.bit_widths(model), model.get_weights()


class _Killed(Exception):
    pass


def _learning_fast(**changes):
    config = _digits(**changes)
    config.adaqat.learning_rate = 30.0  # bits move within the few steps of the test
    return config


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_bits_and_weights(tmp_path, monkeypatch):
    changes = dict(epochs=3, steps_per_epoch=3, float_epochs=1)
    training.train_and_evaluate(_learning_fast(**changes), str(tmp_path / "whole"), say=_silent)

    original = training._EpochLog.on_epoch_end

    def killed_in_second_epoch(self, epoch, logs=None):
        if self.bit_logger is not None and epoch == 1:
            raise _Killed
        return original(self, epoch, logs)

    monkeypatch.setattr(training._EpochLog, "on_epoch_end", killed_in_second_epoch)
    with pytest.raises(_Killed):
        training.train_and_evaluate(_learning_fast(**changes), str(tmp_path / "resumed"),
                                    say=_silent)
    assert not os.path.exists(tmp_path / "resumed" / "model.keras")
    monkeypatch.setattr(training._EpochLog, "on_epoch_end", original)
    messages = []
    training.train_and_evaluate(_learning_fast(**changes), str(tmp_path / "resumed"),
                                say=messages.append)
    assert any("resumed from" in m and "(epoch 1)" in m for m in messages)
    whole_bits, whole_weights = _final_state(tmp_path / "whole")
    resumed_bits, resumed_weights = _final_state(tmp_path / "resumed")
    assert resumed_bits == whole_bits
    assert len(resumed_weights) == len(whole_weights)
    for resumed, whole in zip(resumed_weights, whole_weights):
        np.testing.assert_allclose(resumed, whole, rtol=0, atol=1e-6)
    # The run did learn: some bit-widths moved away from the 8 bits they started at.
    assert any(bits < 8 for tensors in whole_bits.values() for bits in tensors.values())


def _recipe(tmp_path, *arguments, cpu_devices=0):
    command = [sys.executable, "-m", "recipes.train",
               f"--config={os.path.join(ROOT, 'recipes', 'configs', 'digits_adaqat.py')}",
               f"--workdir={tmp_path}", "--config.tiny=True", "--config.epochs=1",
               "--config.float_epochs=1", "--config.steps_per_epoch=2", "--config.eval_steps=1",
               "--config.export=False", f"--cpu_devices={cpu_devices}", *arguments]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_matches_one_device(tmp_path):
    # SGD: Adam's first steps move every weight by about +-lr whatever the gradient's size, so
    # they would turn float round-off between the two runs into lr-sized differences.
    sgd = ("--config.optimizer=sgd", "--config.learning_rate=0.05",
           "--config.float_learning_rate=0.05")
    single = _recipe(tmp_path / "single", *sgd)
    mirrored = _recipe(tmp_path / "mirrored", "--strategy=mirrored", *sgd, cpu_devices=2)
    assert single.returncode == 0, single.stderr[-3000:]
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    assert "2 replica(s)" in mirrored.stdout
    one = json.load(open(tmp_path / "single" / "summary.json"))
    two = json.load(open(tmp_path / "mirrored" / "summary.json"))
    assert two["summary"]["layers"] == one["summary"]["layers"]  # bits and costs
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=1e-6)
    float_one, float_two = (
        keras.models.load_model(str(tmp_path / run / "float_model.keras"), compile=False)
        for run in ("single", "mirrored"))
    for a, b in zip(float_one.get_weights(), float_two.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # Quantized training is discontinuous: round-off of the order of 1e-7 between the replica
    # sums and the one-device sum flips the odd value across a rounding boundary.
    one_model = tfadaqat.load_model(str(tmp_path / "single" / "model.keras"))
    two_model = tfadaqat.load_model(str(tmp_path / "mirrored" / "model.keras"))
    for a, b in zip(one_model.get_weights(), two_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-3)


@pytest.mark.parametrize("field, value, message", [
    ("model", "resnet99", "config.model must be one of"),
    ("dataset", "mnist", "config.dataset must be one of"),
    ("method", "hawq", "config.method must be one of"),
    ("schedule", "linear", "config.schedule must be one of"),
    ("export_target", "edgetpu", "config.export_target must be one of \\('litert', 'tflm'\\)"),
    ("batch_size", 0, "config.batch_size must be a positive integer"),
])
def test_bad_config_fields_are_named(field, value, message):
    config = _digits()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        training.validate_config(config)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy must be one of"):
        training.validate_config(_digits(), strategy="horovod")


def test_a_budget_in_the_wrong_units_is_refused():
    config = _digits()
    config.budget.bitops = 5e8  # BitOPs, but the units say "a fraction of the 8-bit model"
    with pytest.raises(ValueError, match="units='absolute'"):
        training.validate_config(config)
    config.budget.units = "bits"
    with pytest.raises(ValueError, match="config.budget.units must be one of"):
        training.validate_config(config)
    config.budget.units = "absolute"
    assert training.budget_from_config(config) == tfadaqat.Budget(bitops=5e8)


def test_a_workdir_with_another_config_is_refused_before_training(tmp_path):
    training.check_workdir(_digits(), str(tmp_path))
    other = _digits(method="dq")
    with pytest.raises(ValueError, match="different config .*method: 'adaqat' -> 'dq'"):
        training.train_and_evaluate(other, str(tmp_path), say=_silent)
    assert not os.path.exists(tmp_path / "checkpoints")


def test_init_from_another_architecture_is_refused_before_training(tmp_path):
    from models import build_model
    other = build_model("small_cnn", input_shape=(8, 8, 1), num_classes=10)
    other.save(tmp_path / "other.keras")
    config = _digits(float_epochs=0, init_from=str(tmp_path / "other.keras"))
    with pytest.raises(ValueError, match="do not match"):
        training.train_and_evaluate(config, str(tmp_path / "run"), say=_silent)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_missing_data_set_gives_the_documented_message(tmp_path):
    config = _quick(_load_config(os.path.join(ROOT, "recipes", "configs",
                                              "resnet20_cifar10_lsq.py")),
                    data_dir=str(tmp_path / "tfds"))
    with pytest.raises(data.DatasetNotPreparedError, match="tfds build"):
        training.train_and_evaluate(config, str(tmp_path / "run"), say=_silent)
    assert not os.path.exists(tmp_path / "run")


def test_a_missing_fashion_mnist_gives_the_apt_get_command(tmp_path):
    config = _quick(_load_config(os.path.join(ROOT, "recipes", "configs",
                                              "resnet20_fashion_mnist_adaqat.py")),
                    data_dir=str(tmp_path / "nothing"))
    with pytest.raises(data.DatasetNotPreparedError,
                       match="apt-get install dataset-fashion-mnist"):
        training.train_and_evaluate(config, str(tmp_path / "run"), say=_silent)
    assert not os.path.exists(tmp_path / "run")


def test_fashion_mnist_batches_of_a_run_are_a_function_of_seed_and_epoch(
        tmp_path, fashion_mnist_files):
    config = _quick(_load_config(os.path.join(ROOT, "recipes", "configs",
                                              "resnet20_fashion_mnist_dq.py")),
                    data_dir=fashion_mnist_files, steps_per_epoch=2)
    spec = data.dataset_spec(config.dataset)
    run = training._Run(config, str(tmp_path), tf.distribute.get_strategy(), spec, 2, True,
                        _silent)

    def batches(epoch):
        return [x for x, _ in run.train_data(epoch).as_numpy_iterator()]

    first, again, second = batches(0), batches(0), batches(1)
    assert len(first) == 2 and first[0].shape == (8, 28, 28, 1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert np.abs(np.stack(first) - np.stack(second)).max() > 0.1


def test_absl_refuses_an_unknown_strategy_flag(tmp_path):
    result = _recipe(tmp_path, "--strategy=horovod")
    assert result.returncode != 0
    assert "strategy" in result.stderr and "horovod" in result.stderr


def test_learning_rate_scales_with_the_global_batch_and_steps_at_the_decay_epochs():
    config = _digits(schedule="step", learning_rate=0.1, batch_size=256, base_batch_size=128)
    config.decay_epochs = (2, 3)
    schedule = training.learning_rate_schedule(config, config.learning_rate, 4, 10)
    rates = [float(schedule(step)) for step in (0, 19, 20, 29, 30, 39)]
    np.testing.assert_allclose(rates, [0.2, 0.2, 0.02, 0.02, 0.002, 0.002], rtol=1e-6)


def test_warm_up_then_cosine_and_its_serialization():
    config = _digits(schedule="cosine", learning_rate=0.4, batch_size=64, base_batch_size=64,
                     warmup_epochs=1)
    schedule = training.learning_rate_schedule(config, config.learning_rate, 2, 4)
    rates = [float(schedule(step)) for step in range(8)]
    np.testing.assert_allclose(rates[:4], [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    cosine = [0.4 * 0.5 * (1 + np.cos(np.pi * step / 8)) for step in range(4, 8)]
    np.testing.assert_allclose(rates[4:], cosine, rtol=1e-5)
    restored = training.WarmUp.from_config(schedule.get_config())
    np.testing.assert_allclose([float(restored(step)) for step in range(8)], rates, rtol=1e-6)
