"""bench/step_time's target check: CPU-time ratios within one run, a miss is a FAIL."""

from bench.step_time import check_targets


def _medians(**cpu_ms):
    names = {"float": "float", "tfmot": "tfmot default 8-bit",
             "lsq": "tfadaqat lsq (4-bit start)", "dq": "tfadaqat dq (4-bit start)",
             "unguarded": "tfadaqat lsq, no NaN guard",
             "probe": "tfadaqat adaqat, probe every step"}
    # Wall times are deliberately the reverse of CPU times: only CPU time decides.
    return {names[key]: (1.0 / value, value / 1e3) for key, value in cpu_ms.items()}


def test_plain_steps_are_held_to_tfmot_and_probing_to_float():
    checks = dict(check_targets(_medians(float=100.0, tfmot=120.0, lsq=120.0, dq=121.0,
                                         unguarded=200.0, probe=150.0)))
    verdicts = {description.split(":")[0]: passed for description, passed in checks.items()}
    assert verdicts == {"tfadaqat lsq (4-bit start)": True,      # 1.00x TFMOT: on the line
                        "tfadaqat dq (4-bit start)": False,      # 1.01x TFMOT
                        "tfadaqat adaqat, probe every step": True}  # 1.50x float
    assert "1.01x TFMOT's CPU time per step <= 1.00" in " ".join(checks)
    assert not dict(check_targets(_medians(float=100.0, tfmot=120.0, lsq=100.0,
                                           probe=151.0)))[
        "tfadaqat adaqat, probe every step: 1.51x float's CPU time per step <= 1.50"]
