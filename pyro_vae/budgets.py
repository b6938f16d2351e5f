"""Budgets of a study, declared before it runs, and what is read at them: pure functions on measured curves.

Usage::

    epochs = measured_epochs(SCHEDULE, 300)            # [0, 1, 2, 3, 5, 7, ..., 200, 300]: where validation is measured
    check(settings, num_validation)                   # one-line InputError before any training
    chosen = choose(curve, test_epochs=[100, 300], budget_seconds=[3.0, 10.0])   # one row per budget, and "selected"
    table = differences(curves, test_epochs, budget_seconds)                    # paired against the normal encoder

A *curve* is one training's validation measurements (:data:`CURVE_COLUMNS`): the epoch, the training seconds
so far (measurement time excluded), the decoder gradient evaluations and the validation ``log_px``, nats per
datapoint. A value quoted at a budget is never a line between two measurements: at an epochs budget E it is
the **best-so-far** of the measurements at epochs <= E (the decoder that validation would have chosen had
training been capped at E), at a seconds budget S the best-so-far of the measurements whose training seconds
are <= S, and the *selected* checkpoint is the best measurement of the whole curve. Every choice reads
validation only; the test split is read afterwards, once, at the checkpoints chosen here.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .errors import InputError

#: the default schedule of validation measurements, log-spaced and dense early (epochs; cut at the study's
#: ``epochs``, which is always measured, as is the untrained decoder at epoch 0)
SCHEDULE = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000)
#: the columns of a validation curve, one row per measurement
CURVE_COLUMNS = ["guide", "seed", "epoch", "seconds", "decoder_gradients", "steps", "log_px", "log_px_mc_se",
                 "elbo_qstar", "elbo_q", "approximation_gap", "amortization_gap"]
#: how little a validation curve may still rise over the last third of its epochs to count as flattened (nats)
FLAT_RISE = 0.05
#: the baseline every arm is compared against
BASELINE = "normal"


def measured_epochs(schedule: Sequence[int], epochs: int) -> list:
    """The epochs at which a training of ``epochs`` epochs is measured: 0 (the untrained decoder), the
    ``schedule``'s epochs up to ``epochs``, and ``epochs`` itself."""
    return sorted({0, *(e for e in schedule if e <= epochs), epochs})


def _increasing(values, name: str, flag: str) -> None:
    values = list(values)
    if any(b <= a for a, b in zip(values, values[1:])):
        raise InputError(f"{name} must be increasing, each value once, got {values}: give {flag} in increasing "
                         f"order.")


def check(s, num_validation: int) -> None:
    """The study's budgets, refused before any training in one line: schedule and budgets increasing,
    ``test_epochs`` among the measured epochs, seconds positive and finite, ``patience`` >= 1 and
    ``budget_points`` no more than the validation split holds (``num_validation``)."""
    _increasing(s.budget_epochs, "budget_epochs", "--budget-epochs")
    _increasing(s.test_epochs or [], "test_epochs", "--test-epochs")
    _increasing(s.budget_seconds, "budget_seconds", "--budget-seconds")
    measured = measured_epochs(s.budget_epochs, s.epochs)
    missing = [e for e in (s.test_epochs or []) if e not in measured or e == 0]
    if missing:
        raise InputError(f"test_epochs {missing} are not measured on validation (the measured epochs are "
                         f"{measured[1:]}): give --test-epochs from --budget-epochs, up to --epochs {s.epochs}.")
    bad = [v for v in s.budget_seconds if not (isinstance(v, (int, float)) and 0 < v < math.inf)]
    if bad:
        raise InputError(f"budget_seconds must be positive and finite, got {bad}: give seconds of training such as "
                         f"--budget-seconds 3 10 30.")
    if s.patience is not None and s.patience < 1:
        raise InputError(f"patience must be at least 1 measurement, got {s.patience}: give --patience 1 or more, or "
                         f"leave it out to train every run to --epochs.")
    if s.budget_points is not None and s.budget_points > num_validation:
        raise InputError(f"budget_points {s.budget_points} is more than the validation split's {num_validation} "
                         f"points: give --budget-points {num_validation} or fewer (or leave it out: all of them).")


def best_so_far(curve: pd.DataFrame, column: str, limit: float) -> Optional[pd.Series]:
    """The measurement of ``curve`` with the highest ``log_px`` among those with ``column`` (``"epoch"`` or
    ``"seconds"``) at or below ``limit`` (the earliest on ties); None when there is none."""
    within = curve[curve[column] <= limit]
    if within.empty:
        return None
    return within.loc[within["log_px"].idxmax()]


def stopped(curve: pd.DataFrame, patience: Optional[int]) -> bool:
    """Whether early stopping ends the training after the last row of ``curve``: ``patience`` measurements
    in a row without a new best validation ``log_px`` (never, when ``patience`` is None)."""
    if patience is None or curve.empty:
        return False
    values = curve.sort_values("epoch")["log_px"].to_numpy()
    best_at = int(np.argmax(values))  # the first occurrence of the maximum
    return len(values) - 1 - best_at >= patience


#: the columns of :func:`choose`'s rows
CHOSEN_COLUMNS = ["budget", "value", "epoch", "seconds", "validation_log_px", "reached"]


def choose(curve: pd.DataFrame, test_epochs: Sequence[int], budget_seconds: Sequence[float]) -> pd.DataFrame:
    """The checkpoints of one training that test is read at: one row per budget (``budget`` ``"epochs"`` or
    ``"seconds"``, its ``value``) and one for the ``"selected"`` checkpoint (the best of the whole curve).

    ``epoch`` and ``seconds`` are the chosen measurement's, ``validation_log_px`` its value; ``reached`` says
    whether training went as far as the budget (False when it ended, by its schedule or early stopping, before
    it: the value is then the best of the whole curve, as it would be under any larger cap).
    """
    last = curve.sort_values("epoch").iloc[-1]
    rows = []
    for kind, column, values in (("epochs", "epoch", test_epochs), ("seconds", "seconds", budget_seconds)):
        for value in values:
            best = best_so_far(curve, column, value)
            rows.append({"budget": kind, "value": float(value), "epoch": int(best["epoch"]),
                         "seconds": float(best["seconds"]), "validation_log_px": float(best["log_px"]),
                         "reached": bool(last[column] >= value)})
    best = curve.loc[curve["log_px"].idxmax()]
    rows.append({"budget": "selected", "value": math.nan, "epoch": int(best["epoch"]),
                 "seconds": float(best["seconds"]), "validation_log_px": float(best["log_px"]), "reached": True})
    return pd.DataFrame(rows, columns=CHOSEN_COLUMNS)


def flattened(curve: pd.DataFrame) -> dict:
    """Whether one validation curve has flattened: ``rise_last_third``, its rise from the last measurement at or
    before two thirds of its epochs to its last one (negative when past its best), and ``flattened`` (a rise
    under :data:`FLAT_RISE`)."""
    curve = curve.sort_values("epoch")
    last = curve.iloc[-1]
    earlier = curve[curve["epoch"] <= last["epoch"] * 2 / 3].iloc[-1]
    rise = float(last["log_px"] - earlier["log_px"])
    return {"rise_last_third": rise, "flattened": bool(rise < FLAT_RISE)}


def paired(values: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per arm, ``value`` minus the baseline arm's on the same seed, over seeds: ``values`` has columns ``guide``,
    ``seed``, ``value``. One row per other arm: ``mean``, ``sd``, ``low`` and ``high`` (the 95% Student-t interval
    of the mean over seeds; NaN with one seed), ``seeds``, and ``resolved`` (the interval excludes 0)."""
    from scipy import stats

    wide = values.pivot_table(index="seed", columns="guide", values="value", sort=False)
    rows = []
    if baseline not in wide:
        return pd.DataFrame(columns=["guide", "mean", "sd", "low", "high", "seeds", "resolved"])
    for guide in wide.columns.drop(baseline):
        d = (wide[guide] - wide[baseline]).dropna()
        n = len(d)
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
        low, high = d.mean() - half, d.mean() + half
        rows.append({"guide": guide, "mean": d.mean(), "sd": d.std(ddof=1) if n > 1 else math.nan, "low": low,
                     "high": high, "seeds": n, "resolved": bool(n > 1 and (low > 0 or high < 0))})
    return pd.DataFrame(rows)


#: the columns of :func:`differences`
DIFFERENCE_COLUMNS = ["guide", "split", "estimator", "budget", "value", "mean", "sd", "low", "high", "seeds",
                      "resolved"]
#: the log p(x) estimators a test read may hold (its column -> the ``estimator`` of :func:`differences`): the
#: importance-weighted one always, AIS where the study ran it (``ais_steps``)
ESTIMATORS = {"log_px": "iwae", "log_px_ais": "ais"}


def of_estimator(differences: pd.DataFrame, estimator: str = "iwae") -> pd.DataFrame:
    """The rows of a :func:`differences` table read with ``estimator`` (``"iwae"`` or ``"ais"``); a table written
    before the ``estimator`` column was added holds importance-weighted rows only."""
    if "estimator" not in differences:
        return differences if estimator == "iwae" else differences.iloc[:0]
    return differences[differences["estimator"] == estimator]


def seconds_grid(curves: pd.DataFrame, budget_seconds: Sequence[float], points: int = 40) -> list:
    """The training seconds at which the validation curves are compared: the declared ``budget_seconds`` and
    ``points`` log-spaced values from the first positive measurement to the last (no value between two of a
    curve's measurements is interpolated: each is read as the best-so-far at or below it)."""
    positive = curves.loc[curves["seconds"] > 0, "seconds"]
    grid = set(float(v) for v in budget_seconds)
    if len(positive):
        grid |= set(np.geomspace(positive.min(), positive.max(), points).tolist())
    return sorted(grid)


def differences(curves: pd.DataFrame, tests: Optional[pd.DataFrame] = None, budget_seconds: Sequence[float] = (),
                baseline: str = BASELINE) -> pd.DataFrame:
    """Each arm's paired difference from the ``baseline`` arm's decoder over seeds (:func:`paired`), nats per
    datapoint, one row per (arm, split, budget, value) (:data:`DIFFERENCE_COLUMNS`):

    - ``split`` ``"validation"``: the validation curves (``curves``, :data:`CURVE_COLUMNS`) read as best-so-far at
      every measured epoch (``budget`` ``"epochs"``) and on :func:`seconds_grid` (``"seconds"``);
    - ``split`` ``"test"``: ``tests`` (columns ``guide``, ``seed``, ``budget``, ``value``, ``log_px``; the study's
      ``test_at_budgets.csv``) at each pre-registered budget and at the ``"selected"`` checkpoints.

    ``estimator`` says which log p(x) was compared: ``"iwae"`` (importance-weighted: every validation row, and the
    test reads' ``log_px``), and ``"ais"`` for the test reads' ``log_px_ais`` where ``tests`` has it
    (:data:`ESTIMATORS`). Each estimator is paired with itself alone.
    """
    rows = []

    def add(values, split, budget, value, estimator="iwae"):
        for _, d in paired(values, baseline).iterrows():
            rows.append({"split": split, "estimator": estimator, "budget": budget, "value": value, **d.to_dict()})

    groups = list(curves.groupby(["guide", "seed"], sort=False))
    for budget, column, grid in (("epochs", "epoch", sorted(curves["epoch"].unique())),
                                 ("seconds", "seconds", seconds_grid(curves, budget_seconds))):
        for limit in grid:
            values = [{"guide": g, "seed": s, "value": best_so_far(c, column, limit)["log_px"]}
                      for (g, s), c in groups]
            add(pd.DataFrame(values), "validation", budget, float(limit))
    if tests is not None:
        for column, estimator in ESTIMATORS.items():
            if column not in tests or tests[column].isna().all():
                continue
            for (budget, value), part in tests.groupby(["budget", "value"], sort=False, dropna=False):
                add(part[["guide", "seed", column]].rename(columns={column: "value"}), "test", budget, value,
                    estimator)
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)
