"""The comparison behind ``pyro-vae compare``: decoders trained with each guide, judged alike.

Usage::

    ds = data.load("digits", binarize="static")
    result = compare(ds, Settings(epochs=300))
    result.table                     # one row per (guide, split): log p(x), L[q*], L[q], gaps (nats)
    result.cost                      # one row per guide: parameters, inference time per new point

Each guide in ``settings.guides`` trains its own decoder (same architecture,
same epochs, same optimizer) by ``fit``; then, for ``n_eval`` train and test
points, :func:`pyro_vae.gaps.decompose` splits log p(x) - L[q] into the
approximation and the amortization gap.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import pandas as pd
import pyro
import torch

import guides

from . import data, gaps, objectives
from .optim import LazyAdam
from .progress import progress_bar
from .runs import build_guide, build_model, guide_options  # the one place models and guides are built from settings
from .train import fit

@dataclass
class Settings:
    """Everything a comparison run depends on; saved as ``config.json``.

    ``jit`` compiles the ELBO where model and guide are marked JIT-safe (see :mod:`pyro_vae.objectives`).
    ``local_steps``: each per-datapoint guide trains one decoder per T (``fit(local_steps=T)``), labelled
    ``"meanfield"`` for T = 1 and ``"meanfield T=5"`` otherwise; amortized guides train with T = 1.
    ``seeds``: every training is repeated with seeds ``seed, seed + 1, ..., seed + seeds - 1`` (initial
    weights, batch order, Monte Carlo draws of training and evaluation).
    ``ais_steps``: when > 0, the evaluation also estimates log p(x) by AIS with that many steps and uses
    the larger estimate per datapoint (:func:`pyro_vae.gaps.decompose`).
    ``budget_every``: every so many epochs (and at the last), the decoder in training is measured on the
    first ``budget_points`` test points (:func:`budget_row`); 0 turns the budget curves off.
    """

    guides: Sequence[str] = ("normal", "mvn", "flow", "semi_amortized", "meanfield")
    z_dim: int = 8
    hidden: Sequence[int] = (256,)
    likelihood: Optional[str] = None
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    local_lr: float = 1e-2
    qstar_lr: float = 3e-2
    elbo: str = "trace"
    particles: int = 5
    num_flows: int = 2
    refine_steps: int = 5
    local_steps: Sequence[int] = (1,)
    jit: bool = True
    seed: int = 0
    seeds: int = 1
    n_eval: int = 200
    ll_samples: int = 5000
    ais_steps: int = 0
    elbo_samples: int = 500
    qstar_steps: int = 3000
    families: Sequence[str] = ("normal", "mvn", "flow")
    budget_every: int = 30
    budget_points: int = 50
    budget_ll_samples: int = 1000
    device: str = "cpu"
    progress: bool = True


@dataclass
class Result:
    """What :func:`compare` returns; every table is in nats per datapoint.

    ``histories``: fit's rows plus ``guide`` and ``seed``; ``table``: one row per (guide, seed, split)
    with the means of :func:`pyro_vae.gaps.decompose` and their ``_se``; ``cost``:
    one row per (guide, seed) (parameters, inference time per new point, training
    seconds); ``per_point``: decompose's rows with ``guide``, ``seed`` and ``split``;
    ``models`` and ``guides``: the trained modules of the first seed, by guide label
    (:func:`across_seeds` summarizes ``table`` over seeds); ``budget``: one row per (guide, seed,
    measurement during training), see :func:`budget_row` (empty when ``budget_every`` is 0).
    """

    histories: pd.DataFrame
    table: pd.DataFrame
    cost: pd.DataFrame
    per_point: pd.DataFrame
    models: Dict
    guides: Dict
    budget: pd.DataFrame


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


def trainings(settings: Settings):
    """``(label, guide name, T)`` for every decoder :func:`compare` trains: one per T of ``local_steps`` for a
    per-datapoint guide, one (T = 1) for an amortized guide."""
    out = []
    for name in settings.guides:
        steps = (1,) if guides.get(name).amortized else settings.local_steps
        out += [(name if T == 1 else f"{name} T={T}", name, T) for T in steps]
    return out


def compare(ds: data.Dataset, settings: Settings = Settings()) -> Result:
    """Train a decoder with each guide in ``settings.guides`` and decompose its gaps on train and test points.

    The ``guide`` column of every table holds the training's label (see :func:`trainings`).
    """
    s = settings
    histories, tables, per_point, cost, budget, trained_models, trained_guides = [], [], [], [], [], {}, {}
    x_budget = ds.test[:s.budget_points].to(s.device)
    jobs = [(*training, seed) for training in trainings(s) for seed in range(s.seed, s.seed + s.seeds)]
    phases = progress_bar(jobs, "compare", s.progress)
    for label, name, local_steps, seed in phases:
        phases.set_postfix(guide=label, seed=seed, refresh=False)
        pyro.set_rng_seed(seed)  # for one seed every decoder starts from the same weights
        model = build_model(ds, s.z_dim, s.hidden, s.likelihood, seed)
        guide = build_guide(name, ds, s.z_dim, s.hidden, model=model,
                            **guide_options(name, {"num_flows": s.num_flows, "refine_steps": s.refine_steps}))
        optim = LazyAdam({"lr": s.lr}, sparse_args={"lr": s.local_lr})  # the same decoder lr for every guide
        loss = objectives.for_training(s.elbo, model, guide, jit=s.jit, particles=s.particles)
        seconds = []

        def measure(epoch, row, model=model, guide=guide, label=label, seed=seed, seconds=seconds):
            seconds.append(row["seconds"])
            if s.budget_every and (epoch % s.budget_every == 0 or epoch == s.epochs):
                budget.append({"guide": label, "seed": seed, "epoch": epoch, "seconds": sum(seconds),
                               **budget_row(model, guide, x_budget, s)})

        history = fit(model, guide, ds, epochs=s.epochs, batch_size=s.batch_size, optim=optim, loss=loss,
                      progress=s.progress, seed=seed, device=s.device, local_steps=local_steps, on_epoch=measure)
        histories.append(history.assign(guide=label, seed=seed))
        summary, points = evaluate(model, guide, ds, s)
        tables.append(summary.assign(guide=label, seed=seed))
        per_point.append(points.assign(guide=label, seed=seed))
        n_params = sum(p.numel() for p in guide.parameters())
        cost.append({
            "guide": label,
            "seed": seed,
            "local_steps": local_steps,
            "amortized": guide.amortized,
            "guide_params": n_params,
            "guide_params_at_60000": n_params if guide.amortized else n_params * 60000 // len(ds.train),
            "decoder_params": sum(p.numel() for p in model.parameters()),
            "infer_ms_per_new_point": 1e3 * inference_seconds(model, guide, ds.test[:1].to(s.device), s.qstar_steps,
                                                               s.qstar_lr),
            "train_seconds": float(history["seconds"].sum()),
        })
        if seed == s.seed:
            trained_models[label], trained_guides[label] = model, guide
    return Result(
        histories=pd.concat(histories, ignore_index=True),
        table=pd.concat(tables, ignore_index=True)[["guide", "seed", *tables[0].columns.drop(["guide", "seed"])]],
        cost=pd.DataFrame(cost),
        per_point=pd.concat(per_point).reset_index(),
        models=trained_models,
        guides=trained_guides,
        budget=pd.DataFrame(budget, columns=["guide", "seed", "epoch", "seconds", *BUDGET_COLUMNS]),
    )


#: what :func:`budget_row` measures, in nats per datapoint (means over the budget's test points)
BUDGET_COLUMNS = ["log_px", "log_px_mc_se", "elbo_qstar", "elbo_q", "approximation_gap", "amortization_gap"]


def budget_row(model, guide, x: torch.Tensor, settings: Settings) -> dict:
    """The decoder in training, measured on test points ``x: (n, D)``: one point of a budget curve.

    ``log_px`` (importance-weighted, ``budget_ll_samples`` draws, proposal the best q found) and
    ``log_px_mc_se`` (its Monte Carlo standard error), ``elbo_qstar`` (L[q*] of the guide's own
    family, fitted with the decoder frozen, so that a decoder trained without an encoder is
    measured the same way), ``elbo_q`` (L[q], NaN for a per-datapoint guide, which has no q for
    test points) and the gaps; means over the points.
    """
    s = settings
    table = gaps.decompose(model.model, guide, x, families=(guide.family,), ll_samples=s.budget_ll_samples,
                           elbo_samples=min(s.elbo_samples, 100), steps=s.qstar_steps, lr=s.qstar_lr)
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
             splits: Sequence[str] = ("train", "test")):
    """The gap decomposition of a trained ``model`` and ``guide`` on the first ``n_eval`` points of each split.

    Training points are given with their ``idx`` (every guide has a q for them); test points
    without (a per-datapoint guide has none there, and only q* is fitted). The exact log p(x)
    is added where the model has one. Returns ``(summary, per_point)``: one row per split
    (:func:`summary_row`), and :func:`pyro_vae.gaps.decompose`'s rows with a ``split`` column.
    """
    s = settings
    exact = getattr(model, "log_marginal", None)
    summaries, points = [], []
    for split in splits:
        n = min(s.n_eval, len(ds.split(split)))
        x = ds.split(split)[:n].to(s.device)
        idx = torch.arange(n, device=s.device) if split == "train" else None
        table = gaps.decompose(model.model, guide, x, idx, families=s.families, ll_samples=s.ll_samples,
                               ais_steps=s.ais_steps,
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


def settings_dict(s: Settings) -> dict:
    out = asdict(s)
    out["guides"], out["hidden"], out["families"] = list(s.guides), list(s.hidden), list(s.families)
    out["local_steps"] = list(s.local_steps)
    return out


@torch.no_grad()
def latent_frame(result: Result, ds: data.Dataset, n: int = 500) -> pd.DataFrame:
    """Means of q(z | x) (estimated from draws for a flow) for the first ``n`` training points, per guide,
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
def image_rows(result: Result, ds: data.Dataset, n: int = 10) -> dict:
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
