"""Checks `make demo`'s result lines against the ones the README quotes.

Usage: python .ci/check_readme_demo.py DEMO_LOG README.md

The README's quickstart shows the end of `make demo`. This compares the two result lines
("test accuracy: ..." and "export: ...") of a fresh run with the README's: accuracies within
0.01 (four or five of the 450 test digits; oneDNN may order float sums differently on another
CPU), the same file size and top-1 agreement, and at most two more output steps than quoted.
Exits 1 naming the line that differs.
"""

import re
import sys

ACCURACY_TOLERANCE = 0.01
STEP_TOLERANCE = 2

ACCURACY_LINE = re.compile(r"^test accuracy: (\w+) ([0-9.]+), float ([0-9.]+)$")
EXPORT_LINE = re.compile(
    r"^export: ([0-9,]+) bytes; top-1 agreement with Keras ([0-9.]+)% on (\d+) test examples,"
    r" outputs within (\d+) quantization steps$"
)


def _find(pattern, text, source):
    for line in text.splitlines():
        match = pattern.match(line.strip())
        if match:
            return match
    raise SystemExit(f"no line matching {pattern.pattern!r} in {source}")


def main(demo_log_path, readme_path):
    with open(demo_log_path) as file:
        demo = file.read()
    with open(readme_path) as file:
        readme = file.read()
    failures = []
    run_accuracy = _find(ACCURACY_LINE, demo, demo_log_path)
    quoted_accuracy = _find(ACCURACY_LINE, readme, readme_path)
    if run_accuracy.group(1) != quoted_accuracy.group(1):
        failures.append(f"method {run_accuracy.group(1)} != README's {quoted_accuracy.group(1)}")
    for index, name in ((2, "quantized"), (3, "float")):
        run_value = float(run_accuracy.group(index))
        quoted_value = float(quoted_accuracy.group(index))
        if abs(run_value - quoted_value) > ACCURACY_TOLERANCE:
            failures.append(
                f"{name} test accuracy {run_value} differs from the README's {quoted_value} by"
                f" more than {ACCURACY_TOLERANCE}"
            )
    run_export = _find(EXPORT_LINE, demo, demo_log_path)
    quoted_export = _find(EXPORT_LINE, readme, readme_path)
    for index, name in ((1, "file bytes"), (2, "top-1 agreement"), (3, "examples")):
        if run_export.group(index) != quoted_export.group(index):
            failures.append(
                f"export {name} {run_export.group(index)} != README's {quoted_export.group(index)}"
            )
    if int(run_export.group(4)) > int(quoted_export.group(4)) + STEP_TOLERANCE:
        failures.append(
            f"export within {run_export.group(4)} steps; the README quotes"
            f" {quoted_export.group(4)} (tolerance {STEP_TOLERANCE})"
        )
    if failures:
        print("make demo no longer prints what the README quotes:")
        for failure in failures:
            print("  " + failure)
        return 1
    print("make demo's result lines match the README's:")
    print("  " + run_accuracy.group(0))
    print("  " + run_export.group(0))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
