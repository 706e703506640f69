"""bench/deploy.py's targets: which rows pass, computed from golden rows."""

from bench import deploy


def _row(file, bytes_, physical, runtimes):
    return {"model": "m", "file": file, "bytes": bytes_, "physical_limit": physical,
            "runtimes": runtimes}


def test_targets_from_golden_rows():
    agree = {"top1": 1.0, "within_one_step": 1.0, "cpu_ms": 1.0, "wall_ms": 1.0}
    rows = [
        _row("adaqat int8", 300, 100, {"xnnpack": agree, "builtin": dict(agree, top1=0.99),
                                       "tflm": agree}),
        _row("adaqat int4", 170, 100, {"xnnpack": agree, "builtin": agree,
                                       "tflm": dict(agree, cpu_ms=1.2)}),
        _row("tfmot int8", 250, 200, {"tflm": {"cpu_ms": 1.0, "wall_ms": 1.0}}),
    ]
    assert [met for _, met in deploy._checks(rows)] == [
        True, False, True,   # int8 per runtime: builtin's top-1 0.99 < 0.999
        True, True, True,    # int4 per runtime
        True,                # 170 <= 1.15 x (100 + (250 - 200)) = 172.5
        False]               # TFLite Micro 1.2x the int8 file's > 1.1
