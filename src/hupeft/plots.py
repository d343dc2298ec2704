"""Figures drawn from records with seaborn (used by the run notebook and the book)."""

from __future__ import annotations


def run_curves(record: dict):
    """Train/validation loss, gradient norm, and (hybrid) lambda per layer for one run."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    epochs = pd.DataFrame(record["epochs"])
    steps = pd.DataFrame(record.get("steps") or [])
    lam = record.get("hybrid_lambda") or {}
    n = 3 if lam else 2
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2))
    loss = epochs.melt(id_vars="epoch", value_vars=["train_loss", "val_loss"], var_name="split", value_name="loss")
    sns.lineplot(data=loss, x="epoch", y="loss", hue="split", marker="o", ax=axes[0])
    axes[0].set_title("loss per epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:  # epochs and steps are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not steps.empty:
        sns.lineplot(data=steps, x="step", y="grad_norm", ax=axes[1])
        axes[1].set_title("global gradient norm per step")
    if lam:
        frame = pd.DataFrame([{"step": i + 1, "layer": k, "lambda": v} for k, vs in lam.items() for i, v in enumerate(vs)])
        sns.lineplot(data=frame, x="step", y="lambda", hue="layer", legend=False, ax=axes[2], linewidth=0.8)
        axes[2].set_ylim(0, 1)
        axes[2].set_title("hybrid lambda per layer")
    fig.tight_layout()
    return fig
