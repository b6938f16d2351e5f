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
validation selects) of log p(x) on the first ``budget_points`` **validation** points
(:func:`pyro_vae.measure.budget_row`: importance sampling from q* fitted with the decoder frozen, so an encoder-
trained and a mean-field-trained decoder are measured alike); the test split is never read. The search space
(:data:`SPACE`): the Adam learning rate of the networks (``lr``, decoder and encoder together), of a per-datapoint
guide's rows (``local_lr``), and with ``tune_steps`` T, the guide's steps per batch (``local_steps``: for an
encoder, T - 1 encoder-only steps with the decoder fixed, He et al. 2019's aggressive training).

The study lives in an Optuna storage: by default SQLite in the output folder (``optuna.db``); any database URL
(``--storage``) lets processes or machines add trials to one study, each stopping when it holds ``trials`` finished
ones (complete or pruned). The sampler is TPE: its first ``startup_trials`` trials (default a third of ``trials``)
are drawn at random, the rest from its model of the results. It is seeded by :func:`sampler_seed` (``sampler_seed``,
or one derived from the study's name, never the training ``seed``: each study draws its own trials, and a tuning can
be repeated on other training seeds with the same trial points) plus the number of trials the study already holds:
the same settings give the same trials again, and a resumed study draws new ones; processes sharing a study are not
reproducible (their order of completion decides what each samples next).
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import pandas as pd

from . import data, folders
from .budgets import measured_epochs
from .compare import build_training, optimizer_and_loss
from .measure import budget_row
from .errors import InputError
from .settings import CompareSettings, TuneSettings
from .train import fit

#: the search space: name -> (low, high, log scale) for rates, the choices for T
SPACE = {"lr": (1e-4, 3e-2, True), "local_lr": (1e-3, 3e-1, True), "local_steps": (1, 2, 5, 10, 20)}
#: the files a tuning writes into its folder (beside config.json)
OUTPUTS = {"storage": "optuna.db", "trials": "trials.csv", "best": "best.json", "figure": "trials.png"}


#: the settings a resumed study takes from the command line; every other one is the study's own
RESUMABLE = ("trials", "progress", "device", "jit", "storage")


def resumed_settings(out: Path, given: dict) -> TuneSettings:
    """The settings of the study in ``out`` (its ``config.json``), with those of :data:`RESUMABLE` that ``given``
    sets. A study whose storage lies outside the folder is resumed only when ``--storage`` names it again: a
    config file alone never makes a command write elsewhere."""
    path = Path(out) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"tune --resume: {out} holds no study to continue ({path}: {e}); start one without "
                         f"--resume.") from None
    if not isinstance(saved, dict) or "tune_steps" not in saved:
        raise InputError(f"tune --resume: {path} is not the config.json of a `pyro-vae tune` study; start one "
                         f"without --resume, or give the folder of a study.")
    if saved.get("storage") and given.get("storage") != saved["storage"]:
        raise InputError(f"tune --resume: the study in {out} lives in {saved['storage']}, outside its folder: give "
                         f"--storage {saved['storage']} again to add trials there.")
    values = {**saved, **{k: given[k] for k in RESUMABLE if k in given}, "out": str(out)}
    return TuneSettings.from_dict(values, str(path))


def storage_url(s: TuneSettings) -> str:
    """The study's storage: ``s.storage``, or SQLite in ``s.out``."""
    return s.storage or f"sqlite:///{Path(s.out).resolve() / OUTPUTS['storage']}"


def study_name(s: TuneSettings) -> str:
    """The study's name: ``s.study``, or the arm, data set and budget (``meanfield-T-digits-100ep``)."""
    return s.study or f"{s.guide}{'-T' if s.tune_steps else ''}-{s.data}-{s.epochs}ep"


def sampler_seed(s: TuneSettings) -> int:
    """The TPE sampler's seed: ``s.sampler_seed``, or the CRC-32 of the study's name (so that studies of other arms,
    data sets or budgets draw other trials)."""
    return s.sampler_seed if s.sampler_seed is not None else zlib.crc32(study_name(s).encode())


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
    curve = []

    def measure(epoch: int, row: dict) -> bool:
        if epoch not in measured:
            return False
        curve.append(float(budget_row(model, guide, x_val, c)["log_px"]))
        if trial is not None:
            import optuna

            trial.report(curve[-1], epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"validation log p(x) {curve[-1]:.3f} at epoch {epoch}")
        return False

    fit(model, guide, ds, epochs=s.epochs, batch_size=s.batch_size, progress=False, seed=s.seed, device=s.device,
        local_steps=params.get("local_steps", 1), optim=optim, loss=loss, on_epoch=measure)
    if trial is not None:
        trial.set_user_attr("selected_epoch", sorted(measured)[curve.index(max(curve))])
    return max(curve)


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
    if s.budget_points > len(ds.validation):
        raise InputError(f"tune --budget-points {s.budget_points}: the validation split has {len(ds.validation)}; "
                         f"give {len(ds.validation)} or fewer.")


def tune(ds: data.Dataset, s: TuneSettings):
    """Run the study until it holds ``s.trials`` complete trials; returns the ``optuna.Study``. The folder
    ``s.out`` is created for the default storage (``pyro-vae tune`` also locks and claims it).

    :raises InputError: as :func:`check`.
    """
    import optuna

    check(ds, s)
    if not s.storage:
        Path(s.out).mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name(s), storage=storage_url(s), direction="maximize",
                                load_if_exists=True, pruner=pruner(s))
    # seeded by the trials already there, so that a resumed study does not draw its first trials again
    study.sampler = optuna.samplers.TPESampler(seed=(sampler_seed(s) + len(study.trials)) % 2 ** 32,
                                               n_startup_trials=startup_trials(s))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # a pruned trial counts: it was run
    done = [t for t in study.trials if t.state in finished]
    remaining = s.trials - len(done)
    if remaining > 0:
        stop = optuna.study.MaxTrialsCallback(s.trials, states=finished)
        quiet = _QuietInterrupt()
        logger = logging.getLogger("optuna.study._optimize")  # where Optuna reports a failed trial
        logger.addFilter(quiet)
        try:
            study.optimize(lambda trial: score(ds, s, suggest(trial, s), trial), n_trials=remaining, callbacks=[stop],
                           show_progress_bar=s.progress, catch=(FloatingPointError,))
        finally:
            logger.removeFilter(quiet)
    return study


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
    trial's best measurement, a pruned one's last), the parameters (``lr``, ...), ``seconds`` and ``best_so_far``
    (of the complete trials)."""
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))
    table = table.rename(columns=lambda c: c.removeprefix("params_"))
    table["seconds"] = table.pop("duration").dt.total_seconds()
    table["best_so_far"] = table["value"].where(table["state"] == "COMPLETE").cummax()  # a pruned trial's value is
    # its last measurement, not a score
    return table


def best(study, s: TuneSettings) -> dict:
    """What ``best.json`` holds: the best trial's parameters and value, and how the study was run."""
    trial = study.best_trial
    return {"value": trial.value, "params": trial.params, "trial": trial.number, "study": study.study_name,
            "storage": s.storage or OUTPUTS["storage"], "trials": len(study.trials), "epochs": s.epochs,
            "budget_points": s.budget_points, "split": "validation", "sampler_seed": sampler_seed(s),
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
