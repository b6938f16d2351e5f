"""seaborn figures. Every figure has a title, axes labelled with units, and a legend.

Usage::

    fig = learning_curves(history)   # history: DataFrame with epoch, train_loss, test_loss[, guide]
    save(fig, "runs/x/learning_curves.png")

The only module that imports matplotlib and seaborn.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


@contextmanager
def _quiet():
    """Silence the deprecation warnings seaborn 0.13 raises under newer matplotlib and pandas, only those."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="seaborn")
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module="seaborn")
        warnings.filterwarnings("ignore", category=FutureWarning, module="seaborn")
        warnings.filterwarnings("ignore", message=".*is deprecated.*", module="seaborn")
        yield


def save(fig, path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def learning_curves(history: pd.DataFrame, title: str = "Learning curves"):
    """-ELBO per epoch, train and test, one colour per guide (column ``guide`` if present)."""
    df = history.copy()
    if "guide" not in df:
        df["guide"] = "guide"
    long = df.melt(id_vars=["epoch", "guide"], value_vars=["train_loss", "test_loss"],
                   var_name="split", value_name="-ELBO").dropna()
    long["split"] = long["split"].str.replace("_loss", "", regex=False)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    with _quiet():
        sns.lineplot(data=long, x="epoch", y="-ELBO", hue="guide", style="split", ax=ax)
    ax.set(title=title, xlabel="epoch", ylabel="-ELBO (nats per datapoint)")
    lo, hi = long["-ELBO"].quantile([0.0, 0.9])
    ax.set_ylim(lo - 0.05 * (hi - lo), hi)
    return fig


def gap_bars(table: pd.DataFrame, title: str = "Where the ELBO loses to log p(x)"):
    """Stacked bars per guide: approximation gap (bottom) and amortization gap (top), one panel per split.

    ``table``: rows (guide, split) with ``approximation_gap`` and ``amortization_gap`` in nats.
    """
    df = table.copy()
    df["total_gap"] = df["approximation_gap"] + df["amortization_gap"].fillna(0.0)
    splits = list(dict.fromkeys(df["split"]))
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.2), sharey=True, squeeze=False)
    palette = sns.color_palette("deep")
    for ax, split in zip(axes[0], splits):
        part = df[df["split"] == split]
        with _quiet():
            sns.barplot(data=part, x="guide", y="total_gap", color=palette[1], ax=ax, label="amortization gap")
            sns.barplot(data=part, x="guide", y="approximation_gap", color=palette[0], ax=ax,
                        label="approximation gap")
        ax.set(title=f"{split} points", xlabel="guide the decoder was trained with",
               ylabel="gap (nats per datapoint)")
        ax.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def latent_scatter(latents: pd.DataFrame, title: str = "Latent means coloured by label"):
    """One panel per guide: ``latents`` has columns guide, z1, z2, label (2-D projections of q means)."""
    with _quiet():
        grid = sns.relplot(data=latents, x="z1", y="z2", hue="label", col="guide", palette="tab10", s=12,
                           height=3.6, legend="full", facet_kws={"sharex": False, "sharey": False})
    grid.set_axis_labels("principal axis 1 of the means (latent units)", "principal axis 2")
    grid.figure.suptitle(title, y=1.03)
    return grid.figure


def image_grid(rows: dict, image_shape, title: str = "Data, reconstructions and samples"):
    """A grid of images: ``rows`` maps a row label to a ``(n, H*W)`` tensor of pixel means in [0, 1]."""
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n, 0.95 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c].reshape(image_shape).clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    return fig
