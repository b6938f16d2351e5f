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
