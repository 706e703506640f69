"""PNG plots of learned bit-widths: the assignment per layer and its trajectory over training.

Uses matplotlib (the ``demo`` extra) with the non-interactive Agg backend; nothing is shown on
screen.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from tfadaqat.tensors import bit_widths

_MAX_LEGEND_ENTRIES = 24  # beyond this a legend hides the curves; the left panel names them


def plot_bit_widths(model, path: str, *,
                    records: Optional[Sequence[Dict[str, Any]]] = None,
                    title: Optional[str] = None) -> str:
    """Saves a PNG of the bit-width of every quantized tensor, and of its trajectory if given.

    Args:
      model: A model returned by :func:`tfadaqat.quantize_model`.
      path: Output file; its folder is created if needed.
      records: ``BitWidthLogger.records`` from training; adds a panel with bits per epoch.
      title: Figure title.

    Returns:
      `path`.

    Raises:
      ImportError: If matplotlib is not installed (``pip install tfadaqat[demo]``).
      ValueError: If `model` has nothing quantized by tfadaqat.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plot_bit_widths needs matplotlib: pip install 'tfadaqat[demo]'") \
            from error
    bits = bit_widths(model)
    labels: List[str] = []
    values: List[int] = []
    colors: List[str] = []
    for layer, tensors in bits.items():
        for tensor, value in tensors.items():
            labels.append(f"{layer}/{tensor}")
            values.append(value)
            colors.append("tab:orange" if tensor == "output" else "tab:blue")
    panels = 2 if records else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels + 2, 0.28 * len(labels) + 2),
                                squeeze=False)
    bars = axes[0][0]
    positions = range(len(labels))
    bars.barh(list(positions), values, color=colors)
    bars.set_yticks(list(positions), labels, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("bits (blue: weights, orange: activations)")
    bars.set_xlim(0, max(values) + 1)
    bars.set_title("learned bit-widths")
    if records:
        trajectory = axes[0][1]
        epochs = [record["epoch"] + 1 for record in records]
        for label in labels:
            layer, tensor = label.rsplit("/", 1)
            series = [record["bits"].get(layer, {}).get(tensor) for record in records]
            trajectory.plot(epochs, series, linestyle="--" if tensor == "output" else "-",
                            linewidth=1, label=label)
        trajectory.set_xlabel("epoch")
        trajectory.set_ylabel("bits")
        trajectory.set_title("bit-widths over training (dashed: activations)")
        if len(labels) <= _MAX_LEGEND_ENTRIES:
            trajectory.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
