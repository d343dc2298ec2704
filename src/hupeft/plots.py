"""Figures of one run drawn from its record (shown by the run notebook).

Plain matplotlib: a run's kernel imports nothing else for its figure (seaborn pulls in pandas
and scipy.stats, seconds of start-up for three line plots in every grid cell).
"""

from __future__ import annotations


def run_curves(record: dict):
    """Train/validation loss, gradient norm, and (hybrid) lambda per layer for one run."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = record["epochs"]
    steps = record.get("steps") or []
    lam = record.get("hybrid_lambda") or {}
    n = 3 if lam else 2
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2))
    x = [e["epoch"] for e in epochs]
    for split in ("train_loss", "val_loss"):
        axes[0].plot(x, [_number(e.get(split)) for e in epochs], marker="o", label=split)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend(title="split")
    axes[0].set_title("loss per epoch")
    for ax in axes:  # epochs and steps are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if steps:
        axes[1].plot([s["step"] for s in steps], [_number(s.get("grad_norm")) for s in steps])
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("grad_norm")
        axes[1].set_title("global gradient norm per step")
    if lam:
        for values in lam.values():
            axes[2].plot(range(1, len(values) + 1), values, linewidth=0.8)
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("lambda")
        axes[2].set_ylim(0, 1)
        axes[2].set_title("hybrid lambda per layer")
    fig.tight_layout()
    return fig


def _number(x) -> float:
    """A value to plot: missing ones leave a gap."""
    return float("nan") if x is None else float(x)
