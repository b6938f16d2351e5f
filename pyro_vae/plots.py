"""seaborn figures. Every figure has a title, axes labelled with units, and a legend.

Usage::

    fig = learning_curves(history)   # history: DataFrame with epoch, train_loss, test_loss[, guide]
    save(fig, "runs/x/learning_curves.png")

The only module that imports matplotlib and seaborn. Importing it leaves the
matplotlib backend alone (a notebook keeps its inline backend); the command
line chooses a non-interactive one for itself.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .budgets import of_estimator
from .folders import write_file


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
    """Save ``fig`` at ``path`` (PNG, or the format its suffix names; folders created) and close it."""
    path = Path(path)
    try:  # atomically: a reader never sees half a figure, and a symlink at path is replaced, not written through
        write_file(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower() or "png", dpi=110,
                                               bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def learning_curves(history: pd.DataFrame, title: str = "Learning curves"):
    """-ELBO per epoch, train and test, one colour per guide (column ``guide`` if present); with several seeds
    (a ``seed`` column), their mean and a band of one standard deviation."""
    df = history.copy()
    if "guide" not in df:
        df["guide"] = "guide"
    long = df.melt(id_vars=["epoch", "guide"], value_vars=["train_loss", "test_loss"],
                   var_name="split", value_name="-ELBO").dropna()
    long["split"] = long["split"].str.replace("_loss", "", regex=False)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    with _quiet():
        sns.lineplot(data=long, x="epoch", y="-ELBO", hue="guide", style="split", errorbar="sd", ax=ax)
    ax.set(title=title, xlabel="epoch", ylabel="-ELBO (nats per datapoint)")
    lo, hi = long["-ELBO"].quantile([0.0, 0.9])
    ax.set_ylim(lo - 0.05 * (hi - lo), hi)
    return fig


#: gap column -> the label a figure shows for it
GAP_LABELS = {
    "approximation_gap": "approximation gap: log p(x) - L[q*]",
    "approximation_gap_flow": "of which a flow q* leaves: log p(x) - L[q*_flow]",
    "amortization_gap": "amortization gap: L[q*] - L[q] (encoder)",
    "optimization_gap": "optimization gap: L[q*] - L[q_i] (per-datapoint q left by training)",
}


def gap_bars(per_point: pd.DataFrame, title: str = "Where the ELBO loses to log p(x)", x: str = "guide"):
    """Mean gaps per guide (or per ``x``) with error bars of 2 standard errors across datapoints, one panel per split.

    ``per_point``: one row per datapoint with columns ``x`` (default ``guide``), ``split``
    and any of the gap columns of :func:`pyro_vae.gaps.decompose` (nats). Bars stand side
    by side, not stacked, so a gap that comes out negative within its error shows as one.
    With a ``seed`` column holding several seeds, bars are the mean of the seeds' means and
    error bars their standard deviation across seeds.
    """
    gaps = [c for c in GAP_LABELS if c in per_point]
    seeds = "seed" in per_point and per_point["seed"].nunique() > 1
    if seeds:
        per_point = per_point.groupby([x, "split", "seed"], sort=False)[gaps].mean().reset_index()
    long = per_point.melt(id_vars=[x, "split"], value_vars=gaps, var_name="gap", value_name="nats").dropna()
    long["gap"] = long["gap"].map(GAP_LABELS)
    order = list(dict.fromkeys(per_point[x]))
    with _quiet():
        # the splits one above the other: a figure about 8 inches wide stays readable at the README's width
        grid = sns.catplot(data=long, kind="bar", x=x, y="nats", hue="gap", row="split",
                           hue_order=[GAP_LABELS[g] for g in gaps if GAP_LABELS[g] in set(long["gap"])],
                           errorbar="sd" if seeds else ("se", 2), capsize=0.1, height=3.0,
                           aspect=max(1.6, min(2.7, 0.38 * len(order))),
                           order=order, legend_out=False)
    for ax in grid.axes.flat:
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.tick_params(axis="x", labelrotation=20)
    xlabel = "guide the decoder was trained with" if x == "guide" else x
    grid.set_axis_labels(xlabel, "gap (nats per datapoint)")
    grid.set_titles("{row_name} points")
    legend = "means over seeds, error bars: sd across seeds" if seeds else \
        "mean over datapoints, error bars: 2 standard errors"
    sns.move_legend(grid, "upper center", bbox_to_anchor=(0.5, -0.05), ncol=1, title=legend)
    grid.figure.suptitle(title, y=1.03)
    return grid.figure


def budget_curves(budget: pd.DataFrame, title: str = "Validation log p(x) during training", split: str = "validation",
                  seconds_note: str = "seconds of training"):
    """log p(x) of the ``split`` points against epochs and against training seconds, one line per training method
    (``guide``), both on log axes (the untrained decoder, epoch 0, is left off).

    ``budget``: :attr:`pyro_vae.compare.Result.budget` (columns guide, seed, epoch, seconds, log_px, ...); with
    several seeds, lines are means over seeds with a band of one standard deviation (against seconds, each seed's
    measurements are drawn at their mean time over seeds). ``seconds_note`` says how the seconds were timed.
    """
    df = budget[budget["epoch"] > 0].copy()
    df["seconds"] = df.groupby(["guide", "epoch"])["seconds"].transform("mean")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    with _quiet():
        for ax, x, label in ((axes[0], "epoch", "epochs of training (log scale)"),
                             (axes[1], "seconds", f"seconds of training (log scale): {seconds_note}")):
            sns.lineplot(data=df, x=x, y="log_px", hue="guide", errorbar="sd", marker="o", ax=ax,
                         legend=ax is axes[1])
            ax.set(xlabel=label, ylabel=f"{split} log p(x) (nats per datapoint)", xscale="log")
    if len(df):
        lo, hi = df["log_px"].quantile(0.1), df["log_px"].max()
        axes[0].set_ylim(lo - 0.1 * (hi - lo), hi + 0.05 * (hi - lo))
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), title="trained with")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _midpoint(table: pd.DataFrame, budget: str) -> float:
    """The geometric middle of the positive budget values of kind ``budget`` in a differences table."""
    values = table.loc[(table["budget"] == budget) & (table["value"] > 0), "value"]
    return float((values.min() * values.max()) ** 0.5) if len(values) else 0.0


def differences(table: pd.DataFrame, title: str = "Each decoder against the normal encoder's, paired over seeds",
                seconds_note: str = "seconds of training", estimator: str = "iwae"):
    """Paired differences from the baseline decoder (:func:`pyro_vae.budgets.differences`), nats per datapoint:
    against epochs and against seconds (log axes), the validation curves as lines with their 95% band over seeds
    and the test reads at the pre-registered budgets as points with their 95% interval; a third panel gives the
    test difference at each run's selected checkpoint. With ``estimator="ais"`` the test reads are AIS's (the
    validation curves are importance-weighted either way)."""
    table = pd.concat([of_estimator(table, "iwae").query("split == 'validation'"),
                       of_estimator(table, estimator).query("split == 'test'")])
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [3, 3, 1.4]}, sharey=True)
    arms = list(dict.fromkeys(table["guide"]))
    colours = dict(zip(arms, sns.color_palette(n_colors=max(len(arms), 1))))
    for ax, budget, label in ((axes[0], "epochs", "epochs of training (log scale)"),
                              (axes[1], "seconds", f"seconds of training (log scale):\n{seconds_note}")):
        for arm in arms:
            curve = table[(table["guide"] == arm) & (table["split"] == "validation") & (table["budget"] == budget)
                          & (table["value"] > 0)]
            # best-so-far values: a step at each measurement, nothing drawn between two as a slope
            ax.plot(curve["value"], curve["mean"], color=colours[arm], label=f"{arm}: validation",
                    drawstyle="steps-post")
            ax.fill_between(curve["value"], curve["low"], curve["high"], color=colours[arm], alpha=0.2, step="post")
            test = table[(table["guide"] == arm) & (table["split"] == "test") & (table["budget"] == budget)]
            if len(test):
                ax.errorbar(test["value"], test["mean"], yerr=[test["mean"] - test["low"], test["high"] - test["mean"]],
                            fmt="s", color=colours[arm], capsize=4, markeredgecolor="black",
                            label=f"{arm}: test, pre-registered")
        ax.axhline(0, color="black", linewidth=1)
        ax.set(xscale="log", xlabel=label)
    axes[0].set_ylabel("log p(x) minus the normal encoder's decoder's\n(nats per datapoint)")
    # the axes show the trained decoders: the first measurements, far apart, stay off the top and bottom
    # (limits from the means: with few seeds a Student-t band can be wider than every difference)
    shown = [table.loc[(table["budget"] == b) & (table["value"] >= _midpoint(table, b)), "mean"]
             for b in ("epochs", "seconds")] + [table.loc[table["split"] == "test", "mean"], pd.Series([0.0])]
    values = pd.concat(shown).dropna()
    lo, hi = values.min(), values.max()
    axes[0].set_ylim(lo - 0.5 * (hi - lo + 1e-3), hi + 0.5 * (hi - lo + 1e-3))
    selected = table[(table["split"] == "test") & (table["budget"] == "selected")]
    for i, (_, row) in enumerate(selected.iterrows()):
        axes[2].errorbar([i], [row["mean"]], yerr=[[row["mean"] - row["low"]], [row["high"] - row["mean"]]],
                         fmt="s", color=colours[row["guide"]], capsize=4, markeredgecolor="black")
    axes[2].axhline(0, color="black", linewidth=1)
    axes[2].set_xticks(range(len(selected)), selected["guide"], rotation=30, ha="right")
    axes[2].set(xlabel="at each run's selected checkpoint (test)", xlim=(-0.7, max(len(selected), 1) - 0.3))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(4, max(len(labels), 1)),
               title="bands and bars: 95% Student-t intervals over seeds; above 0: better than the normal encoder's")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def gap_curves(budget: pd.DataFrame, title: str = "The gaps during training"):
    """The approximation and the amortization gap on the budget's points against epochs, one panel each,
    one line per training method (``guide``); with several seeds, means with a band of one standard deviation.

    ``budget``: :attr:`pyro_vae.compare.Result.budget`. A per-datapoint guide has no q for new points, so it
    has an approximation gap only.
    """
    gaps = ["approximation_gap", "amortization_gap"]
    long = budget.melt(id_vars=["guide", "seed", "epoch"], value_vars=gaps, var_name="gap", value_name="nats")
    long = long.dropna()
    long = long[long["epoch"] > 0]  # the untrained decoder's posterior is the prior's: gaps there say little
    long["gap"] = long["gap"].map(GAP_LABELS)
    with _quiet():
        grid = sns.relplot(data=long, kind="line", x="epoch", y="nats", hue="guide", col="gap", errorbar="sd",
                           marker="o", height=4, aspect=1.2, facet_kws={"sharey": False})
    grid.set_axis_labels("epochs of training", "gap (nats per datapoint)")
    grid.set_titles("{col_name}")
    sns.move_legend(grid, "upper center", bbox_to_anchor=(0.5, -0.02), ncol=4, title="trained with")
    grid.figure.suptitle(title, y=1.03)
    return grid.figure


def encoder_widths(table: pd.DataFrame, title: str = "Amortization gap against the encoder's width"):
    """The amortization gap of encoders of each width on one fixed decoder, train and test points.

    ``table``: :attr:`pyro_vae.compare.Result.encoder_widths`. Encoders re-trained on the fixed decoder are a
    line (means over seeds, band of one sd, or of 2 standard errors across datapoints for one seed); the
    encoder trained with the decoder is a separate marker.
    """
    seeds = table["seed"].nunique() > 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    retrained, joint = table[table["retrained"]], table[~table["retrained"]]
    with _quiet():
        sns.lineplot(data=retrained, x="width", y="amortization_gap", hue="split", marker="o", ax=ax,
                     errorbar="sd" if seeds else None)
        sns.scatterplot(data=joint.groupby("split", as_index=False, sort=False).mean(numeric_only=True),
                        x="width", y="amortization_gap", hue="split", marker="*", s=250, ax=ax, legend=False)
    if not seeds:
        for split, rows in retrained.groupby("split", sort=False):
            ax.errorbar(rows["width"], rows["amortization_gap"], yerr=2 * rows["amortization_gap_se"], fmt="none",
                        ecolor="grey", capsize=3)
    ax.set_xscale("log", base=2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(title=title, xlabel="encoder hidden width (units per layer; decoder fixed)",
           ylabel="amortization gap L[q*] - L[q] (nats per datapoint)")
    ax.legend(title="points (star: encoder trained with the decoder)")
    return fig


def latent_scatter(latents: pd.DataFrame, title: str = "Latent means coloured by label"):
    """One panel per guide: ``latents`` has columns guide, z1, z2, label (2-D projections of q means)."""
    with _quiet():
        grid = sns.relplot(data=latents, x="z1", y="z2", hue="label", col="guide", palette="tab10", s=12,
                           height=3.6, legend="full", facet_kws={"sharex": False, "sharey": False})
    grid.set_axis_labels("principal axis 1 of the means (latent units)", "principal axis 2")
    grid.figure.suptitle(title, y=1.03)
    return grid.figure


def tuning_trials(trials: pd.DataFrame, title: str = "Tuning trials"):
    """Each trial's score (``value``: validation log p(x), nats per datapoint) against its ``number``, with the best
    so far (:func:`pyro_vae.tune.trials_table`)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = trials.dropna(subset=["value"])
    with _quiet():
        sns.scatterplot(data=done, x="number", y="value", ax=ax, label="trial")
        sns.lineplot(data=done, x="number", y="best_so_far", drawstyle="steps-post", ax=ax, label="best so far")
    ax.set(title=title, xlabel="trial", ylabel="validation log p(x) (nats per datapoint)")
    return fig


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


def image_panels(panels: dict, image_shape, title: str = "Samples and reconstructions", cols: int = 8):
    """One panel per entry of ``panels`` (label -> ``(n, H*W)`` pixel means in [0, 1]), each a grid ``cols`` wide."""
    n_rows = {label: -(-len(images) // cols) for label, images in panels.items()}
    fig = plt.figure(figsize=(1.1 * cols * len(panels), 1.15 * max(n_rows.values()) + 0.8))
    subfigs = fig.subfigures(1, len(panels), squeeze=False)[0]
    for sub, (label, images) in zip(subfigs, panels.items()):
        axes = sub.subplots(n_rows[label], cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if i < len(images):
                ax.imshow(images[i].reshape(image_shape).clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1)
            else:
                ax.axis("off")
        sub.suptitle(label, fontsize=9)
    fig.suptitle(title, y=1.02)
    return fig
