"""Arms tuned apart, compared together: several ``pyro-vae compare`` studies read as one.

A tuned comparison trains each arm with the settings its own tuning chose (its ``lr``, ``local_lr``, T, ...), so
each arm is a study of its own (``compare --guides meanfield --lr ... --local-steps 10``). :func:`join` reads
the finished studies' tables and pairs every arm with the baseline arm's decoder on the same seeds, as
:func:`pyro_vae.compare.compare` does inside one study::

    joined = join(["runs/study/compare-normal", "runs/study/compare-meanfield"], out="docs/q3")
    joined.differences     # each arm minus the normal encoder's decoder, paired over seeds, IWAE and AIS
    join({"normal": "runs/study/compare-normal", "normal-T": "runs/study/compare-normal-T"})  # arms named

Given a list, each training keeps its study's label (``normal``, ``meanfield T=5``); given a mapping from arm
names to folders, each study must hold one training label, and its rows take the arm's name instead (two arms
that trained the same guide with other settings, such as a tuned T that came out 1).

It reads only each study's own small files (:data:`TABLES` and ``config.json``), so it runs on copies of them
(a study committed without its run folders). The studies must measure alike: every setting but those an arm may
choose (:data:`ARM_SETTINGS`) is the same in all of them, and they share their seeds; otherwise one line says
which setting differs, before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import pandas as pd

from . import budgets, folders
from .compare import RESUMABLE, saved_settings
from .errors import InputError

#: the settings an arm of a joined comparison may choose for itself (what its tuning chose); besides these, only how
#: its study ran (:data:`pyro_vae.compare.RESUMABLE`: workers, progress, device, out) may differ between the studies
ARM_SETTINGS = ("guides", "lr", "local_lr", "local_steps", "encoder_steps", "refine_steps", "refine_lr", "num_flows",
                "encoder_widths")
#: the study tables a join reads (``compare``'s names) and writes, concatenated over the arms
TABLES = ("results.csv", "test_at_budgets.csv", "budget.csv", "cost.csv", "selection.csv")


@dataclass
class Joined:
    """The tables of the joined studies (nats per datapoint), each with an ``arm`` column naming the study it came
    from (its folder's name) beside ``guide`` (the training's label): ``results``, ``tests``, ``budget``,
    ``cost`` and ``selection`` as :class:`pyro_vae.compare.Result` has them; ``differences``
    (:func:`pyro_vae.budgets.differences` over all of them); ``settings``: the shared settings, and per arm what it
    chose (``arms``)."""

    results: pd.DataFrame
    tests: pd.DataFrame
    budget: pd.DataFrame
    cost: pd.DataFrame
    selection: pd.DataFrame
    differences: pd.DataFrame
    settings: dict


def _read_study(folder: Path) -> tuple:
    config = folder / "config.json"
    try:
        settings = saved_settings(folder)
    except InputError:
        raise InputError(f"join: {folder} holds no compare study (no config.json of `pyro-vae compare`): give the "
                         f"folders that `pyro-vae compare --out` wrote.") from None
    missing = [name for name in TABLES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"join: the study in {folder} has no {missing[0]} (not finished?): run `pyro-vae compare "
                         f"--resume --config {config}` to finish it.")
    tables = {name: pd.read_csv(folder / name).assign(arm=folder.name) for name in TABLES}
    return settings, tables


def join(studies: Union[Sequence, Mapping], out=None, baseline: str = budgets.BASELINE,
         overwrite: bool = False) -> Joined:
    """Read the finished compare studies in the folders ``studies`` (or arm name -> folder) as one comparison;
    with ``out``, write its tables (:data:`TABLES`, ``differences.csv``, ``config.json``) and figures
    (``differences.png``, with AIS ``differences_ais.png``, and ``budget.png``) there (a new folder, or with
    ``overwrite`` one join wrote).

    Refused in one line, before anything is written: fewer than two studies, a folder that is not a finished
    study, settings that differ beyond :data:`ARM_SETTINGS`, other seeds, a training label in two studies (or, with
    arm names, a study of several), or no ``baseline`` arm.
    """
    names = list(studies) if isinstance(studies, Mapping) else None
    folders_in = [Path(studies[n]) for n in names] if names else [Path(s) for s in studies]
    if len(folders_in) < 2:
        raise InputError(f"join: give two or more compare studies to compare (got {len(folders_in)}).")
    if out is not None:
        target = Path(out).resolve()
        for folder in folders_in:
            if target == folder.resolve() or folder.resolve() in target.parents:
                raise InputError(f"join: --out {out} is inside the study {folder} it reads: give another folder.")
    read = [_read_study(f) for f in folders_in]
    if names:
        for name, folder, (_, tables) in zip(names, folders_in, read):
            held = list(tables["selection.csv"]["guide"].unique())
            if len(held) != 1:
                raise InputError(f"join: the arm {name!r} names {folder}, which holds {len(held)} trainings "
                                 f"({', '.join(map(str, held))}): name an arm of one training, or pass a list.")
            for table in tables.values():
                table["guide"] = name
    first, free = read[0][0], set(ARM_SETTINGS) | set(RESUMABLE)
    for folder, (settings, _) in zip(folders_in[1:], read[1:]):
        differ = [k for k in sorted(set(first) | set(settings)) if k not in free and first.get(k) != settings.get(k)]
        if differ:
            k = differ[0]
            raise InputError(f"join: {folders_in[0]} and {folder} were measured differently ({k} {first.get(k)!r} "
                             f"there, {settings.get(k)!r} here): join studies run with the same settings but "
                             f"those an arm chooses ({', '.join(ARM_SETTINGS)}).")
    shared = {k: v for k, v in first.items() if k not in free}
    labels = {}
    for folder, (_, tables) in zip(folders_in, read):
        for label in tables["selection.csv"]["guide"].unique():
            if label in labels:
                raise InputError(f"join: the training {label!r} is in {labels[label]} and in {folder}: each arm's "
                                 f"trainings must have labels of their own.")
            labels[label] = folder
    if baseline not in labels:
        raise InputError(f"join: no study has the baseline arm {baseline!r} (arms: {', '.join(labels)}): add the "
                         f"study that trains it.")
    frames = {name: pd.concat([tables[name] for _, tables in read], ignore_index=True) for name in TABLES}
    differences = budgets.differences(frames["budget.csv"], frames["test_at_budgets.csv"],
                                      shared.get("budget_seconds") or (), baseline)
    arms = {name: {k: settings.get(k) for k in ARM_SETTINGS}
            for name, (settings, _) in zip(names or [f.name for f in folders_in], read)}
    joined = Joined(results=frames["results.csv"], tests=frames["test_at_budgets.csv"], budget=frames["budget.csv"],
                    cost=frames["cost.csv"], selection=frames["selection.csv"], differences=differences,
                    settings={**shared, "arms": arms})
    if out is not None:
        write(joined, out, overwrite)
    return joined


def write(joined: Joined, out, overwrite: bool = False) -> list:
    """:func:`join`'s tables and figures into the folder ``out``; returns their names."""
    from . import plots

    out = Path(out)
    data_name = joined.settings.get("data", "")
    seeds = joined.settings.get("seeds")
    note = f"{seeds} seeds" if seeds else "seeds"
    tables = {"results.csv": joined.results, "test_at_budgets.csv": joined.tests, "budget.csv": joined.budget,
              "cost.csv": joined.cost, "selection.csv": joined.selection, "differences.csv": joined.differences}
    with folders.writer(out, "join"):
        folders.claim(out, "join", overwrite)
        clock = "each study's clock, measurements excluded"
        figures = {"budget.png": plots.budget_curves(joined.budget, seconds_note=clock,
                                                     title=f"Validation log p(x) during training on {data_name}, "
                                                           f"each arm tuned")}
        for estimator in ("iwae", "ais"):
            if len(budgets.of_estimator(joined.differences, estimator).query("split == 'test'")):
                name = "differences.png" if estimator == "iwae" else "differences_ais.png"
                figures[name] = plots.differences(
                    joined.differences, estimator=estimator, seconds_note=clock,
                    title=f"Each tuned arm's decoder against the normal encoder's on {data_name}, paired over "
                          f"{note} (test: {'AIS' if estimator == 'ais' else 'importance-weighted'})")
        for name, table in tables.items():
            folders.write_csv(table, out / name)
        folders.write_text(out / "config.json", json.dumps(joined.settings, indent=2))
        for name, fig in figures.items():
            plots.save(fig, out / name)
    return list(tables) + ["config.json"] + list(figures)
