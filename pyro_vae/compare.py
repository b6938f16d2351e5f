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

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd
import pyro
import torch

import guides

from .errors import InputError
from . import data, estimators, gaps, objectives
from .optim import LazyAdam
from .progress import progress_bar
from .runs import build_guide, build_model, guide_options  # the one place models and guides are built from settings
from .settings import CompareSettings
from .train import fit

#: everything a comparison run depends on (saved as its config.json): the one definition is
#: :class:`pyro_vae.settings.CompareSettings`, with each field's meaning
Settings = CompareSettings


@dataclass
class Result:
    """What :func:`compare` returns; every table is in nats per datapoint.

    ``histories``: fit's rows plus ``guide`` and ``seed``; ``table``: one row per (guide, seed, split)
    with the means of :func:`pyro_vae.gaps.decompose` and their ``_se``; ``cost``:
    one row per (guide, seed) (parameters, inference time per new point, seconds of training, of the budget
    measurements, of the evaluation and of the encoder-width sweep); ``per_point``: decompose's rows with
    ``guide``, ``seed`` and ``split``;
    ``models`` and ``guides``: the trained modules of the first seed, by guide label
    (:func:`across_seeds` summarizes ``table`` over seeds); ``budget``: one row per (guide, seed,
    measurement during training), see :func:`budget_row` (empty when ``budget_every`` is 0);
    ``encoder_widths``: :func:`encoder_width_sweep`'s rows (empty without ``encoder_widths``).
    """

    histories: pd.DataFrame
    table: pd.DataFrame
    cost: pd.DataFrame
    per_point: pd.DataFrame
    models: Dict
    guides: Dict
    budget: pd.DataFrame
    encoder_widths: pd.DataFrame


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
    per-datapoint guide, one per T of ``encoder_steps`` for an amortized guide (T - 1 encoder-only steps per batch,
    He et al. 2019's aggressive training); labelled ``name`` for T = 1 and ``"name T=5"`` otherwise."""
    out = []
    for name in settings.guides:
        steps = settings.encoder_steps if guides.get(name).amortized else settings.local_steps
        out += [(name if T == 1 else f"{name} T={T}", name, T) for T in steps]
    return out


def check(settings: Settings, ds: Optional[data.Dataset] = None) -> None:
    """Settings that :func:`compare` cannot honour, refused before any work with a one-line ``ValueError``: each
    guide's family among the q* families, and (given the data set ``ds``) models and guides that fit in memory."""
    s = settings
    for name in s.guides:
        family = guides.get(name).family
        if family not in s.families:
            raise InputError(f"compare: the {name} guide's gaps are measured against q* of its own family, "
                             f"{family!r}, and families are {list(s.families)}: add {family} to --families.")
    if s.encoder_widths and "normal" not in s.guides:
        raise InputError("compare: encoder_widths re-trains normal encoders on the decoder trained with the normal "
                         "guide: add normal to guides.")
    if s.workers > 1 and torch.device(s.device).type != "cpu":
        raise InputError(f"compare: workers={s.workers} runs trainings in parallel CPU processes; on {s.device} "
                         f"use workers=1.")
    if ds is not None:
        from .runs import check_fits

        for name in s.guides:
            check_fits({**s.to_dict(), "guide": name, "rows_on_disk": None}, ds)


def compare(ds: data.Dataset, settings: Settings = Settings()) -> Result:
    """Train a decoder with each guide in ``settings.guides`` and decompose its gaps on train and test points.

    The ``guide`` column of every table holds the training's label (see :func:`trainings`). Each training
    (one per label and seed) is one call of :func:`train_and_measure`, seeded by its own seed alone, so
    ``settings.workers`` processes give the same tables as one (they differ in ``seconds`` only).
    """
    s = settings
    check(s, ds)
    jobs = [(*training, seed) for training in trainings(s) for seed in range(s.seed, s.seed + s.seeds)]
    if s.workers > 1:
        outputs = _in_processes(ds, s, jobs)
    else:
        phases = progress_bar(jobs, "compare", s.progress)
        outputs = []
        for job in phases:
            phases.set_postfix(guide=job[0], seed=job[3], refresh=False)
            out = train_and_measure(ds, s, *job)
            if job[3] != s.seed:  # only the first seed's modules are returned: let the others go
                out["model"] = out["guide"] = None
            outputs.append(out)
    trained_models, trained_guides = {}, {}
    for (label, name, local_steps, seed), out in zip(jobs, outputs):
        if seed == s.seed:
            trained_models[label], trained_guides[label] = out["model"], out["guide"]
    tables = [out["summary"] for out in outputs]
    return Result(
        histories=pd.concat([out["history"] for out in outputs], ignore_index=True),
        table=pd.concat(tables, ignore_index=True)[["guide", "seed", *tables[0].columns.drop(["guide", "seed"])]],
        cost=pd.DataFrame([out["cost"] for out in outputs]),
        per_point=pd.concat([out["points"] for out in outputs]).reset_index(),
        models=trained_models,
        guides=trained_guides,
        budget=pd.DataFrame([row for out in outputs for row in out["budget"]],
                            columns=["guide", "seed", "epoch", "seconds", *BUDGET_COLUMNS]),
        encoder_widths=pd.DataFrame([row for out in outputs for row in out["encoder_widths"]],
                                    columns=ENCODER_WIDTH_COLUMNS),
    )


def build_training(ds: data.Dataset, s: Settings, name: str, seed: int, hidden=None):
    """The model and the guide ``name`` of one training, initialized from ``seed``."""
    pyro.set_rng_seed(seed)  # for one seed every decoder starts from the same weights
    model = build_model(ds, s.z_dim, s.hidden, s.likelihood, seed, s.activation)
    guide = build_guide(name, ds, s.z_dim, s.hidden if hidden is None else hidden, model=model,
                        activation=s.activation,
                        **guide_options(name, {"num_flows": s.num_flows, "refine_steps": s.refine_steps,
                                               "refine_lr": s.refine_lr}))
    return model, guide


def optimizer_and_loss(s: Settings, model, guide):
    """The optimizer (the same decoder lr for every guide; ``local_lr`` for per-datapoint rows) and the training
    objective of one training."""
    return (LazyAdam({"lr": s.lr}, sparse_args={"lr": s.local_lr}),
            objectives.for_training(s.elbo, model, guide, jit=s.jit, particles=s.particles))


def train_and_measure(ds: data.Dataset, settings: Settings, label: str, name: str, local_steps: int,
                      seed: int) -> dict:
    """One training of :func:`compare`: the decoder and guide ``name`` (T = ``local_steps``) trained from
    ``seed``, measured during training (budget curves) and after (gap decomposition, cost, and the
    encoder-width sweep for the ``normal`` guide).

    Returns a dict of ``model`` and ``guide`` (trained modules), ``history``, ``summary``, ``points``
    (DataFrames labelled by ``guide`` and ``seed``), ``cost`` (one row; where the time
    went: ``train_seconds``, ``budget_seconds`` of the budget measurements, ``evaluate_seconds`` of the gap
    decomposition, ``sweep_seconds`` of the encoder-width sweep), ``budget`` and ``encoder_widths`` (lists of rows).
    """
    s = settings
    model, guide = build_training(ds, s, name, seed)
    optim, loss = optimizer_and_loss(s, model, guide)
    x_budget = ds.test[:s.budget_points].to(s.device)
    budget, seconds, spent = [], [0.0], {"budget": 0.0}

    def measure(epoch, row):
        seconds.append(row["seconds"])
        if s.budget_every and (epoch % s.budget_every == 0 or epoch == s.epochs):
            t0 = time.perf_counter()
            budget.append({"guide": label, "seed": seed, "epoch": epoch, "seconds": sum(seconds),
                           **budget_row(model, guide, x_budget, s)})
            spent["budget"] += time.perf_counter() - t0

    if s.budget_every:
        with torch.random.fork_rng(devices=[]):  # the untrained decoder: where every curve starts
            measure(0, {"seconds": 0.0})
    history = fit(model, guide, ds, epochs=s.epochs, batch_size=s.batch_size, optim=optim, loss=loss,
                  progress=s.progress, seed=seed, device=s.device, local_steps=local_steps, on_epoch=measure,
                  validate_every_step=s.validate_every_step)
    t0 = time.perf_counter()
    summary, points = evaluate(model, guide, ds, s)
    evaluate_seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in guide.parameters())
    cost = {
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
        "budget_seconds": spent["budget"],
        "evaluate_seconds": evaluate_seconds,
    }
    t0 = time.perf_counter()
    widths = encoder_width_sweep(model, guide, ds, points, s, seed) if label == "normal" and s.encoder_widths else []
    cost["sweep_seconds"] = time.perf_counter() - t0
    return {"model": model, "guide": guide, "history": history.assign(guide=label, seed=seed),
            "summary": summary.assign(guide=label, seed=seed), "points": points.assign(guide=label, seed=seed),
            "cost": cost, "budget": budget, "encoder_widths": widths}


def _expected_cost(job) -> float:
    """A rough relative cost of a training, to start the longest first: guide-only steps and refinement
    steps multiply the work of a step, and a flow's q* fits cost about four Gaussian ones."""
    label, name, local_steps, seed = job
    return local_steps * (6 if name == "semi_amortized" else 1) * (2 if guides.get(name).family == "flow" else 1)


_WORKER = {}


def _start_worker(ds: data.Dataset, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["ds"] = ds


def _train_in_worker(settings: Settings, job) -> dict:
    """:func:`train_and_measure` in a worker process; the modules travel back as state dicts."""
    out = train_and_measure(_WORKER["ds"], settings, *job)
    out["model"], out["guide"] = out["model"].state_dict(), out["guide"].state_dict()
    return out


def _in_processes(ds: data.Dataset, s: Settings, jobs) -> list:
    """Every job of :func:`compare` in ``s.workers`` processes (spawned, each with an equal share of the
    cores, longest job first); the outputs in the order of ``jobs``, with modules rebuilt here."""
    import concurrent.futures
    import multiprocessing
    import os

    quiet = dataclasses.replace(s, progress=False)
    threads = max(1, (os.cpu_count() or 1) // s.workers)
    pool = concurrent.futures.ProcessPoolExecutor(s.workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start_worker, initargs=(ds, threads))
    with pool:
        order = sorted(range(len(jobs)), key=lambda i: -_expected_cost(jobs[i]))
        futures = {pool.submit(_train_in_worker, quiet, jobs[i]): i for i in order}
        outputs = [None] * len(jobs)
        bar = progress_bar(concurrent.futures.as_completed(futures), f"compare ({s.workers} workers)", s.progress,
                           total=len(jobs))
        for future in bar:
            i = futures[future]
            outputs[i] = future.result()
            bar.set_postfix(done=jobs[i][0], seed=jobs[i][3], refresh=False)
    for (label, name, local_steps, seed), out in zip(jobs, outputs):
        if seed != s.seed:  # only the first seed's modules are returned
            out["model"] = out["guide"] = None
            continue
        model, guide = build_training(ds, s, name, seed)
        model.load_state_dict(out["model"])
        guide.load_state_dict(out["guide"])
        out["model"], out["guide"] = model.to(s.device), guide.to(s.device)
    return outputs


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


#: how little a budget curve may still rise over the last third of its epochs to count as flattened (nats)
FLAT_RISE = 0.05


def budget_comparisons(budget: pd.DataFrame) -> pd.DataFrame:
    """The three comparisons of the budget curves (:attr:`Result.budget`): one row per (guide, seed), nats per
    datapoint on the budget's test points.

    - ``log_px_equal_epochs``: at the last epoch, which every training of a run reaches;
    - ``equal_seconds`` and ``log_px_equal_seconds``: at the training time of that seed's quickest
      training, by linear interpolation of the curve against seconds (it starts at the untrained decoder,
      0 seconds), so that every training is judged after the same wall-clock time;
    - ``log_px_best`` and ``best_epoch``: the curve's highest point, the comparison at convergence when
      the curve has ``flattened``: it rose less than :data:`FLAT_RISE` over the last third of the epochs
      (``rise_last_third``; negative when the decoder is past its best, e.g. overfitting).
    """
    rows = []
    quickest = budget.groupby(["seed", "guide"])["seconds"].max().groupby(level="seed").min()
    for (guide, seed), curve in budget.groupby(["guide", "seed"], sort=False):
        curve = curve.sort_values("epoch")
        last = curve.iloc[-1]
        earlier = curve[curve["epoch"] <= last["epoch"] * 2 / 3].iloc[-1]
        best = curve.loc[curve["log_px"].idxmax()]
        rise = last["log_px"] - earlier["log_px"]
        rows.append({"guide": guide, "seed": seed, "epochs": int(last["epoch"]),
                     "log_px_equal_epochs": last["log_px"], "equal_seconds": quickest[seed],
                     "log_px_equal_seconds": float(np.interp(quickest[seed], curve["seconds"], curve["log_px"])),
                     "log_px_best": best["log_px"], "best_epoch": int(best["epoch"]), "rise_last_third": rise,
                     "flattened": bool(rise < FLAT_RISE)})
    return pd.DataFrame(rows)


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
