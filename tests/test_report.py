"""tfadaqat.report: the summary table and its data agree with the cost model."""

import pytest

import tfadaqat
from tests.conftest import small_resnet


def test_summary_rows_sum_to_totals():
    qmodel = tfadaqat.quantize_model(small_resnet(), "adaqat", weight_bits=4, activation_bits=4)
    tfadaqat.set_bit_widths(qmodel, {"stem_conv": {"kernel": 2}, "logits": {"kernel": 8}})
    printed = []
    report = tfadaqat.summary(qmodel, activation_reduce="sum", print_fn=printed.append)
    rows, totals = report["layers"], report["totals"]
    for key in ("params", "macs", "bitops"):
        assert sum(row[key] for row in rows) == totals[key]
    assert sum(row["weight_kb"] for row in rows) == pytest.approx(totals["weight_kb"])
    assert sum(row["activation_kb"] for row in rows) == pytest.approx(totals["activation_kb"])
    assert totals["bitops"] == tfadaqat.cost(qmodel).bitops
    stem = next(row for row in rows if row["layer"] == "stem_conv")
    assert stem["weight_bits"] == 2
    text = printed[0]
    assert "stem_conv" in text and f"{totals['bitops']:,}" in text
    assert "smaller than uniform 8-bit" in text


def test_compression_ratios():
    qmodel = tfadaqat.quantize_model(small_resnet(), "lsq", weight_bits=4, activation_bits=4)
    ratios = tfadaqat.summary(qmodel, print_fn=None)["compression"]
    assert ratios["bitops_vs_8bit"] == pytest.approx(4.0)      # (8 x 8) / (4 x 4)
    assert ratios["bitops_vs_float32"] == pytest.approx(64.0)  # (32 x 32) / (4 x 4)
    assert 1.0 < ratios["weight_memory_vs_8bit"] < 2.0         # int32 biases are not halved
