"""tfadaqat.callbacks: bits and cost reach History and TensorBoard every epoch."""

import glob

import numpy as np
import pytest

import tfadaqat
from tests.test_model import _budget_problem, _dq_with_budget
from tests.test_report import hand_bitops, hand_weight_bytes
from tfadaqat._compat import tf


def test_bit_width_logger_history_and_tensorboard(tmp_path):
    images, labels = _budget_problem()
    qmodel = _dq_with_budget(tfadaqat.Budget.relative(weight_kb=0.5))
    logger = tfadaqat.BitWidthLogger(log_dir=str(tmp_path / "logs"))
    history = qmodel.fit(images[:128], labels[:128], epochs=3, batch_size=32, verbose=0,
                         callbacks=[logger])
    assert len(logger.records) == 3
    # Each epoch's logged cost is the hand-computed cost of that epoch's logged bits.
    for epoch, record in enumerate(logger.records):
        assert history.history["bitops"][epoch] == hand_bitops(record["bits"])
        assert history.history["weight_kb"][epoch] == pytest.approx(
            hand_weight_bytes(record["bits"]) / 1024, rel=1e-6)
    final_bits = tfadaqat.bit_widths(qmodel)
    assert history.history["bits/stem_conv/kernel"][-1] == final_bits["stem_conv"]["kernel"]
    assert logger.records[-1]["bits"] == final_bits
    # The bits moved during training (8-bit start, half the 8-bit weight memory allowed).
    eight_bit = hand_weight_bytes({name: {"kernel": 8} for name in
                                   ("stem_conv", "block_conv", "depthwise", "logits")}) / 1024
    assert history.history["weight_kb"][-1] < eight_bit
    assert len({record["bits"]["block_conv"]["kernel"] for record in logger.records} |
               {8}) > 1
    events = glob.glob(str(tmp_path / "logs" / "train" / "events.out.tfevents.*"))
    assert len(events) == 1
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        for value in event.summary.value:
            tags.add(value.tag)
    assert {"bitops", "weight_kb", "activation_kb", "bits/stem_conv/kernel"} <= tags


def test_plot_bit_widths_writes_a_png(tmp_path):
    images, labels = _budget_problem()
    qmodel = _dq_with_budget(tfadaqat.Budget.relative(weight_kb=0.5))
    logger = tfadaqat.BitWidthLogger()
    qmodel.fit(images[:64], labels[:64], epochs=2, batch_size=32, verbose=0, callbacks=[logger])
    path = tfadaqat.plot_bit_widths(qmodel, str(tmp_path / "plots" / "bits.png"),
                                    records=logger.records, title="dq")
    with open(path, "rb") as handle:
        header = handle.read(8)
    assert header == b"\x89PNG\r\n\x1a\n"
    single = tfadaqat.plot_bit_widths(qmodel, str(tmp_path / "single.png"))
    assert np.fromfile(single, np.uint8).size > 1000
