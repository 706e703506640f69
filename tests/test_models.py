"""Tests of the model builders in models/: published parameter counts, layer names, argument
checks, and that every tiny variant quantizes, runs and (where tfadaqat can) exports."""

import warnings

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import keras

import models
from models.mobilenet_v2 import mobilenet_v2, round_channels
from models.resnet import resnet20, resnet_cifar
from models.resnet_imagenet import resnet18
from models.small import small_cnn


def _trainable_count(model) -> int:
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def _kernel_role(layer) -> str:
    return ("depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D)
            else "kernel")


def _images(batch=3, shape=(32, 32, 3), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch,) + shape).astype(np.float32)


def test_resnet20_parameter_count():
    # ResNet20 with option-B shortcuts, 10 classes, by hand (BN: 2 trainable + 2 moving per
    # channel; convolutions have no bias):
    #   stem        3*3*3*16 = 432                               BN 16
    #   stage 1     6 convs 3*3*16*16 = 6 * 2,304 = 13,824       BN 6 * 16 = 96
    #   stage 2     3*3*16*32 = 4,608; 5 convs 3*3*32*32 = 46,080; 1x1 16*32 = 512
    #                                                            BN 7 * 32 = 224
    #   stage 3     3*3*32*64 = 18,432; 5 convs 3*3*64*64 = 184,320; 1x1 32*64 = 2,048
    #                                                            BN 7 * 64 = 448
    #   logits      64*10 + 10 = 650
    # conv + dense weights = 432 + 13,824 + 51,200 + 204,800 + 650 = 270,906;
    # BN channels = 784, so trainable = 270,906 + 2 * 784 = 272,474 and, with the moving
    # mean and variance, count_params() = 272,474 + 1,568 = 274,042.
    model = resnet20()
    assert _trainable_count(model) == 272_474
    assert model.count_params() == 274_042
    assert round(_trainable_count(model) / 1e6, 2) == 0.27  # the paper's "0.27M"


@pytest.mark.parametrize("depth, paper_millions", [(20, 0.27), (32, 0.46), (44, 0.66),
                                                   (56, 0.85)])
def test_cifar_resnet_depths_match_the_paper(depth, paper_millions):
    model = getattr(models, f"resnet{depth}")()
    # Each further block per stage (6 more layers of depth) adds two 3x3 convolutions and
    # their BN in every stage: 2*2,304 + 2*9,216 + 2*36,864 + 2*2*(16 + 32 + 64) = 97,216.
    assert _trainable_count(model) == 272_474 + (depth - 20) // 6 * 97_216
    assert model.name == f"resnet{depth}"
    # The paper's counts are for option A (zero-padded identity shortcuts); option B's two
    # projections add 512 + 2,048 conv weights and 2 * (32 + 64) BN weights.
    assert round((_trainable_count(model) - 2_752) / 1e6, 2) == paper_millions


def test_resnet18_parameter_count():
    model = resnet18()
    # torchvision's resnet18 count (gamma and beta, no conv bias); Keras adds the moving mean
    # and variance of 4,800 BN channels (64 + 4*64 + 5*128 + 5*256 + 5*512).
    assert _trainable_count(model) == 11_689_512
    assert model.count_params() == 11_689_512 + 2 * 4_800 == 11_699_112
    assert model.output_shape == (None, 1000)
    assert model.get_layer("stage4_block2_out").output_shape == (None, 7, 7, 512)


def test_mobilenet_v2_parameter_count_matches_keras_applications():
    model = mobilenet_v2()
    reference = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    assert _trainable_count(model) == _trainable_count(reference) == 3_504_872
    assert model.count_params() == reference.count_params() == 3_538_984
    assert model.get_layer("head_conv").output_shape == (None, 7, 7, 1280)


def test_mobilenet_v2_width_multiplier_keeps_1280_head():
    model = mobilenet_v2(width_multiplier=0.5)
    # keras.applications.MobileNetV2(alpha=0.5) has the same counts.
    assert _trainable_count(model) == 1_968_680
    assert model.count_params() == 1_987_224
    assert model.get_layer("stem_conv").filters == 16
    assert model.get_layer("stage7_block1_project_conv").filters == 160
    assert model.get_layer("head_conv").filters == 1280


def test_round_channels():
    # Nearest multiple of 8 (halves up), at least 8; one multiple up when rounding would lose
    # more than 10% (9 -> 8 loses 11%, 11.9 -> 8 loses 33%).
    assert [round_channels(value) for value in (1, 4, 8.8, 9, 11.9, 12, 20, 33.6, 60, 448)] == [
        8, 8, 8, 16, 16, 16, 24, 32, 64, 448]
    assert round_channels(12, divisor=16) == 16


@pytest.mark.parametrize("small_input, head_size", [(False, 1), (True, 4)])
def test_mobilenet_v2_small_input(small_input, head_size):
    model = mobilenet_v2(input_shape=(32, 32, 3), num_classes=10, width_multiplier=0.25,
                         small_input=small_input)
    assert model.get_layer("head_conv").output_shape == (None, head_size, head_size, 1280)
    assert model.get_layer("stem_conv").strides == ((1, 1) if small_input else (2, 2))
    # Strides change, weights do not.
    assert model.count_params() == mobilenet_v2(
        input_shape=(32, 32, 3), num_classes=10, width_multiplier=0.25).count_params()


def test_mobilenet_v2_block_structure():
    # At 0.5 the stem (16) and the first stage (8) differ in width, as at 1.0 (32 and 16).
    model = mobilenet_v2(input_shape=(32, 32, 3), num_classes=10, width_multiplier=0.5)
    names = {layer.name for layer in model.layers}
    # Expansion 1 in the first block: no expand convolution there.
    assert "stage1_block1_expand_conv" not in names
    assert model.get_layer("stage2_block1_expand_conv").filters == 8 * 6
    assert isinstance(model.get_layer("stage2_block1_depthwise_conv"),
                      keras.layers.DepthwiseConv2D)
    assert model.get_layer("stage2_block1_depthwise_relu").max_value == 6.0
    # An Add on the stride-1 blocks that keep the width: 0 + 1 + 2 + 3 + 2 + 2 + 0 of them.
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 10
    assert "stage2_block2_add" in names and "stage2_block1_add" not in names
    convolutions = [layer for layer in model.layers
                    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    assert convolutions and not any(layer.use_bias for layer in convolutions)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_layer_names_are_deterministic(name):
    first = models.build_model(name, input_shape=(32, 32, 3), num_classes=10, tiny=True)
    second = models.build_model(name, input_shape=(32, 32, 3), num_classes=10, tiny=True)
    first_names = [layer.name for layer in first.layers]
    assert first_names == [layer.name for layer in second.layers]
    assert first_names[:2] == ["image", "stem_conv"]
    assert first_names[-2:] == ["pool", "logits"]
    assert len(set(first_names)) == len(first_names)


def test_resnet_layer_names():
    names = [layer.name for layer in resnet18(input_shape=(32, 32, 3), width=8).layers]
    assert names[:9] == ["image", "stem_conv", "stem_bn", "stem_relu", "stem_pool",
                         "stage1_block1_1_conv", "stage1_block1_1_bn", "stage1_block1_1_relu",
                         "stage1_block1_2_conv"]
    # Projections only where the shape changes: the first block of stages 2 to 4.
    assert sorted(name for name in names if name.endswith("shortcut_conv")) == [
        f"stage{stage}_block1_shortcut_conv" for stage in (2, 3, 4)]
    cifar_names = [layer.name for layer in resnet_cifar(8, width=4).layers]
    assert [name for name in cifar_names if name.endswith("shortcut_conv")] == [
        "stage2_block1_shortcut_conv", "stage3_block1_shortcut_conv"]


@pytest.mark.parametrize("build, match", [
    (lambda: resnet_cifar(21), r"depth must be 6n \+ 2 .* got 21"),
    (lambda: resnet_cifar(2), r"depth must be 6n \+ 2 .* got 2"),
    (lambda: resnet_cifar(20.0), r"depth must be 6n \+ 2 .* got 20.0"),
    (lambda: resnet_cifar(20, width=0), "width must be a positive integer, got 0"),
    (lambda: resnet18(num_classes=0), "num_classes must be a positive integer, got 0"),
    (lambda: mobilenet_v2(width_multiplier=0), "width_multiplier must be a finite number > 0"),
    (lambda: mobilenet_v2(width_multiplier=-0.5), "width_multiplier must be .* got -0.5"),
    (lambda: mobilenet_v2(width_multiplier=float("inf")), "width_multiplier must be"),
    (lambda: resnet20(input_shape=(32, 32)), r"input_shape must be \(height, width, channels\)"),
    (lambda: resnet18(input_shape=(32, 0, 3)), r"input_shape .* got \(32, 0, 3\)"),
    (lambda: mobilenet_v2(input_shape=(32.0, 32, 3)), "input_shape must be"),
    (lambda: small_cnn(input_shape=None), "input_shape must be"),
    (lambda: resnet20(bn_momentum=1.0), r"bn_momentum must be a number in \[0, 1\), got 1.0"),
    (lambda: small_cnn(bn_momentum=-0.1), r"bn_momentum must be a number in \[0, 1\)"),
    (lambda: models.build_model("vgg16", input_shape=(32, 32, 3), num_classes=10),
     r"name must be one of \('small_cnn', 'resnet20', .*'mobilenet_v2'\), got 'vgg16'"),
])
def test_bad_arguments_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_build_model_arguments():
    assert models.MODEL_NAMES == ("small_cnn", "resnet20", "resnet32", "resnet44", "resnet56",
                                  "resnet18", "mobilenet_v2")
    resnet = models.build_model("resnet56", input_shape=(32, 32, 3), num_classes=10)
    assert resnet.name == "resnet56" and resnet.count_params() == 860_026
    assert resnet.get_layer("stem_bn").momentum == 0.99
    small = models.build_model("small_cnn", input_shape=(8, 8, 1), num_classes=10)
    assert small.get_layer("stem_bn").momentum == 0.9  # small_cnn's own default is kept
    assert small.count_params() == small_cnn().count_params()
    tiny = models.build_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=7,
                              tiny=True, bn_momentum=0.9, small_input=True, name="mine")
    assert tiny.name == "mine" and tiny.output_shape == (None, 7)
    assert {layer.momentum for layer in tiny.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
    assert tiny.get_layer("head_conv").output_shape == (None, 4, 4, 1280)
    assert tiny.get_layer("stem_conv").filters == 8  # 32 * 0.25, rounded to 8
    with pytest.raises(TypeError, match="small_input"):
        models.build_model("resnet20", input_shape=(32, 32, 3), num_classes=10,
                           small_input=True)


@pytest.mark.parametrize("name, parameters", [
    ("small_cnn", 854), ("resnet20", 5_382), ("resnet32", 5_382), ("resnet44", 5_382),
    ("resnet56", 5_382), ("resnet18", 178_562), ("mobilenet_v2", 261_578)])
def test_tiny_variants_quantize_and_run(name, parameters):
    model = models.build_model(name, input_shape=(32, 32, 3), num_classes=10, tiny=True)
    assert model.name == f"tiny_{name}"
    assert model.count_params() == parameters
    images = _images()
    outputs = model(images, training=False).numpy()
    assert outputs.shape == (3, 10) and np.isfinite(outputs).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = tfadaqat.quantize_model(model, "lsq", weight_bits=4, activation_bits=4)
    assert not [warning for warning in caught if "leaves these layers in float" in
                str(warning.message)]
    qmodel.initialize_quantizers(images)
    quantized = qmodel(images, training=False).numpy()
    assert quantized.shape == (3, 10) and np.isfinite(quantized).all()
    bits = tfadaqat.bit_widths(qmodel)
    kernels = [layer for layer in model.layers if isinstance(
        layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))]
    assert {layer.name: bits[layer.name][_kernel_role(layer)] for layer in kernels} == {
        layer.name: 4 for layer in kernels}


def test_tiny_resnet18_exports(tmp_path):
    model = models.build_model("resnet18", input_shape=(32, 32, 3), num_classes=10, tiny=True)
    qmodel = tfadaqat.quantize_model(model, "lsq", weight_bits=4, activation_bits=4)
    images = _images(batch=8)
    qmodel.initialize_quantizers(images)
    report = tfadaqat.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=images)
    assert report.examples == 8
    assert report.top1_agreement == 1.0
    assert report.max_output_difference <= 2.0


def test_tiny_mobilenet_v2_exports(tmp_path):
    model = models.build_model("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10,
                               tiny=True, small_input=True)
    qmodel = tfadaqat.quantize_model(model, "lsq", weight_bits=4, activation_bits=4)
    images = _images(batch=8)
    qmodel.initialize_quantizers(images)
    report = tfadaqat.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=images)
    assert {"DEPTHWISE_CONV_2D", "ADD"} <= set(report.ops)
    assert report.top1_agreement == 1.0
    assert report.max_output_difference <= 2.0
