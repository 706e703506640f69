"""tfadaqat.report: the summary table against costs worked out by hand for a known model.

``small_resnet`` (tests/conftest.py) on an 8x8x1 input, every layer "same"-padded, so every
convolution has 8 x 8 = 64 output positions:

    layer       kernel          params          MACs                input tensor
    stem_conv   3x3x1x8         72              64 x 72  =  4,608    image
    block_conv  3x3x8x8         576             64 x 576 = 36,864    stem_relu
    depthwise   3x3x8 (+8 bias) 72 + 8          64 x 72  =  4,608    block_out
    logits      8x3   (+3 bias) 24 + 3          24                  pool

BitOPs = MACs x kernel bits x input bits; weight memory = kernel params x kernel bits + 32
bits per bias; activation memory = elements per example x bits, summed (``"sum"``).
"""

import pytest

import tfadaqat
from tests.conftest import small_resnet

MACS = {"stem_conv": 4_608, "block_conv": 36_864, "depthwise": 4_608, "logits": 24}
KERNEL_PARAMS = {"stem_conv": 72, "block_conv": 576, "depthwise": 72, "logits": 24}
BIAS_PARAMS = {"stem_conv": 0, "block_conv": 0, "depthwise": 8, "logits": 3}
# Elements per example of each quantized tensor: image 8x8x1, four 8x8x8 maps, pool 8, logits 3.
ACTIVATION_ELEMENTS = {"image_quantize_point": 64, "stem_relu": 512, "block_bn": 512,
                       "block_out": 512, "depthwise": 512, "pool": 8, "logits": 3}


def hand_bitops(bits):
    """BitOPs of small_resnet from its bits (:func:`tfadaqat.bit_widths` layout)."""
    kernel = {name: next(b for key, b in bits[name].items() if "kernel" in key)
              for name in MACS}
    inputs = {"stem_conv": bits["image_quantize_point"]["output"],
              "block_conv": bits["stem_relu"]["output"],
              "depthwise": bits["block_out"]["output"], "logits": bits["pool"]["output"]}
    return sum(MACS[name] * kernel[name] * inputs[name] for name in MACS)


def hand_weight_bytes(bits):
    kernel = {name: next(b for key, b in bits[name].items() if "kernel" in key)
              for name in MACS}
    return sum(KERNEL_PARAMS[n] * kernel[n] + 32 * BIAS_PARAMS[n] for n in MACS) / 8


def test_summary_rows_match_the_hand_computed_costs():
    qmodel = tfadaqat.quantize_model(small_resnet(), "adaqat", weight_bits=4, activation_bits=4)
    tfadaqat.set_bit_widths(qmodel, {"stem_conv": {"kernel": 2}, "logits": {"kernel": 8}})
    printed = []
    report = tfadaqat.summary(qmodel, activation_reduce="sum", print_fn=printed.append)
    rows = {row["layer"]: row for row in report["layers"]}
    totals = report["totals"]
    # BitOPs: 4608x2x4 + 36864x4x4 + 4608x4x4 + 24x8x4.
    expected_bitops = {"stem_conv": 36_864, "block_conv": 589_824, "depthwise": 73_728,
                       "logits": 768}
    for name, bitops in expected_bitops.items():
        assert rows[name]["macs"] == MACS[name]
        assert rows[name]["params"] == KERNEL_PARAMS[name] + BIAS_PARAMS[name]
        assert rows[name]["bitops"] == bitops
    assert totals["bitops"] == 701_184 == hand_bitops(tfadaqat.bit_widths(qmodel))
    assert totals["macs"] == 46_104 and totals["params"] == 755
    # Weights: 72x2 + 576x4 + (72x4 + 8x32) + (24x8 + 3x32) bits = 410 bytes.
    assert rows["stem_conv"]["weight_kb"] == 18 / 1024
    assert rows["depthwise"]["weight_kb"] == 68 / 1024
    assert totals["weight_kb"] == 410 / 1024
    # Activations, 4 bits each: (64 + 4 x 512 + 8 + 3) x 4 bits = 1,061.5 bytes.
    assert rows["stem_relu"]["activation_kb"] == 256 / 1024
    assert totals["activation_kb"] == pytest.approx(
        sum(ACTIVATION_ELEMENTS.values()) * 4 / 8 / 1024, rel=1e-12)
    assert rows["stem_conv"]["weight_bits"] == 2 and rows["logits"]["weight_bits"] == 8
    text = printed[0]
    assert "stem_conv" in text and "701,184" in text
    assert "4.21x smaller than uniform 8-bit" in text    # 46,104 x 64 / 701,184 = 4.208


def test_compression_ratios():
    qmodel = tfadaqat.quantize_model(small_resnet(), "lsq", weight_bits=4, activation_bits=4)
    ratios = tfadaqat.summary(qmodel, print_fn=None)["compression"]
    assert ratios["bitops_vs_8bit"] == pytest.approx(4.0)      # (8 x 8) / (4 x 4)
    assert ratios["bitops_vs_float32"] == pytest.approx(64.0)  # (32 x 32) / (4 x 4)
    # 8-bit: 744 kernel params x 8 + 11 biases x 32 = 6,304 bits; 4-bit: 744 x 4 + 352 = 3,328.
    assert ratios["weight_memory_vs_8bit"] == pytest.approx(6_304 / 3_328, rel=1e-12)
    # float32: 755 params x 32 bits = 24,160 bits.
    assert ratios["weight_memory_vs_float32"] == pytest.approx(24_160 / 3_328, rel=1e-12)
