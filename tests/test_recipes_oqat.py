"""recipes.oqat: options, budgets, the whole run on digits and mock cifar10, and resuming."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfadaqat
from recipes import oqat
from tfadaqat._compat import tflite_interpreter
from tfadaqat.oqat import SearchSpace, subnet_cost

pytestmark = pytest.mark.slow  # multi-minute: outside the fast subset (setup.cfg)

TINY = dict(bits=(4, 3), budgets=(0.6,), epochs=1, finetune_epochs=1, population=4,
            generations=1, parents=2, stage_channels=(8, 16), depths=(1, 2),
            kernel_sizes=(3, 5), expand_ratios=(3,), verify_examples=64)


@pytest.mark.parametrize("field, value, message", [
    ("dataset", "mnist", r"dataset must be one of \('digits', 'cifar10'\), got 'mnist'"),
    ("bits", (3, 4), r"bits must decrease .* got \[3, 4\]"),
    ("bits", (4, 1), r"bits must be integers in \[2, 8\], got \[4, 1\]"),
    ("budgets", (0.5, 1.5), r"budgets must be fractions in \(0, 1\]"),
    ("edge_bits", 16, r"edge_bits must be 0 \(float stem and classifier\) or in \[2, 8\]"),
    ("epochs", 0, r"epochs must be a positive integer, got 0"),
    ("learning_rate", -1.0, r"learning_rate must be positive, got -1.0"),
])
def test_bad_options_are_refused(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        oqat.Options(workdir=str(tmp_path), **{**TINY, field: value})


def test_an_impossible_budget_is_refused_before_training(tmp_path):
    options = oqat.Options(workdir=str(tmp_path / "run"), **{**TINY, "budgets": (0.01,)})
    with pytest.raises(ValueError, match=r"budget 0.01 .* below the smallest sub-network at 3 "
                                         r"bits .* budgets must lie in \[0\.\d+, 1\]"):
        oqat.run(options)
    assert not os.path.exists(tmp_path / "run")


def test_digits_run_meets_budgets_exports_and_resumes(tmp_path, capsys):
    options = oqat.Options(workdir=str(tmp_path / "run"), **TINY)
    rows = oqat.run(options)
    assert {(row["bits"], row["name"].split("_")[1]) for row in rows} == {
        (bits, name) for bits in (4, 3) for name in ("largest", "smallest", "budget0.6")}
    table = json.load(open(tmp_path / "run" / "pareto.json"))
    reference = table["reference_bitops"]
    space, spec = options.space(), options.spec()
    # The reference is the largest sub-net at the first bit-width; its row has that cost.
    largest, = [r for r in rows if r["name"] == "4bit_largest"]
    assert largest["bitops"] == reference
    test_x, test_y = oqat.load_data(options).test
    for row in rows:
        assert row["test_accuracy"] == pytest.approx(row["supernet_accuracy"], abs=1e-9)
        # Oracle: the saved (bias-aligned) sub-net's argmax over the test split, in NumPy.
        saved = tfadaqat.load_model(row["tflite"][:-7] + ".keras")
        predicted = np.argmax(saved.predict(test_x, verbose=0), axis=1)
        assert row["aligned_accuracy"] == pytest.approx(float(np.mean(predicted == test_y)))
        assert row["tflite_top1_agreement"] >= 0.9
        assert _fraction_within_two_steps(row["tflite"], row["tflite"][:-7] + ".keras",
                                          oqat.load_data(options).test[0][:64]) >= 0.95
        assert os.path.getsize(row["tflite"]) == row["tflite_bytes"]
        if row["budget"] is not None:
            assert row["budget"] == pytest.approx(0.6 * reference)
            assert row["bitops"] <= row["budget"]
    # Whole-network BitOPs = the blocks' (the search's cost model) + a constant stem/classifier.
    edges = {r["bits"]: r["bitops"] - subnet_cost(
        _config(r["config"]), spec, weight_bits=r["bits"], activation_bits=r["bits"])["bitops"]
        for r in rows}
    assert len(set(edges.values())) == 2 and all(v > 0 for v in edges.values())
    for name in ("pareto.png", "pareto.txt", "supernets/4bit.index", "supernets/3bit.index",
                 "search_3bit_budget0.6.json", "subnets/3bit_budget0.6.keras",
                 "subnets/3bit_budget0.6_summary.txt"):
        assert os.path.exists(tmp_path / "run" / name), name
    assert not os.path.exists(tmp_path / "run" / "backup" / "4bit")  # removed when done
    capsys.readouterr()
    again = oqat.run(options)  # same command: the supernets are loaded, not trained
    output = capsys.readouterr().out
    assert "[4-bit supernet] loaded" in output and "[3-bit supernet] loaded" in output
    assert "sandwich training" not in output
    assert [(r["name"], r["bitops"], r["test_accuracy"]) for r in again] == [
        (r["name"], r["bitops"], r["test_accuracy"]) for r in rows]


def test_cifar10_pipeline_runs_on_mock_data(tmp_path):
    options = oqat.Options(workdir=str(tmp_path / "run"), dataset="cifar10",
                           **{**TINY, "bits": (3,), "edge_bits": 0, "budgets": (0.98,),
                              "batch_size": 8, "verify_examples": 8})
    with tfds.testing.mock_data(num_examples=16):
        rows = oqat.run(options)
        test_count = len(oqat.load_data(options).test[1])
    assert len(rows) == 3
    for row in rows:
        assert row["test_accuracy"] == pytest.approx(row["supernet_accuracy"], abs=1e-9)
        correct = row["test_accuracy"] * test_count  # a count of test images
        assert correct == pytest.approx(round(correct), abs=1e-6)
    assert all("tflite" not in r for r in rows)  # float stem and classifier: no integer file
    # tfadaqat.cost counts the float stem at 32 bits: it dominates a tiny 32x32 network.
    assert options.spec().input_shape == (32, 32, 3)


def _fraction_within_two_steps(tflite_path, keras_path, images):
    """Examples whose outputs in the file are within 2 output steps of the Keras model's. A
    rounding tie that float and integer arithmetic break differently at a 3-4 bit activation
    can move one example's logits further; most examples must agree to the step."""
    model = tfadaqat.load_model(keras_path)
    step, = [float(variables["step"]) for name, role, _, variables, _ in
             tfadaqat.quantized_tensors(model) if (name, role) == ("classifier", "output")]
    interpreter = tflite_interpreter(open(tflite_path, "rb").read())
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[0])
    difference = np.abs(np.array(outputs) - model.predict(images, verbose=0)).max(axis=1)
    return float(np.mean(difference <= 2 * step + 1e-6))


def _config(values):
    from tfadaqat.oqat import SubnetConfig
    return SubnetConfig.from_dict(values)


def test_a_diverging_supernet_is_reported_not_saved(tmp_path):
    options = oqat.Options(workdir=str(tmp_path / "run"),
                           **{**TINY, "bits": (3,), "learning_rate": 1e9})
    with pytest.raises(FloatingPointError, match=r"3-bit supernet's loss became nan in epoch 1"):
        oqat.run(options)
    assert not os.path.exists(tmp_path / "run" / "supernets" / "3bit.index")
