"""Human-readable reports of a quantized model: the per-layer bit-width and cost table.

:func:`summary` prints one row per layer (bits, parameters, MACs, BitOPs, memory) with totals
and the compression against float32 and against the same model at uniform 8 bits, and returns
the same numbers as data, so scripts and tests read what a person reads.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from tfadaqat.budget import QUANTITIES, cost_totals
from tfadaqat.cost import FLOAT_BITS, cost, uniform_bits

_COLUMNS = (("layer", "layer", "<"), ("weight_bits", "w bits", ">"),
            ("activation_bits", "a bits", ">"), ("params", "params", ">"),
            ("macs", "MACs", ">"), ("bitops", "BitOPs", ">"),
            ("weight_kb", "weight KB", ">"), ("activation_kb", "act KB", ">"))


def summary(model, *, activation_reduce: str = "max",
            print_fn: Optional[Callable[[str], Any]] = print) -> Dict[str, Any]:
    """Prints the per-layer bit-width and cost table of `model` and returns it as data.

    Args:
      model: A model returned by :func:`tfadaqat.quantize_model`.
      activation_reduce: "max" or "sum" for the activation-memory total.
      print_fn: Called with the table text; None prints nothing.

    Returns:
      ``{"layers": [row, ...], "totals": {...}, "compression": {...}}``; each row has the
      keys ``layer, weight_bits, activation_bits, params, macs, bitops, weight_kb,
      activation_kb``; ``totals`` has the same numeric keys summed (activation KB reduced by
      `activation_reduce`); ``compression`` gives float32 / this and 8-bit / this for BitOPs
      and weight memory.
    """
    current = cost(model, activation_reduce=activation_reduce)
    as_float = cost(model, activation_reduce=activation_reduce,
                             bits=uniform_bits(model, FLOAT_BITS))
    as_8bit = cost(model, activation_reduce=activation_reduce,
                            bits=uniform_bits(model, 8))
    rows: List[Dict[str, Any]] = [{
        "layer": layer.name, "weight_bits": layer.weight_bits,
        "activation_bits": layer.activation_bits, "params": layer.params, "macs": layer.macs,
        "bitops": layer.bitops, "weight_kb": layer.weight_kb,
        "activation_kb": layer.activation_kb} for layer in current.layers]
    totals = {"params": current.params, "macs": current.macs, "bitops": current.bitops,
              "weight_kb": current.weight_kb, "activation_kb": current.activation_kb}
    compression = {
        "bitops_vs_float32": _ratio(as_float.bitops, current.bitops),
        "bitops_vs_8bit": _ratio(as_8bit.bitops, current.bitops),
        "weight_memory_vs_float32": _ratio(as_float.weight_memory_bits,
                                           current.weight_memory_bits),
        "weight_memory_vs_8bit": _ratio(as_8bit.weight_memory_bits, current.weight_memory_bits),
    }
    report = {"layers": rows, "totals": totals, "compression": compression}
    budget = getattr(model, "budget", None)
    if budget is not None:
        report["budget"] = budget_status(model, current)
    if print_fn is not None:
        print_fn(format_summary(report, activation_reduce))
    return report


def budget_status(model, current=None) -> Dict[str, Dict[str, Any]]:
    """``{quantity: {"limit", "value", "met"}}`` for each bound of ``model.budget``.

    Costs are computed with the budget's own activation reduction.
    """
    budget = model.budget
    if current is None or current.activation_reduce != budget.activation_reduce:
        current = cost(model, activation_reduce=budget.activation_reduce)
    values = cost_totals(current)
    return {name: {"limit": budget.limit(name), "value": values[name],
                   "met": values[name] <= budget.limit(name)}
            for name in QUANTITIES if budget.limit(name) is not None}


def format_budget(status: Dict[str, Dict[str, Any]]) -> str:
    """One line per bound: ``Budget bitops: 1,234 <= 2,000 (0.62 of it): met``."""
    lines = []
    for name, entry in status.items():
        verdict = "met" if entry["met"] else "NOT MET"
        sign = "<=" if entry["met"] else ">"
        lines.append(f"Budget {name}: {entry['value']:,.6g} {sign} {entry['limit']:,.6g} "
                     f"({entry['value'] / entry['limit']:.3f} of it): {verdict}")
    return "\n".join(lines)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("inf")


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("weight_kb", "activation_kb"):
        return f"{value:.2f}"
    if isinstance(value, int) and key in ("params", "macs", "bitops"):
        return f"{value:,}"
    return str(value)


def format_summary(report: Dict[str, Any], activation_reduce: str = "max") -> str:
    """The text table of a :func:`summary` report."""
    table = [[header for _, header, _ in _COLUMNS]]
    for row in report["layers"]:
        table.append([_cell(key, row[key]) for key, _, _ in _COLUMNS])
    totals = report["totals"]
    table.append(["total", "", "", _cell("params", totals["params"]),
                  _cell("macs", totals["macs"]), _cell("bitops", totals["bitops"]),
                  _cell("weight_kb", totals["weight_kb"]),
                  _cell("activation_kb", totals["activation_kb"]) + f" ({activation_reduce})"])
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    lines = []
    for index, line in enumerate(table):
        cells = [cell.ljust(width) if align == "<" else cell.rjust(width)
                 for cell, width, (_, _, align) in zip(line, widths, _COLUMNS)]
        lines.append("  ".join(cells))
        if index == 0 or index == len(table) - 2:
            lines.append("-" * len(lines[-1]))
    ratios = report["compression"]
    lines.append(f"BitOPs: {ratios['bitops_vs_float32']:.1f}x smaller than float32, "
                 f"{ratios['bitops_vs_8bit']:.2f}x smaller than uniform 8-bit")
    lines.append(f"Weight memory: {ratios['weight_memory_vs_float32']:.1f}x smaller than "
                 f"float32, {ratios['weight_memory_vs_8bit']:.2f}x smaller than uniform 8-bit")
    if "budget" in report:
        lines.append(format_budget(report["budget"]))
    return "\n".join(lines)
