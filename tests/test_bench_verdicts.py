"""bench/verdicts.py: the lines printed and the exit status of a bench's targets."""

from bench.verdicts import print_verdicts


def test_exit_status_is_1_on_a_miss_and_when_nothing_was_checked(capsys):
    assert print_verdicts([("a", True), ("b", True)]) == 0
    assert capsys.readouterr().out == "[PASS] a\n[PASS] b\n"
    assert print_verdicts([("a", True), ("b", False)]) == 1
    assert capsys.readouterr().out == "[PASS] a\n[FAIL] b\n"
    assert print_verdicts([]) == 1
    assert capsys.readouterr().out.startswith("[FAIL] no target was checked")
