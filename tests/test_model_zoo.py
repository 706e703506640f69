"""A CI-sized part of bench/model_zoo: models nobody here wrote, and the microcontroller-style
models, through quantize -> fit -> export -> LiteRT, with the bench's own row functions."""

import numpy as np
import pytest

import tfadaqat
from bench import model_zoo

pytestmark = pytest.mark.slow  # multi-minute: outside the fast subset (setup.cfg)


@pytest.mark.parametrize("name, method", [
    ("MobileNetV3Small", "lsq"),          # Rescaling, hard-swish as TF ops, SE Multiply, softmax
    ("micro_image_classifier", "adaqat"),  # softmax head at the default 8 bits
    ("keyword_spotter", "dq"),            # depthwise-separable blocks on a spectrogram
    ("anomaly_autoencoder", "lsq"),       # Dense -> BatchNormalization, regression output
    ("segmentation_net", "adaqat"),       # Conv2DTranspose, Concatenate skips, per-pixel softmax
])
def test_model_exports_with_integer_kernels_and_agrees(name, method, tmp_path):
    row = model_zoo._tfadaqat_row(name, method, str(tmp_path))
    assert row["ok"], row
    assert row["quantized_tensors"] > 5
    if name in model_zoo.REGRESSION:
        assert row["within_two_steps"] >= 0.98, row
    else:
        assert row["top1"] >= 0.98, row


@pytest.mark.parametrize("name, exports", [("keyword_spotter", True),
                                            ("anomaly_autoencoder", False)])
def test_tfmot_reference_row(name, exports, tmp_path):
    # The row every size target is measured against: TFMOT's default QAT, converted and
    # checked for float kernels (it leaves the autoencoder's dense layers in float).
    row = model_zoo._tfmot_row(name, str(tmp_path))
    assert "error" not in row, row
    assert row["ok"] is exports
    assert row["file_bytes"] > 1000
    assert (row["float_ops"] == []) is exports
    if not exports:
        assert "FULLY_CONNECTED" in row["float_ops"]


def test_targets_are_checked_against_tfmot():
    """The bench's checks fail a slow, large or disagreeing row."""
    result = {"model": "keyword_spotter", "rows": [
        {"method": "tfmot", "ok": True, "file_bytes": 1000},
        {"method": "lsq", "ok": True, "file_bytes": 1100, "top1": 0.98,
         "within_two_steps": 1.0},
        {"method": "dq", "ok": False, "error": "ValueError: x"}]}
    checks = dict(model_zoo._check(result))
    assert list(checks.values()) == [True, False, False, False]


def test_agreement_below_a_chaotic_noise_floor_is_not_a_verdict():
    """A miss where Keras misses the target against itself too is None (counted apart); a
    miss beside a stable noise floor stays a miss."""
    noise = {"noise_max_steps": 9.0, "noise_within_two_steps": 0.99}
    result = {"model": "EfficientNetB0", "rows": [
        {"method": "tfmot", "ok": False},
        {"method": "adaqat", "ok": True, "top1": 0.92, "noise_top1": 0.97, **noise},
        {"method": "dq", "ok": True, "top1": 0.92, "noise_top1": 1.0, **noise},
        {"method": "lsq", "ok": True, "top1": 1.0, "noise_top1": 0.97, **noise}]}
    verdicts = [verdict for _, verdict in model_zoo._check(result)]
    assert verdicts == [True, None, True, False, True, True]


def test_noise_floor_restores_the_model():
    """The perturbed weights are put back: the model predicts exactly as before."""
    model = model_zoo.build("anomaly_autoencoder")
    x, _, _ = model_zoo.data("anomaly_autoencoder", model)
    qmodel = tfadaqat.quantize_model(model, "lsq")
    before = qmodel.predict(x, verbose=0)
    floor = model_zoo.noise_floor(qmodel, x, step=0.01)
    np.testing.assert_array_equal(qmodel.predict(x, verbose=0), before)
    # The same seeded perturbation, measured in other steps: the largest difference in
    # absolute units is the same, and with a huge step every output is within two steps.
    fine = model_zoo.noise_floor(qmodel, x, step=1e-6)
    coarse = model_zoo.noise_floor(qmodel, x, step=1e6)
    assert fine["noise_max_steps"] > 1.0   # the perturbation does move the outputs
    assert floor["noise_max_steps"] * 0.01 == pytest.approx(fine["noise_max_steps"] * 1e-6,
                                                            rel=1e-5)
    assert coarse["noise_within_two_steps"] == 1.0 and coarse["noise_top1"] == 1.0


def test_memory_heavy_models_run_alone():
    assert model_zoo.RUN_ALONE == ("NASNetMobile", "InceptionResNetV2", "ResNetRS50")
    assert model_zoo.may_start("VGG16", [], jobs=2)
    assert model_zoo.may_start("VGG16", ["ResNet50"], jobs=2)
    assert not model_zoo.may_start("VGG16", ["ResNet50", "Xception"], jobs=2)
    assert not model_zoo.may_start("VGG16", ["ResNet50"], jobs=1)
    assert not model_zoo.may_start("NASNetMobile", ["ResNet50"], jobs=2)   # waits to be alone
    assert model_zoo.may_start("NASNetMobile", [], jobs=2)
    assert not model_zoo.may_start("VGG16", ["NASNetMobile"], jobs=2)     # nothing beside it
    assert not model_zoo.may_start("InceptionResNetV2", ["NASNetMobile"], jobs=2)


def test_resume_runs_again_a_model_whose_process_died():
    died = {"model": "ResNetRS50", "rows": [
        {"method": method, "ok": False, "seconds": 0.0, "error": "subprocess exited -9: ..."}
        for method in ("tfmot", "adaqat", "dq", "lsq")]}
    assert model_zoo._process_died(died)
    judged = {"model": "VGG16", "rows": [
        {"method": "tfmot", "ok": True, "file_bytes": 10},
        {"method": "lsq", "ok": False, "error": "ValueError: x"}]}
    assert not model_zoo._process_died(judged)
