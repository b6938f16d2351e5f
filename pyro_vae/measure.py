"""What a study measures of one decoder: a point of its validation curve, the gap decomposition at a chosen
checkpoint, the time to infer q for a new point, the encoder-width sweep, and views of the trained modules.

Usage::

    point = budget_row(model, guide, ds.validation[:100], settings)      # log_px, elbo_qstar, gaps (nats per datapoint)
    summary, per_point = evaluate(model, guide, ds, settings, ("train", "test"), sizes={"train": 200, "test": None})
    inference_seconds(model, guide, ds.test[:1], qstar_steps=None, qstar_lr=None)

Every function takes any model and guide of the contract; :mod:`pyro_vae.compare` calls them for each training of a
study, ``pyro-vae evaluate`` calls :func:`evaluate` for each run it reads, and :mod:`pyro_vae.tune` scores a trial with
:func:`budget_row`.
"""

from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import pandas as pd
import pyro
import torch

from . import data, estimators, gaps
from .optim import LazyAdam
from .runs import build_guide
from .settings import CompareSettings as Settings
from .train import fit


def inference_seconds(model, guide, x1: torch.Tensor, qstar_steps: int, qstar_lr: float) -> float:
    """Seconds to infer q(z | x) for one new datapoint ``x1: (1, D)``: an encoder pass, or a q* fit."""
    t0 = time.perf_counter()
    if guide.amortized:
        repeats = 100
        with torch.no_grad():
            for _ in range(repeats):
                guide.distribution(x1)
    else:
        repeats = 1
        gaps.fit_local(model.model, x1, guide.family, steps=qstar_steps, lr=qstar_lr)
    return (time.perf_counter() - t0) / repeats


#: the columns of :attr:`Result.encoder_widths`
ENCODER_WIDTH_COLUMNS = ["guide", "seed", "split", "width", "retrained", "encoder_params", "log_px", "elbo_qstar",
                         "elbo_q", "elbo_q_se", "approximation_gap", "amortization_gap", "amortization_gap_se"]


def encoder_width_sweep(model, guide, ds: data.Dataset, points: pd.DataFrame, settings: Settings, seed: int) -> list:
    """Cremer, Li & Duvenaud's question: does a larger encoder close the amortization gap?

    With ``model`` (the decoder trained with the ``normal`` guide ``guide``) held fixed, a new ``normal`` encoder
    of each width in ``settings.encoder_widths`` (every hidden layer that wide) trains for
    ``settings.epochs`` epochs (``fit(train_model=False)``, from ``seed``); its L[q] is estimated on the
    evaluation points. log p(x) and L[q*] depend on the decoder alone, so they are taken from ``points``
    (:func:`evaluate`'s rows for that decoder). Returns rows of :data:`ENCODER_WIDTH_COLUMNS`, nats per
    datapoint, one per (split, width), plus the jointly trained encoder's (``retrained`` False).
    """
    s = settings
    rows = []

    def add(guide, width, retrained):
        for split, table in points.groupby("split", sort=False):
            n = len(table)
            x = ds.split(split)[:n].to(s.device)
            q = estimators.elbo(model.model, guide, x, None, s.elbo_samples)
            gap = table["elbo_qstar_normal"].to_numpy() - q.value.cpu().numpy()
            rows.append({"guide": "normal", "seed": seed, "split": split, "width": width, "retrained": retrained,
                         "encoder_params": sum(p.numel() for p in guide.parameters()),
                         "log_px": table["log_px"].mean(), "elbo_qstar": table["elbo_qstar_normal"].mean(),
                         "elbo_q": float(q.value.mean()), "elbo_q_se": float(q.stderr.pow(2).sum().sqrt() / n),
                         "approximation_gap": table["approximation_gap"].mean(), "amortization_gap": gap.mean(),
                         "amortization_gap_se": gap.std(ddof=1) / math.sqrt(n)})

    with torch.random.fork_rng(devices=[]):
        add(guide, s.hidden[-1], False)
        for width in s.encoder_widths:
            pyro.set_rng_seed(seed)
            encoder = build_guide("normal", ds, s.z_dim, (width,) * len(s.hidden), activation=s.activation)
            fit(model, encoder, ds, epochs=s.epochs, batch_size=s.batch_size, optim=LazyAdam({"lr": s.lr}),
                progress=s.progress, seed=seed, device=s.device, train_model=False)
            add(encoder, width, True)
    return rows


#: what :func:`budget_row` measures, in nats per datapoint (means over the validation points)
BUDGET_COLUMNS = ["log_px", "log_px_mc_se", "elbo_qstar", "elbo_q", "approximation_gap", "amortization_gap"]


def measurement_families(guide) -> tuple:
    """The q* families a budget measurement fits: the guide's own (its gaps) and the full-covariance one (the
    proposal of log p(x): the diagonal q* falls 0.26-0.9 nats short of it on the digits decoders)."""
    return tuple(dict.fromkeys((guide.family, "mvn")))


def budget_row(model, guide, x: torch.Tensor, settings: Settings) -> dict:
    """The decoder in training, measured on validation points ``x: (n, D)``: one point of a budget curve.

    ``log_px`` (importance-weighted, ``budget_ll_samples`` draws, proposal the best q found among the guide's q
    and q* of :func:`measurement_families`) and ``log_px_mc_se`` (its Monte Carlo standard error),
    ``elbo_qstar`` (L[q*] of the guide's own family, fitted with the decoder frozen, so that a decoder trained
    without an encoder is measured the same way), ``elbo_q`` (L[q], NaN for a per-datapoint guide, which has no q
    for these points) and the gaps; means over the points.
    """
    s = settings
    table = gaps.decompose(model.model, guide, x, families=measurement_families(guide),
                           ll_samples=s.budget_ll_samples, elbo_samples=min(s.elbo_samples, 100),
                           steps=s.qstar_steps, lr=s.qstar_lr)
    means = table.mean()
    mc_se = float((table["log_px_se"] ** 2).sum() ** 0.5 / len(table))
    return {"log_px": means["log_px"], "log_px_mc_se": mc_se, "elbo_qstar": means[f"elbo_qstar_{guide.family}"],
            "elbo_q": means["elbo_q"], "approximation_gap": means["approximation_gap"],
            "amortization_gap": means["amortization_gap"]}


def across_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """:attr:`Result.table` over seeds: one row per (guide, split) with the mean of every column across seeds
    and, for each, ``<column>_seed_sd``, the standard deviation across seeds (NaN for one seed)."""
    values = table.drop(columns="seed")
    groups = values.groupby(["guide", "split"], sort=False)
    mean, sd = groups.mean().reset_index(), groups.std(ddof=1).reset_index()
    return pd.concat([mean, sd.drop(columns=["guide", "split"]).add_suffix("_seed_sd")], axis=1)


def evaluate(model, guide, ds: data.Dataset, settings: Settings = Settings(),
             splits: Sequence[str] = ("train", "test"), sizes: Optional[dict] = None):
    """The gap decomposition of a trained ``model`` and ``guide`` on the first ``n_eval`` points of each split
    (``sizes``: split -> how many instead, None for all of it).

    Training points are given with their ``idx`` (every guide has a q for them); test points
    without (a per-datapoint guide has none there, and only q* is fitted). The exact log p(x)
    is added where the model has one. Returns ``(summary, per_point)``: one row per split
    (:func:`summary_row`), and :func:`pyro_vae.gaps.decompose`'s rows with a ``split`` column.
    """
    s = settings
    exact = getattr(model, "log_marginal", None)
    summaries, points = [], []
    for split in splits:
        n = (sizes or {}).get(split, s.n_eval)
        n = len(ds.split(split)) if n is None else min(n, len(ds.split(split)))
        x = ds.split(split)[:n].to(s.device)
        idx = torch.arange(n, device=s.device) if split == "train" else None
        table = gaps.decompose(model.model, guide, x, idx, families=s.families, ll_samples=s.ll_samples,
                               ais_steps=s.ais_steps, ais_leapfrog=s.ais_leapfrog,
                               starts=s.qstar_starts,
                               elbo_samples=s.elbo_samples, exact=exact, steps=s.qstar_steps, lr=s.qstar_lr,
                               progress=s.progress)
        points.append(table.assign(split=split))
        summaries.append({"split": split, **summary_row(table)})
    return pd.DataFrame(summaries), pd.concat(points)


def summary_row(table: pd.DataFrame) -> dict:
    """:func:`pyro_vae.gaps.summarize` as one flat row: ``q``, ``q_se`` (across datapoints), ``q_mc_se`` (Monte Carlo)."""
    row = {}
    for quantity, (mean, se, mc_se) in gaps.summarize(table)[["mean", "se", "mc_se"]].iterrows():
        row[quantity], row[f"{quantity}_se"], row[f"{quantity}_mc_se"] = mean, se, mc_se
    return row


@torch.no_grad()
def latent_frame(result, ds: data.Dataset, n: int = 500) -> pd.DataFrame:
    """Means of q(z | x) (estimated from draws for a flow) for the first ``n`` training points, per guide of
    ``result`` (a :class:`pyro_vae.compare.Result`),
    projected on their two principal axes.

    Columns: guide, z1, z2, label. Training points, because every guide (the
    per-datapoint ones too) has a q for them.
    """
    n = min(n, len(ds.train))
    labels = ds.train_labels[:n] if ds.train_labels is not None else torch.zeros(n, dtype=torch.long)
    frames = []
    for name, guide in result.guides.items():
        device = next(guide.parameters()).device
        q = guide.distribution(ds.train[:n].to(device), torch.arange(n, device=device))
        means = gaps.as_gaussian(q).mean.cpu()  # a flow's mean, estimated
        centred = means - means.mean(0)
        _, _, V = torch.linalg.svd(centred, full_matrices=False)
        proj = centred @ V[:2].T if means.shape[1] > 1 else torch.cat([centred, torch.zeros_like(centred)], 1)
        frames.append(pd.DataFrame({"guide": name, "z1": proj[:, 0].numpy(), "z2": proj[:, 1].numpy(),
                                    "label": labels.numpy()}))
    return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def image_rows(result, ds: data.Dataset, n: int = 10) -> dict:
    """Rows for :func:`pyro_vae.plots.image_grid`: training images, each guide's reconstructions
    (decoder mean at the mean of q) and samples (decoder mean at z ~ p(z))."""
    rows = {"data": ds.train[:n]}
    for name, guide in result.guides.items():
        model = result.models[name]
        x, idx = ds.train[:n].to(model.device), torch.arange(n, device=model.device)
        rows[f"{name}: reconstruction"] = model.mean(gaps.as_gaussian(guide.distribution(x, idx)).mean).cpu()
    for name, model in result.models.items():
        rows[f"{name}: sample"] = model.sample_mean(n).cpu()
    return rows
