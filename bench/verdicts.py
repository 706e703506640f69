"""The end of every bench that checks targets: one line per target, the exit status."""

from __future__ import annotations

from typing import Iterable, Tuple


def print_verdicts(checks: Iterable[Tuple[str, bool]]) -> int:
    """Prints ``[PASS]`` or ``[FAIL]`` and the description of each check; returns the exit
    status: 1 when a target is missed, and when there was no target to check at all (a bench
    whose flags left nothing to measure has shown nothing)."""
    checks = list(checks)
    if not checks:
        print("[FAIL] no target was checked (the flags left nothing to measure)")
        return 1
    for description, met in checks:
        print(f"[{'PASS' if met else 'FAIL'}] {description}")
    return 0 if all(met for _, met in checks) else 1
