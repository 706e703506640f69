"""bench/deploy.py's targets: which rows pass, computed from golden rows."""

from bench import deploy


def _row(file, bytes_, physical, runtimes, integers=None):
    row = {"model": "m", "file": file, "bytes": bytes_, "physical_limit": physical,
           "runtimes": runtimes}
    if integers is not None:
        row["integers"] = {"top1": integers, "within_one_step": 1.0}
    return row


def test_targets_from_golden_rows():
    timing = {"cpu_ms": 1.0, "wall_ms": 1.0}
    keras_only = dict(timing, top1=1.0, within_one_step=1.0)
    # Against Keras the reference runtimes are far off (not a target); in their own
    # arithmetic they agree, except where a row says otherwise.
    reference = dict(timing, top1=0.9, within_one_step=0.5, top1_in_its_arithmetic=1.0,
                     within_one_step_in_its_arithmetic=1.0, equal_in_its_arithmetic=1.0)
    rows = [
        _row("adaqat int8", 300, 100,
             {"xnnpack": keras_only,
              "builtin": dict(reference, within_one_step_in_its_arithmetic=0.99),
              "tflm": reference}, integers=1.0),
        _row("adaqat int4", 170, 100,
             {"xnnpack": dict(keras_only, top1=0.5),  # int4 on XNNPACK: printed only
              "builtin": reference, "tflm": dict(reference, cpu_ms=1.2)}, integers=0.998),
        _row("tfmot int8", 250, 200, {"tflm": timing}),
    ]
    checks = deploy._checks(rows)
    assert [met for _, met in checks] == [
        True,                # int8: its integers rounded once vs Keras
        True, False, True,   # int8: xnnpack vs Keras; builtin 0.99 within a step < 0.999
        False,               # int4: integers' top-1 0.998 < 0.999
        True, True,          # int4: builtin, tflm in their arithmetic (no XNNPACK check)
        True,                # 170 <= 1.15 x (100 + (250 - 200)) = 172.5
        False]               # TFLite Micro 1.2x the int8 file's > 1.1
    assert "xnnpack" not in " ".join(label for label, _ in checks[4:])
