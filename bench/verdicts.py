"""The end of every bench that checks targets: one line per target, the exit status."""

from __future__ import annotations

from typing import Iterable, Tuple


def print_verdicts(checks: Iterable[Tuple[str, bool]]) -> int:
    """Prints ``[PASS]`` or ``[FAIL]`` and the description of each check; returns the exit
    status (1 when a target is missed)."""
    checks = list(checks)
    for description, met in checks:
        print(f"[{'PASS' if met else 'FAIL'}] {description}")
    return 0 if all(met for _, met in checks) else 1
