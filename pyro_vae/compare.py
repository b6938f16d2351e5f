"""The study behind ``pyro-vae compare``: decoders trained with each guide, chosen on validation, tested once.

Usage::

    ds = data.load("digits", binarize="static")
    s = Settings(epochs=300, seeds=3, test_epochs=[100, 300], budget_seconds=[3, 10])
    result = compare(ds, s, out="runs/study")     # every training a run folder: runs/study/runs/normal-seed0/
    result.table                     # one row per (guide, seed, split) at the selected checkpoint (nats)
    result.tests                     # test at every pre-registered budget and at the selected checkpoint
    result.differences               # each arm minus the normal encoder's decoder, paired over seeds, 95% interval
    compare(ds, s, out="runs/study", resume=True)  # after a kill: finished runs reused, the others resumed

The protocol (:mod:`pyro_vae.budgets`): the budgets are declared in the settings before anything trains. Each
training (one per label of :func:`trainings` and seed) is a run folder that :func:`pyro_vae.runs.load_run`,
``pyro-vae evaluate`` and ``pyro-vae sample`` read like any ``pyro-vae train`` output. While it trains, its
decoder is measured on the **validation** split at the declared epochs (:func:`pyro_vae.measure.budget_row`:
log p(x) importance-weighted from q* fitted with the decoder frozen, the full-covariance family among them); every
measurement that improves on the best so far keeps its weights (``kept/epoch-E.pt``). When training ends (at
``epochs``, or by ``patience``), the checkpoints are chosen from the validation curve alone
(:func:`pyro_vae.budgets.choose`) and only then is the test split read: once, whole, at each chosen checkpoint
(:func:`pyro_vae.measure.evaluate`). A run's finished rows are small files in its folder (:data:`RUN_FILES`), so a study
continues on any machine that has them; several processes share a study by each taking the next run whose
folder lock is free.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import pandas as pd
import pyro
import torch

import guides

from .checkpoint import load_weights, save_weights
from .measure import (ENCODER_WIDTH_COLUMNS, budget_row, encoder_width_sweep, evaluate, image_rows, inference_seconds,
                      latent_frame)
from .errors import InputError
from . import budgets, data, folders, objectives
from .optim import LazyAdam
from .progress import progress_bar
from .runs import KEPT, SELECTED, build, build_guide, build_model, check_paths, guide_options, kept_path  # noqa: F401
from .settings import CompareSettings, TrainSettings
from .threads import intra_op_threads, training_threads
from .train import fit

#: everything a comparison run depends on (saved as its config.json): the one definition is
#: :class:`pyro_vae.settings.CompareSettings`, with each field's meaning
Settings = CompareSettings

#: the settings a resumed study may take anew; every other one must be the study's own
RESUMABLE = ("workers", "progress", "device", "out")
#: a run's result files, written when its training and its test reads are done (``cost.csv`` last: the mark that
#: the run is finished); they are small, and a study continued elsewhere takes a run that has them as done
RUN_FILES = {"budget": "budget.csv", "results": "results.csv", "points": "per_point.csv",
             "tests": "test_at_budgets.csv", "widths": "encoder_widths.csv", "history": "history.csv",
             "cost": "cost.csv"}


@dataclass
class Result:
    """What :func:`compare` returns; every table is in nats per datapoint.

    ``histories``: fit's rows plus ``guide`` and ``seed``; ``table``: one row per (guide, seed, split) at the
    selected checkpoint with the means of :func:`pyro_vae.gaps.decompose` and their ``_se``, its ``epoch`` and
    training ``seconds``; ``tests``: one row per (guide, seed, budget) of the test split's means at each
    pre-registered budget's checkpoint and at the selected one (:data:`pyro_vae.budgets.CHOSEN_COLUMNS` first);
    ``cost``: one row per (guide, seed) (parameters, inference time per new point, seconds of training, of the
    validation measurements, of the test reads and of the encoder-width sweep); ``per_point``: decompose's rows at
    the selected checkpoint with ``guide``, ``seed`` and ``split``; ``budget``: the validation curves
    (:data:`pyro_vae.budgets.CURVE_COLUMNS`); ``differences``: :func:`pyro_vae.budgets.differences`;
    ``models`` and ``guides``: the first seed's modules at their selected checkpoints, by label;
    ``encoder_widths``: :func:`pyro_vae.measure.encoder_width_sweep`'s rows (empty without ``encoder_widths``);
    ``runs``: the run folder of each (label, seed).
    """

    histories: pd.DataFrame
    table: pd.DataFrame
    tests: pd.DataFrame
    cost: pd.DataFrame
    per_point: pd.DataFrame
    models: Dict
    guides: Dict
    budget: pd.DataFrame
    differences: pd.DataFrame
    encoder_widths: pd.DataFrame
    runs: Dict


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
    guide's family among the q* families, the budgets (:func:`pyro_vae.budgets.check`), and (given the data set
    ``ds``) a validation split and models and guides that fit in memory."""
    s = settings
    s.check()  # every value of its kind, each list's values once (settings built in a script are not checked)
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
        if ds.name != s.data:
            raise InputError(f"compare: the settings name the {s.data} data set and the data given are {ds.name}: "
                             f"give Settings(data={ds.name!r}, ...), so that every run folder rebuilds its data.")
        if ds.validation is None or len(ds.validation) == 0:
            raise InputError(f"compare chooses every checkpoint on the validation split, and the {ds.name} data set "
                             f"has none: give one to data.from_tensors(..., validation=...).")
        budgets.check(s, len(ds.validation))
        from .runs import check_fits

        for name in s.guides:
            check_fits({**s.to_dict(), "guide": name, "rows_on_disk": None}, ds)
    else:
        budgets.check(s, math.inf)


def run_folder(out, label: str, seed: int) -> Path:
    """Where the training ``label`` (``"meanfield T=5"``) with ``seed`` lives in the study ``out``:
    ``out/runs/meanfield-T5-seed0``. One flat folder of runs whose names are unique in the study, because
    ``pyro-vae evaluate`` and the tables label a run by its folder's name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label.replace(" T=", "-T")).strip("-")
    return Path(out) / "runs" / f"{slug}-seed{seed}"


def train_config(s: Settings, name: str, local_steps: int, seed: int, folder) -> dict:
    """The run's ``config.json``: the :class:`~pyro_vae.settings.TrainSettings` that rebuild its model, guide
    and data (``pyro-vae train --config`` of it trains the same run)."""
    shared = {f.name for f in TrainSettings.options()} & set(s.to_dict())
    values = {k: v for k, v in s.to_dict().items() if k in shared}
    values.update(guide=name, local_steps=local_steps, seed=seed, out=str(folder), no_jit=not s.jit,
                  no_progress=True)
    return TrainSettings.from_dict(values).to_dict()


def build_training(ds: data.Dataset, s: Settings, name: str, seed: int, hidden=None):
    """The model and the guide ``name`` of one training, initialized from ``seed`` (for one seed every decoder
    starts from the same weights)."""
    cfg = train_config(s, name, 1, seed, s.out)
    if hidden is not None:
        cfg["hidden"] = list(hidden)
    return build(cfg, ds)


def optimizer_and_loss(s: Settings, model, guide):
    """The optimizer (the same decoder lr for every guide; ``local_lr`` for per-datapoint rows) and the training
    objective of one training."""
    return (LazyAdam({"lr": s.lr}, sparse_args={"lr": s.local_lr}),
            objectives.for_training(s.elbo, model, guide, jit=s.jit, particles=s.particles))


def finished(folder) -> bool:
    """Whether the run in ``folder`` has all its result files (:data:`RUN_FILES`)."""
    return all((Path(folder) / name).is_file() for name in RUN_FILES.values())


def train_and_measure(ds: data.Dataset, settings: Settings, label: str, name: str, local_steps: int, seed: int,
                      folder) -> None:
    """One training of :func:`compare` into its run ``folder``, which the caller holds locked: the decoder and
    guide ``name`` (T = ``local_steps``) trained from ``seed``, measured on validation during training, then
    read on test at the checkpoints the validation curve chose; writes :data:`RUN_FILES`.

    A folder with a checkpoint is continued (``fit(resume=True)``): the measurements up to the checkpoint's epoch
    are kept, the later ones measured again (the same random stream, so the same values).
    """
    s, folder = settings, Path(folder)
    cfg = train_config(s, name, local_steps, seed, folder)
    model, guide = build(cfg, ds)
    optim, loss = optimizer_and_loss(s, model, guide)
    x_val = ds.validation[:s.budget_points].to(s.device)
    measured = set(budgets.measured_epochs(s.budget_epochs, s.epochs))
    batches = math.ceil(len(ds.train) / s.batch_size)
    resume = (folder / "checkpoint.pt").exists() or (folder / "checkpoint.prev.pt").exists()
    curve, done, seconds = [], 0, 0.0
    if resume:
        from .checkpoint import read_run

        check_paths(folder, cfg, reads=RUN_FILES.values())  # nothing it reads or continues leads outside the run
        state = read_run(folder / "checkpoint.pt")
        check_paths(folder, cfg, state)
        done, seconds = state["epoch"], sum(row["seconds"] for row in state["history"])
        if (folder / RUN_FILES["budget"]).exists():
            kept = pd.read_csv(folder / RUN_FILES["budget"])
            curve = kept[kept["epoch"] <= done].to_dict("records")
        del state
    else:
        folders.write_text(folder / "config.json", json.dumps(cfg, indent=2))
    spent = {"measure": 0.0, "seconds": seconds}
    # measurements and test reads take the training's intra-op threads (one for a digits-sized VAE): torch's
    # default, every core, stalls about 4x beside another process of a shared study (AIS on 100 digits: 26.5 s on 2
    # threads beside a busy core, 6.7 s on 1), and slows the other process's timed epochs
    threads = training_threads(model, guide, s.batch_size)

    def measure(epoch, row):
        spent["seconds"] += row["seconds"]
        if epoch not in measured:
            return False
        t0 = time.perf_counter()
        with intra_op_threads(threads):
            values = budget_row(model, guide, x_val, s)
        best = max((r["log_px"] for r in curve), default=-math.inf)
        point = {"guide": label, "seed": seed, "epoch": epoch, "seconds": spent["seconds"],
                 "decoder_gradients": epoch * batches, "steps": epoch * batches * local_steps, **values}
        if values["log_px"] > best:  # a checkpoint that a budget or the selection may choose
            save_weights(kept_path(folder, epoch), model, guide, epoch, spent["seconds"])
        curve.append(point)
        folders.write_csv(pd.DataFrame(curve, columns=budgets.CURVE_COLUMNS), folder / RUN_FILES["budget"])
        spent["measure"] += time.perf_counter() - t0
        return budgets.stopped(pd.DataFrame(curve), s.patience)

    if not curve:
        with torch.random.fork_rng(devices=[]):  # the untrained decoder: where every curve starts
            measure(0, {"seconds": 0.0})
    trained = done >= s.epochs or budgets.stopped(pd.DataFrame(curve), s.patience)
    history = fit(model, guide, ds, epochs=s.epochs if not trained else max(done, 1), batch_size=s.batch_size,
                  optim=optim, loss=loss, progress=s.progress, seed=seed, device=s.device, local_steps=local_steps,
                  on_epoch=measure, validate_every_step=s.validate_every_step, checkpoint_dir=str(folder),
                  resume=resume, config=cfg)
    folders.write_csv(history, folder / RUN_FILES["history"])
    curve = pd.DataFrame(curve, columns=budgets.CURVE_COLUMNS)
    chosen = budgets.choose(curve, s.test_epochs or [s.epochs], s.budget_seconds)
    for path in (folder / KEPT).glob("epoch-*.pt"):  # keep exactly the checkpoints that were chosen
        if int(path.stem.removeprefix("epoch-")) not in set(chosen["epoch"]):
            path.unlink()
    selected = chosen[chosen["budget"] == "selected"].iloc[0]
    folders.write_file(folder / SELECTED, lambda f: f.write(kept_path(folder, selected["epoch"]).read_bytes()))

    with intra_op_threads(threads):
        t0 = time.perf_counter()
        tests, results, points = read_test(model, guide, ds, s, chosen, folder, seed)
        test_seconds = time.perf_counter() - t0
        load_weights(folder / SELECTED, model, guide)
        t0 = time.perf_counter()
        widths = encoder_width_sweep(model, guide, ds, points, s, seed) if label == "normal" and s.encoder_widths \
            else []
        sweep_seconds = time.perf_counter() - t0
        # timed on the training's threads too: beside two busy processes a one-point q* fit on two threads took
        # 250-720 ms, on one 30-110 ms (meanfield, digits)
        infer_seconds = inference_seconds(model, guide, ds.test[:1].to(s.device), s.qstar_steps, s.qstar_lr)
    n_params = sum(p.numel() for p in guide.parameters())
    labels = {"guide": label, "seed": seed}
    cost = {
        **labels, "local_steps": local_steps, "amortized": guide.amortized, "guide_params": n_params,
        "guide_params_at_60000": n_params if guide.amortized else n_params * 60000 // len(ds.train),
        "decoder_params": sum(p.numel() for p in model.parameters()),
        "infer_ms_per_new_point": 1e3 * infer_seconds,
        "epochs_trained": int(history["epoch"].iloc[-1]) if len(history) else 0,
        "selected_epoch": int(selected["epoch"]), "selected_seconds": float(selected["seconds"]),
        "train_seconds": float(history["seconds"].sum()), "budget_seconds": spent["measure"],
        "evaluate_seconds": test_seconds, "sweep_seconds": sweep_seconds,
        "budget_points": len(x_val), "run": f"runs/{folder.name}",  # relative to the study: it moves with it
    }
    folders.write_csv(tests.assign(**labels), folder / RUN_FILES["tests"])
    folders.write_csv(results.assign(**labels), folder / RUN_FILES["results"])
    folders.write_csv(points.assign(**labels), folder / RUN_FILES["points"], index=True)
    folders.write_csv(pd.DataFrame(widths, columns=ENCODER_WIDTH_COLUMNS), folder / RUN_FILES["widths"])
    folders.write_csv(pd.DataFrame([cost]), folder / RUN_FILES["cost"])  # last: the run is finished


def read_test(model, guide, ds: data.Dataset, s: Settings, chosen: pd.DataFrame, folder: Path, seed: int):
    """The test split read once per chosen checkpoint (``chosen``: :func:`pyro_vae.budgets.choose`'s rows), whole
    (or its first ``test_points``), and the first ``n_eval`` training points at the selected one; each read
    seeded by ``seed`` alone.

    Returns ``(tests, results, per_point)``: ``chosen`` with the test means (:func:`pyro_vae.measure.summary_row`),
    the selected checkpoint's summary per split with its ``epoch`` and ``seconds``, and its decompose rows.
    """
    selected = int(chosen.loc[chosen["budget"] == "selected", "epoch"].iloc[0])
    by_epoch = {}
    for epoch in sorted(set(chosen["epoch"])):
        load_weights(kept_path(folder, epoch), model, guide)
        pyro.set_rng_seed(seed)
        splits = ("train", "test") if epoch == selected else ("test",)
        by_epoch[epoch] = evaluate(model, guide, ds, s, splits, sizes={"train": s.n_eval, "test": s.test_points})
    test_means = {e: summary[summary["split"] == "test"].drop(columns="split").iloc[0].to_dict()
                  for e, (summary, _) in by_epoch.items()}
    tests = pd.DataFrame([{**row, **test_means[row["epoch"]]} for row in chosen.to_dict("records")])
    summary, points = by_epoch[selected]
    row = chosen[chosen["budget"] == "selected"].iloc[0]
    return tests, summary.assign(epoch=selected, seconds=row["seconds"]), points


def _expected_cost(job) -> float:
    """A rough relative cost of a training, to start the longest first: guide-only steps and refinement
    steps multiply the work of a step, and a flow's q* fits cost about four Gaussian ones."""
    label, name, local_steps, seed = job
    return local_steps * (6 if name == "semi_amortized" else 1) * (2 if guides.get(name).family == "flow" else 1)


def take(ds: data.Dataset, s: Settings, out, job) -> str:
    """Train the run of ``job`` if it is free and unfinished: ``"done"`` (finished now or before) or ``"held"``
    (another process holds its folder)."""
    label, name, local_steps, seed = job
    folder = run_folder(out, label, seed)
    if finished(folder):
        return "done"
    try:
        with folders.writer(folder, "compare"):
            if not finished(folder):  # read again, holding the lock
                train_and_measure(ds, s, label, name, local_steps, seed, folder)
    except folders.FolderError:
        if folders.holder(folder) is None:
            raise
        return "held"
    return "done"


_WORKER = {}


def _start_worker(ds: data.Dataset, threads: int) -> None:
    import signal

    torch.set_num_threads(threads)
    _WORKER["ds"] = ds
    for stop in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C reaches every process of the terminal's group
        signal.signal(stop, _stop_worker)


def _stop_worker(signum, frame) -> None:
    """A worker asked to stop: inside a job, as Ctrl-C (its run folder keeps its last checkpoint, the exception goes
    to the main process); between jobs, a quiet exit."""
    if _WORKER.get("job") is not None:
        raise KeyboardInterrupt
    sys.exit(0)


def _take_in_worker(settings: Settings, out, job) -> str:
    _WORKER["job"] = job
    try:
        return take(_WORKER["ds"], settings, out, job)
    finally:
        _WORKER["job"] = None


def _run_jobs(ds: data.Dataset, s: Settings, out: Path, jobs) -> list:
    """Every job that is free, in this process or in ``s.workers`` processes (spawned, each with an equal share of
    the cores, longest job first); returns the jobs that other processes hold."""
    import concurrent.futures
    import multiprocessing
    import os
    import signal

    order = sorted(jobs, key=lambda j: -_expected_cost(j))
    if s.workers == 1:
        bar = progress_bar(order, "compare", s.progress)
        held = []
        for job in bar:
            bar.set_postfix(guide=job[0], seed=job[3], refresh=False)
            if take(ds, s, out, job) == "held":
                held.append(job)
        return held
    quiet = dataclasses.replace(s, progress=False)
    threads = max(1, (os.cpu_count() or 1) // s.workers)
    pool = concurrent.futures.ProcessPoolExecutor(s.workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start_worker, initargs=(ds, threads))
    held = []
    try:
        futures = {pool.submit(_take_in_worker, quiet, out, job): job for job in order}
        bar = progress_bar(concurrent.futures.as_completed(futures), f"compare ({s.workers} workers)", s.progress,
                           total=len(jobs))
        for future in bar:
            job = futures[future]
            if future.result() == "held":
                held.append(job)
            bar.set_postfix(done=job[0], seed=job[3], refresh=False)
    except BaseException:  # Ctrl-C, SIGTERM, a job's error: the jobs not started are dropped, the running ones stopped
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, signal.SIGTERM)  # _stop_worker: its run folder keeps its last checkpoint
        pool.shutdown()  # each worker ends its loop, so that no lock or semaphore is left behind
        raise
    pool.shutdown()
    return held


def saved_settings(out) -> dict:
    """The settings of the study in ``out`` (its ``config.json``); one line when ``out`` holds no study."""
    path = Path(out) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict) or "guides" not in saved:
        raise InputError(f"compare --resume: {out} holds no study to continue (no config.json of `pyro-vae compare`); "
                         f"start one without --resume.")
    return saved


def check_resumable(out: Path, s: Settings) -> None:
    """``resume``: ``out`` holds a study whose ``config.json`` has these settings (but :data:`RESUMABLE`)."""
    path = out / "config.json"
    saved = saved_settings(out)
    mine = s.to_dict()
    differ = [k for k in sorted(set(saved) | set(mine)) if k not in RESUMABLE and saved.get(k) != mine.get(k)]
    if differ:
        shown = "; ".join(f"{k} {saved.get(k)!r} there, {mine.get(k)!r} here" for k in differ[:3])
        raise InputError(f"compare --resume: the study in {out} has other settings ({shown}): give its settings "
                         f"(--config {path}), or start another study in another --out.")


def compare(ds: data.Dataset, settings: Settings = Settings(), out=None, resume: bool = False,
            overwrite: bool = False) -> Result:
    """Run the study ``settings`` describe into the folder ``out`` (default ``settings.out``), or with ``resume``
    continue the one there; returns its tables, read back from the run folders.

    A new study claims ``out`` (refused when it holds anything, unless ``overwrite``) and writes its
    ``config.json``. Each training (one per label of :func:`trainings` and seed) runs in its run folder under
    that folder's lock, seeded by its own seed alone, so ``settings.workers`` processes, or several commands
    sharing the study, give the same tables as one (they differ in ``seconds`` only). A run that another process
    holds is waited for; one whose holder died is continued here. The study's own files (:func:`write_study`) are
    written last.
    """
    s = settings
    out = Path(out if out is not None else s.out)
    check(s, ds)
    with folders.writer(out, "compare"):
        if resume:
            check_resumable(out, s)
        else:
            folders.claim(out, "compare", overwrite)
            folders.write_text(out / "config.json", json.dumps(s.to_dict(), indent=2))
    jobs = [(*training, seed) for training in trainings(s) for seed in range(s.seed, s.seed + s.seeds)]
    pending = jobs
    while pending:
        pending = _run_jobs(ds, s, out, pending)
        if pending:
            time.sleep(1.0)  # held by another process: wait for it to finish (or die, and continue its run here)
    result = read_study(ds, s, out, jobs)
    with folders.writer(out, "compare", wait=True):
        write_study(result, ds, s, out)
    return result


def read_study(ds: data.Dataset, s: Settings, out: Path, jobs) -> Result:
    """The study's tables from its finished run folders (the first seed's modules at their selected checkpoint)."""
    frames = {key: [] for key in RUN_FILES}
    models, trained, folders_of = {}, {}, {}
    for label, name, local_steps, seed in jobs:
        folder = run_folder(out, label, seed)
        folders_of[(label, seed)] = folder
        check_paths(folder, reads=RUN_FILES.values())  # what it reads of the run leads nowhere outside it
        for key, fname in RUN_FILES.items():
            frame = pd.read_csv(folder / fname, index_col="row" if key == "points" else None)
            frames[key].append(frame.assign(guide=label, seed=seed) if key == "history" else frame)
        if seed == s.seed:
            model, guide = build_training(ds, s, name, seed)
            if (folder / SELECTED).exists():
                load_weights(folder / SELECTED, model, guide)
            models[label], trained[label] = model.to(s.device), guide.to(s.device)
    table = pd.concat(frames["results"], ignore_index=True)
    table = table[["guide", "seed", *table.columns.drop(["guide", "seed"])]]
    tests = pd.concat(frames["tests"], ignore_index=True)
    tests = tests[["guide", "seed", *tests.columns.drop(["guide", "seed"])]]
    curves = pd.concat(frames["budget"], ignore_index=True)
    swept = [frame for frame in frames["widths"] if len(frame)]  # (only the normal encoders' runs sweep)
    widths = pd.concat(swept, ignore_index=True).astype({"retrained": bool}) if swept else \
        pd.DataFrame(columns=ENCODER_WIDTH_COLUMNS)
    return Result(
        histories=pd.concat(frames["history"], ignore_index=True), table=table, tests=tests,
        cost=pd.concat(frames["cost"], ignore_index=True), per_point=pd.concat(frames["points"]).reset_index(),
        models=models, guides=trained, budget=curves,
        differences=budgets.differences(curves, tests, s.budget_seconds),
        encoder_widths=widths, runs=folders_of,
    )


def selection(result: Result) -> pd.DataFrame:
    """One row per (guide, seed): the selected checkpoint's epoch and seconds, its validation log p(x), whether
    the validation curve flattened (:func:`pyro_vae.budgets.flattened`), the epochs trained, and the run folder."""
    rows = []
    for (guide, seed), curve in result.budget.groupby(["guide", "seed"], sort=False):
        sel = result.tests[(result.tests["guide"] == guide) & (result.tests["seed"] == seed)
                           & (result.tests["budget"] == "selected")].iloc[0]
        rows.append({"guide": guide, "seed": seed, "selected_epoch": int(sel["epoch"]),
                     "selected_seconds": sel["seconds"], "validation_log_px": sel["validation_log_px"],
                     "epochs_trained": int(curve["epoch"].max()), **budgets.flattened(curve),
                     "run": f"runs/{result.runs[(guide, seed)].name}"})
    return pd.DataFrame(rows)


def seconds_note(result: Result, s: Settings) -> str:
    """How a study's training seconds were timed, for its figures: intra-op threads per training and processes."""
    import os

    counts = {training_threads(result.models[label], result.guides[label], s.batch_size) for label in result.models}
    cores = max(1, (os.cpu_count() or 1) // s.workers)
    shown = "/".join(sorted(str(c or cores) for c in counts))
    return (f"{shown} intra-op thread{'s' if shown != '1' else ''} per training, {s.workers} worker "
            f"process{'es' if s.workers > 1 else ''} on {os.cpu_count()} cores")


def write_study(result: Result, ds: data.Dataset, s: Settings, out: Path) -> list:
    """The study's tables and figures at the top of ``out``; returns their names. Every row names its run."""
    from . import plots

    runs_column = {key: f"runs/{path.name}" for key, path in result.runs.items()}  # relative to the study
    tables = {"results.csv": result.table, "test_at_budgets.csv": result.tests, "cost.csv": result.cost,
              "per_point.csv": result.per_point, "history.csv": result.histories, "budget.csv": result.budget,
              "differences.csv": result.differences, "selection.csv": selection(result)}
    for name in ("results.csv", "test_at_budgets.csv", "budget.csv"):
        frame = tables[name]
        tables[name] = frame.assign(run=[runs_column[(g, k)] for g, k in zip(frame["guide"], frame["seed"])])
    timing = seconds_note(result, s)
    figures = {
        "learning_curves.png": plots.learning_curves(result.histories, title=f"Learning curves on {ds.name}"),
        "gaps.png": plots.gap_bars(result.per_point, title=f"Approximation and amortization gaps on {ds.name} "
                                                           f"(selected checkpoints)"),
        "latents.png": plots.latent_scatter(latent_frame(result, ds)),
        "budget.png": plots.budget_curves(result.budget, title=f"Validation log p(x) during training on {ds.name}",
                                          split="validation", seconds_note=timing),
        "gaps_during_training.png": plots.gap_curves(result.budget, title=f"The gaps during training on {ds.name} "
                                                                          f"(validation points)"),
    }
    if len(result.differences):
        figures["differences.png"] = plots.differences(result.differences, seconds_note=timing,
                                                       title=f"Each decoder against the normal encoder's on "
                                                             f"{ds.name}, paired over seeds")
    if len(result.encoder_widths):
        tables["encoder_widths.csv"] = result.encoder_widths
        figures["encoder_widths.png"] = plots.encoder_widths(
            result.encoder_widths, title=f"Amortization gap against the encoder's width on {ds.name}")
    if ds.image_shape:
        figures["images.png"] = plots.image_grid(image_rows(result, ds), ds.image_shape)
    for fname, table in tables.items():
        folders.write_csv(table, out / fname)
    for fname, fig in figures.items():
        plots.save(fig, out / fname)
    return list(tables) + list(figures)
