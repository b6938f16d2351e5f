"""Tune one arm of the comparison on the validation split with Optuna, at a budget every arm shares.

Usage::

    s = settings.TuneSettings(guide="meanfield", tune_steps=True, trials=20, epochs=100, out="runs/tune-mf")
    study = tune(data.load("digits", binarize="static"), s)        # the study, stored in runs/tune-mf/optuna.db
    study.best_params                                              # {"lr": ..., "local_lr": ..., "local_steps": ...}

    pyro-vae tune --guide meanfield --tune-steps --trials 20 --epochs 100 --out runs/tune-mf
    pyro-vae tune --out runs/tune-mf --trials 40 --resume         # 20 more trials of the same study

Each trial trains a decoder with the arm's guide from ``seed`` for ``epochs`` epochs (the equal budget) with the
trial's learning rates, measures it at ``budget_epochs`` (each measurement reported to the pruner, which stops a
trial below the median of the earlier ones at that epoch), and scores it by its best measurement (the checkpoint
validation selects) of log p(x) on the **validation** split (its first ``budget_points``, when given)
(:func:`pyro_vae.measure.budget_row`: importance sampling from q* fitted with the decoder frozen, so an encoder-
trained and a mean-field-trained decoder are measured alike); the test split is never read. The search space
(:data:`SPACE`): the Adam learning rate of the networks (``lr``, decoder and encoder together), of a per-datapoint
guide's rows (``local_lr``), and with ``tune_steps`` T, the guide's steps per batch (``local_steps``: for an
encoder, T - 1 encoder-only steps with the decoder fixed, He et al. 2019's aggressive training).

The study lives in an Optuna storage: by default SQLite in the output folder (``optuna.db``, never a link out of
it); any database URL (``--storage``; a relative SQLite path is relative to the output folder) lets processes or
machines add trials to one study, each stopping when it holds ``trials`` finished ones (complete or pruned; failed
and running ones are not counted). A study is named by ``study`` (``--study-name``) or by its settings
(:func:`study_name`: ``meanfield-T-digits-100ep-1a2b3c4d``, a hash of every setting that changes what a trial
measures, :func:`measured_settings`), which it keeps (user attribute :data:`SETTINGS_ATTR`): a process whose settings
differ from a study's of the same name is refused, so tunings sharing a storage never mix their trials. ``--resume``
never makes a database or a study. A trial whose loss diverges (NaN or inf) is pruned, marked ``diverged``: it was run,
and its rates are what it measured. A trial whose process died (SIGKILL, a lost machine) is marked failed: by
Optuna's heartbeat (:data:`pyro_vae.storage.HEARTBEAT`, :data:`~pyro_vae.storage.GRACE`) once it is stale, and at
once by ``--resume`` of its folder.

With ``seconds_cap`` each trial also stops inside that many seconds of training (arms compared at equal seconds).
After the search the ``rescore_top`` best complete trials are scored again on ``rescore_seeds`` more training
seeds, and the best mean is chosen (:func:`rescore`, :func:`chosen`; ``best.json``).

The sampler is TPE: its first ``startup_trials`` trials (default a third of ``trials``) are drawn at random, the rest
from its model of the results. It is seeded by :func:`sampler_seed` (``sampler_seed``, or one derived from the
study's arm, data set and budget, never the training ``seed``: each study draws its own trials, and a tuning can
be repeated on other training seeds with the same trial points) plus the number of trials the study already holds:
the same settings give the same trials again, and a resumed study draws new ones; processes sharing a study are not
reproducible (their order of completion decides what each samples next).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import warnings
import zlib
from pathlib import Path
from typing import Optional

import pandas as pd

from . import data, folders, settings
from .threads import intra_op_threads, training_threads
from .storage import (DATABASE, check_database, check_storage, open_storage, parse_url, password_of, problem,
                      shown_url, sqlite_file, storage_url)
from .budgets import measured_epochs
from .compare import build_training, optimizer_and_loss
from .measure import budget_row
from .progress import progress_bar
from .errors import InputError
from .settings import CompareSettings, TuneSettings
from .train import fit

#: the search space: name -> (low, high, log scale) for rates, the choices for T
SPACE = {"lr": (1e-4, 3e-2, True), "local_lr": (1e-3, 3e-1, True), "local_steps": (1, 2, 5, 10, 20)}
#: the files a tuning writes into its folder (beside config.json)
OUTPUTS = {"storage": DATABASE, "trials": "trials.csv", "best": "best.json", "figure": "trials.png"}


#: the settings a resumed study takes from the command line; every other one is the study's own
RESUMABLE = ("trials", "progress", "device", "jit", "storage", "rescore_top", "rescore_seeds")
#: the settings that do not change what a trial measures (how many trials, how they are drawn and pruned, where the
#: study is kept and run, where the data are read from): every other one is part of a study's identity
#: (:func:`measured_settings`), in its default name and checked against the study's own when it is joined
UNMEASURED = ("trials", "sampler_seed", "startup_trials", "pruner", "storage", "study", "out", "progress", "device",
              "jit", "root", "no_download", "validate_every_step", "lr",  # lr: each trial's own
              "rescore_top", "rescore_seeds")  # what is done after the search
#: the user attribute of an Optuna study that holds its :func:`measured_settings`
SETTINGS_ATTR = "pyro_vae_settings"
#: the user attribute of a trial naming the process that runs it: ``{"host", "pid", "folder"}``
PROCESS_ATTR = "pyro_vae_process"
#: the trial user attribute of a trial pruned because its loss diverged (the error's message): a rate too high is
#: a result about the search space, counted as run like any pruned trial, and TPE ranks it among the worst
DIVERGED_ATTR = "diverged"


def resumed_settings(out: Path, given: dict, config: Optional[dict] = None) -> TuneSettings:
    """The settings of the study in ``out`` (its ``config.json``), with those of :data:`RESUMABLE` that ``given``
    (the flags given) or ``config`` (a ``--config`` file's) sets; any other of them that would change the study's
    own is refused (:func:`pyro_vae.settings.refuse_changes_on_resume`). A study whose storage lies outside the
    folder is resumed only when ``--storage`` names it again: a config file alone never makes a command write
    elsewhere."""
    path = Path(out) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"tune --resume: {out} holds no study to continue ({path}: {e}); start one without "
                         f"--resume.") from None
    if not isinstance(saved, dict) or "tune_steps" not in saved:
        raise InputError(f"tune --resume: {path} is not the config.json of a `pyro-vae tune` study; start one "
                         f"without --resume, or give the folder of a study.")
    settings.refuse_changes_on_resume("tune", out, saved, {**(config or {}), **given}, RESUMABLE, made="made")
    own = TuneSettings.from_dict({**saved, "out": str(out)}, str(path))
    if saved.get("storage") and (not given.get("storage") or storage_url(own.replace(storage=given["storage"]))
                                 != storage_url(own)):
        raise InputError(f"tune --resume: the study in {out} lives in {shown_url(saved['storage'])}, outside its "
                         f"folder: give --storage {shown_url(saved['storage'])} again to add trials there"
                         f"{' (its password in place of ***)' if password_of(saved['storage']) else ''}.")
    taken = {**{k: v for k, v in (config or {}).items() if k != "storage"}, **given}  # never a storage from a file
    values = {**saved, **{k: taken[k] for k in RESUMABLE if k in taken}, "out": str(out)}
    return TuneSettings.from_dict(values, str(path))


def measured_settings(s: TuneSettings) -> dict:
    """The settings that change what a trial measures (all but :data:`UNMEASURED`), as JSON values: a study's
    identity, stored in it (user attribute :data:`SETTINGS_ATTR`)."""
    return json.loads(json.dumps({k: v for k, v in s.to_dict().items() if k not in UNMEASURED}))


def base_name(s: TuneSettings) -> str:
    """The arm, data set and budget (``meanfield-T-digits-100ep``): the default name of a study before its settings
    were part of it, and the start of the default name now."""
    return f"{s.guide}{'-T' if s.tune_steps else ''}-{s.data}-{s.epochs}ep"


def study_name(s: TuneSettings) -> str:
    """The study's name: ``s.study`` (``--study-name``), or :func:`base_name` and 8 hex digits of a hash of its
    :func:`measured_settings` (``meanfield-T-digits-100ep-1a2b3c4d``), so that tunings with other settings sharing a
    storage are other studies."""
    digest = hashlib.sha256(json.dumps(measured_settings(s), sort_keys=True).encode()).hexdigest()[:8]
    return s.study or f"{base_name(s)}-{digest}"


def sampler_seed(s: TuneSettings) -> int:
    """The TPE sampler's seed: ``s.sampler_seed``, or the CRC-32 of ``s.study`` or else of :func:`base_name` (so
    that studies of other arms, data sets or budgets draw other trials, and studies on other training seeds the
    same ones)."""
    return s.sampler_seed if s.sampler_seed is not None else zlib.crc32((s.study or base_name(s)).encode())


def _differences(theirs: dict, ours: dict) -> str:
    keys = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    return "; ".join(f"{k} {settings.shown(theirs.get(k))}, not {settings.shown(ours.get(k))}" for k in keys[:3]) + (
        f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _find_study(s: TuneSettings, url: str, resume: bool, create: bool):
    """The storage and the name and id of the study of ``s`` in it (the id None when there is none), checked: a
    study made with other settings (:func:`measured_settings`) is refused, and with ``resume`` a storage without the
    study. Finds a study named by :func:`base_name` (an older pyro-vae's default) when resuming."""
    import optuna
    import sqlalchemy.exc

    shown = shown_url(s.storage) if s.storage else str(Path(s.out) / OUTPUTS["storage"])
    ours = measured_settings(s)
    names = [study_name(s)] + ([base_name(s)] if resume and not s.study else [])
    try:
        try:
            storage = open_storage(s, url, create)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError, ValueError):
            if create or resume:
                raise
            return None, names[0], None  # no Optuna tables yet, say: made with the study, or refused then
        found = None
        for name in names:
            try:
                found = (name, storage.get_study_id_from_name(name))
                break
            except KeyError:
                continue
        if found is None:
            if resume:
                raise InputError(f"tune --resume: {shown} holds no study {names[0]} (--resume never makes one): give "
                                 f"the --storage and --study-name its study was made with, or start one without "
                                 f"--resume.")
            return storage, names[0], None
        theirs = storage.get_study_user_attrs(found[1]).get(SETTINGS_ATTR)
        if theirs is None and not resume and storage.get_all_trials(found[1], deepcopy=False):
            raise InputError(f"tune: the study {found[0]} in {shown} was made by an older pyro-vae, which did not keep "
                             f"its settings: resume it from its folder (tune --resume --out DIR), which records them, "
                             f"or give another --study-name.")
    except InputError:
        raise
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError, ValueError) as e:
        if resume:
            raise InputError(f"tune --resume: {shown} holds no Optuna study that can be read "
                             f"({problem(e, url)}); nothing was changed: give the --storage its study was "
                             f"made in, or start one without --resume.") from None
        raise InputError(f"tune: the storage {shown} cannot be opened by Optuna ({problem(e, url)}): give "
                         f"another --storage.") from None
    if theirs is not None and theirs != ours:
        raise InputError(f"tune: the study {found[0]} in {shown} was made with other settings "
                         f"({_differences(theirs, ours)}): give another --study-name (or none: the default name is "
                         f"the settings'), or its own settings.")
    return storage, found[0], found[1]


def check_study(s: TuneSettings, resume: bool = False) -> None:
    """Before any work, reading only: a one-line :class:`InputError` when the study's database is a link out of its
    folder or damaged, when ``resume`` and the storage holds no such study (nor database), or when the storage
    holds a study of that name with other settings. A new study in the folder's own storage is not looked at: the
    folder is claimed for it (``pyro-vae tune`` refuses a folder that holds one, or with ``--overwrite`` removes
    it)."""
    check_storage(s)
    if not s.storage and not resume:
        return
    url = storage_url(s)
    check_database(s, url, resume)
    path = sqlite_file(parse_url(url))
    if path and (not path.exists() or path.stat().st_size == 0) and not resume:  # a new database: nothing to check
        return
    _find_study(s, url, resume, create=False)


def open_study(s: TuneSettings, resume: bool = False, exclusive: bool = False):
    """The ``optuna.Study`` of ``s``: made in its storage unless it is there (with ``resume``, it must be),
    checked as :func:`check_study`, its settings recorded. Running trials whose process is dead are marked failed:
    those whose heartbeat stopped (Optuna's ``fail_stale_trials``), and those of this folder and machine when
    ``exclusive`` (the caller holds the folder's writer lock, so no process of the folder runs; with the default
    storage, every running trial, since only the folder's processes write it)."""
    import optuna

    check_storage(s)
    url = storage_url(s)
    check_database(s, url, resume)
    path = sqlite_file(parse_url(url))
    if path and not resume and path.parent == Path(s.out).resolve():
        path.parent.mkdir(parents=True, exist_ok=True)
    storage, name, study_id = _find_study(s, url, resume, create=not resume)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if study_id is None:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                    pruner=pruner(s))
        _find_study(s, url, resume, create=False)  # another process may have made it meanwhile, with its settings
    else:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner(s))
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, measured_settings(s))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if exclusive:
        here = {"host": socket.gethostname(), "folder": str(Path(s.out).resolve())}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            process = t.user_attrs.get(PROCESS_ATTR)
            if (process is None and not s.storage) or (
                    isinstance(process, dict) and {k: process.get(k) for k in here} == here):
                study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return study


def finished(study) -> list:
    """The study's trials that count (complete or pruned: they were run); failed and running ones do not."""
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                     optuna.trial.TrialState.PRUNED))


def startup_trials(s: TuneSettings) -> int:
    """The trials TPE draws at random before it models the results: ``s.startup_trials``, or a third of
    ``s.trials`` (at least 1). Optuna's default, 10, makes a study of 10 trials a random search."""
    return s.startup_trials if s.startup_trials is not None else max(1, s.trials // 3)


def suggest(trial, s: TuneSettings) -> dict:
    """The trial's settings from :data:`SPACE`: ``lr``; ``local_lr`` for a per-datapoint guide; ``local_steps``
    with ``tune_steps``."""
    import guides

    params = {"lr": trial.suggest_float("lr", *SPACE["lr"][:2], log=SPACE["lr"][2])}
    if not guides.get(s.guide).amortized:
        params["local_lr"] = trial.suggest_float("local_lr", *SPACE["local_lr"][:2], log=SPACE["local_lr"][2])
    if s.tune_steps:
        params["local_steps"] = trial.suggest_categorical("local_steps", list(SPACE["local_steps"]))
    return params


def score(ds: data.Dataset, s: TuneSettings, params: dict, trial=None) -> float:
    """Train the arm with ``params`` for ``s.epochs`` epochs, measuring validation log p(x) (nats per datapoint) at
    each of ``s.budget_epochs`` up to ``s.epochs`` and at ``s.epochs``; returns the best measurement, the checkpoint
    that validation selects within the budget (higher is better).

    With ``s.seconds_cap``, training also stops at the epoch after which another one (as long as the shortest so far:
    the first carries the compilation) would pass that many seconds of training, and is measured there: every
    measurement lies inside the cap. An epoch longer than the shortest may pass
    the cap all the same: training stops there, unmeasured, and the score is the best measurement inside the cap;
    with none (a first epoch longer than the cap), the trial is pruned (``over_cap_at_epoch``), or without
    ``trial`` scores ``-inf``.

    With ``trial`` (an ``optuna.Trial``), each measurement is reported as the trial's intermediate value at that
    epoch, and the trial stops (``optuna.TrialPruned``) when its pruner says so. Measurements leave the training's
    random numbers as they were (``fit(on_epoch=...)``).
    """
    shared = {f.name for f in CompareSettings.options()} & set(s.to_dict())
    c = CompareSettings.from_dict({**{k: v for k, v in s.to_dict().items() if k in shared},
                                   **{k: v for k, v in params.items() if k != "local_steps"}, "out": s.out})
    model, guide = build_training(ds, c, s.guide, s.seed)
    optim, loss = optimizer_and_loss(c, model, guide)
    x_val = ds.validation[:s.budget_points].to(s.device)
    measured = set(measured_epochs(s.budget_epochs, s.epochs)) - {0}
    curve, at, spent, shortest = [], [], [0.0], [math.inf]  # measurements, their epochs, seconds so far, an epoch's
    cap = s.seconds_cap if s.seconds_cap is not None else math.inf
    threads = training_threads(model, guide, c.batch_size)  # the measurements' too: two would stall beside a lane

    def measure(epoch: int, row: dict) -> bool:
        import optuna

        spent[0] += row["seconds"]
        shortest[0] = min(shortest[0], row["seconds"])
        if spent[0] > cap:  # an epoch longer than the shortest passed the cap: it is not measured
            if curve or trial is None:  # scored by the measurements inside the cap (-inf without any)
                return True
            trial.set_user_attr("over_cap_at_epoch", epoch)
            raise optuna.TrialPruned(f"epoch {epoch} passed --seconds-cap {cap:g} ({spent[0]:.3g} s) before any "
                                     f"measurement")
        last = spent[0] + shortest[0] > cap  # another epoch as short as the shortest would pass the cap
        if epoch not in measured and not last:
            return False
        with intra_op_threads(threads):  # as compare measures
            curve.append(float(budget_row(model, guide, x_val, c)["log_px"]))
        at.append(epoch)
        if trial is not None:
            trial.report(curve[-1], epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"validation log p(x) {curve[-1]:.3f} at epoch {epoch}")
        return last

    fit(model, guide, ds, epochs=s.epochs, batch_size=s.batch_size, progress=False, seed=s.seed, device=s.device,
        local_steps=params.get("local_steps", 1), optim=optim, loss=loss, on_epoch=measure)
    if trial is not None:
        trial.set_user_attr("selected_epoch", at[curve.index(max(curve))])
        trial.set_user_attr("seconds_trained", spent[0])
    return max(curve, default=-math.inf)


def pruner(s: TuneSettings):
    """The study's pruner: Optuna's ``MedianPruner`` once the random trials are done and after the first tenth of
    the epochs (a trial is stopped at a measured epoch where it is below the earlier trials' median), or none."""
    import optuna

    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials(s), n_warmup_steps=s.epochs // 10)


def check(ds: data.Dataset, s: TuneSettings) -> None:
    """A one-line :class:`InputError` before any work when the data set has no validation split, or fewer than
    ``budget_points`` points in it."""
    if ds.validation is None or len(ds.validation) == 0:
        raise InputError(f"tune scores trials on the validation split, and the {ds.name} data set has none: give "
                         f"one to data.from_tensors(..., validation=...).")
    if s.budget_points is not None and s.budget_points > len(ds.validation):
        raise InputError(f"tune --budget-points {s.budget_points}: the validation split has {len(ds.validation)}; "
                         f"give {len(ds.validation)} or fewer.")


def tune(ds: data.Dataset, s: TuneSettings, study=None):
    """Run the study until it holds ``s.trials`` complete trials; returns the ``optuna.Study``: ``study``, or the
    one :func:`open_study` opens (made unless it is there). The folder ``s.out`` is created for the default storage
    (``pyro-vae tune`` also locks and claims it, and opens the study itself).

    :raises InputError: as :func:`check` and :func:`open_study`.
    """
    import optuna

    check(ds, s)
    study = open_study(s) if study is None else study
    # seeded by the trials already there, so that a resumed study does not draw its first trials again
    study.sampler = optuna.samplers.TPESampler(seed=(sampler_seed(s) + len(study.trials)) % 2 ** 32,
                                               n_startup_trials=startup_trials(s))
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # a pruned trial counts: it was run
    remaining = s.trials - len(finished(study))
    if remaining > 0:
        stop = optuna.study.MaxTrialsCallback(s.trials, states=states)
        quiet = _QuietInterrupt()
        logger = logging.getLogger("optuna.study._optimize")  # where Optuna reports a failed trial
        logger.addFilter(quiet)
        process = {"host": socket.gethostname(), "pid": os.getpid(), "folder": str(Path(s.out).resolve())}

        def objective(trial):
            trial.set_user_attr(PROCESS_ATTR, process)  # whose it is: a resume of its folder fails it if left running
            try:
                return score(ds, s, suggest(trial, s), trial)
            except FloatingPointError as e:  # the loss went to NaN or inf: a result about the rates, not a crash
                trial.set_user_attr(DIVERGED_ATTR, str(e))
                raise optuna.TrialPruned(f"diverged: {e}") from None
        try:
            study.optimize(objective, n_trials=remaining, callbacks=[stop], show_progress_bar=s.progress)
        finally:
            logger.removeFilter(quiet)
    rescore(ds, s, study)
    return study


def rescore_key(trial: int, seed: int) -> str:
    """The study's user attribute that keeps trial ``trial``'s score on training seed ``seed``."""
    return f"rescore:{trial}:{seed}"


def rescore(ds: data.Dataset, s: TuneSettings, study) -> pd.DataFrame:
    """Score the ``s.rescore_top`` best complete trials again with training seeds ``s.seed + 1``, ...,
    ``s.seed + s.rescore_seeds`` (no pruning), each kept in the study as it is done (:func:`rescore_key`: an
    interrupted re-scoring continues where it stopped); returns :func:`rescored` of the study."""
    import optuna

    top = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                 key=lambda t: (-t.value, t.number))[:s.rescore_top]
    todo = [(t, s.seed + k) for t in top for k in range(1, s.rescore_seeds + 1)
            if rescore_key(t.number, s.seed + k) not in study.user_attrs]
    for t, seed in progress_bar(todo, "re-score the best trials", s.progress and bool(todo)):
        study.set_user_attr(rescore_key(t.number, seed), score(ds, s.replace(seed=seed), t.params))
    return rescored(study, s)


def rescored(study, s: TuneSettings) -> pd.DataFrame:
    """The ``s.rescore_top`` best complete trials, one row each, best mean first: ``trial``, ``mean`` (validation
    log p(x) over the study's seed and the re-scoring seeds, nats per datapoint), ``seeds`` (how many), and
    ``seed_S``, the score on each seed S. Trials not yet re-scored on every seed have fewer; without re-scoring
    (``rescore_top`` 0) it has no rows."""
    import optuna

    top = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                 key=lambda t: (-t.value, t.number))[:s.rescore_top]
    rows = []
    for t in top:
        values = {s.seed: t.value}
        for k in range(1, s.rescore_seeds + 1):
            if rescore_key(t.number, s.seed + k) in study.user_attrs:
                values[s.seed + k] = study.user_attrs[rescore_key(t.number, s.seed + k)]
        rows.append({"trial": t.number, "mean": sum(values.values()) / len(values), "seeds": len(values),
                     **{f"seed_{seed}": v for seed, v in values.items()}})
    table = pd.DataFrame(rows, columns=["trial", "mean", "seeds"] if not rows else None)
    return table.sort_values(["mean", "trial"], ascending=[False, True], ignore_index=True) if rows else table


def chosen(study, s: TuneSettings):
    """The trial the tuning chooses: of the re-scored ones (:func:`rescored`), the best mean; Optuna's best trial
    when none was re-scored."""
    table = rescored(study, s)
    return study.best_trial if table.empty else study.trials[int(table["trial"].iloc[0])]


class _QuietInterrupt(logging.Filter):
    """Drops Optuna's report (a traceback, then "failed with value None") of a trial stopped by Ctrl-C or SIGTERM:
    Optuna marks it failed, and the command line says in one line what was kept."""

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted = True
            return False
        return not (self.interrupted and "failed with value None" in record.getMessage())


def trials_table(study) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``value`` (validation log p(x), nats per datapoint: a complete
    trial's best measurement, a pruned one's last), the parameters (``lr``, ...), ``seconds``, ``best_so_far``
    (of the complete trials) and ``diverged`` (pruned because its loss went to NaN or inf)."""
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))
    table = table.rename(columns=lambda c: c.removeprefix("params_"))
    table["seconds"] = table.pop("duration").dt.total_seconds()
    table["best_so_far"] = table["value"].where(table["state"] == "COMPLETE").cummax()  # a pruned trial's value is
    # its last measurement, not a score
    table["diverged"] = [DIVERGED_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False)]
    return table


def best(study, s: TuneSettings) -> dict:
    """What ``best.json`` holds: the chosen trial (:func:`chosen`): its parameters and ``value`` (its mean over the
    re-scoring seeds, or Optuna's value without re-scoring); the re-scored trials (``rescored``: trial, mean, seeds,
    seed_S), Optuna's best trial on the study's seed alone (``single_seed_best``), and how the study was run."""
    trial, table = chosen(study, s), rescored(study, s)
    value = float(table["mean"].iloc[0]) if len(table) else trial.value
    return {"value": value, "params": trial.params, "trial": trial.number, "study": study.study_name,
            "rescored": json.loads(table.to_json(orient="records")),
            "single_seed_best": {"trial": study.best_trial.number, "value": study.best_trial.value},
            "seconds_cap": s.seconds_cap,
            "storage": shown_url(s.storage) if s.storage else OUTPUTS["storage"], "trials": len(finished(study)),
            "epochs": s.epochs,
            "budget_points": s.budget_points, "split": "validation",  # None: all of it "sampler_seed": sampler_seed(s),
            "startup_trials": startup_trials(s),
            "space": {k: list(v) for k, v in SPACE.items()}}


def write(study, s: TuneSettings, out: Path) -> list:
    """``trials.csv``, ``best.json`` and ``trials.png`` in ``out``; returns their names."""
    from . import plots

    table = trials_table(study)
    folders.write_csv(table, out / OUTPUTS["trials"])
    folders.write_text(out / OUTPUTS["best"], json.dumps(best(study, s), indent=2))
    plots.save(plots.tuning_trials(table, title=f"Validation log p(x) of {study.study_name}'s trials"),
               out / OUTPUTS["figure"])
    return [OUTPUTS["trials"], OUTPUTS["best"], OUTPUTS["figure"]]
