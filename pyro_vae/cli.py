"""The ``pyro-vae`` command line: ``train``, ``compare``, ``evaluate``, ``sample``, ``tune``, ``join``, ``guides``,
``datasets``.

Usage::

    pyro-vae train --data digits --guide mvn --z-dim 8 --epochs 50 --out runs/mvn
    pyro-vae evaluate runs/mvn runs/normal        # their gaps, side by side
    pyro-vae sample runs/mvn --n 64               # runs/mvn/samples.png
    pyro-vae compare --out runs/compare           # the amortization question on digits
    pyro-vae tune --guide meanfield --tune-steps --trials 20 --out runs/tune-mf   # an arm tuned on validation
    pyro-vae join normal=runs/compare-normal meanfield=runs/compare-mf --out runs/joined   # arms tuned apart
    pyro-vae guides                               # the guide registry

The only module that parses arguments or prints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Optional

import pandas as pd
import pyro
import torch

import guides

from . import compare, data, folders, measure, report, runs, settings
from .checkpoint import CHECKPOINT, CheckpointWarning, load as load_checkpoint
from .errors import InputError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (the problem and where the fix is) and exit status 2, and a
    negative number in any notation (``-1e-3``) is a value, never taken for a flag."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._negative_number_matcher = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^-inf$|^-nan$")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{settings.shown(text)} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{settings.shown(value)} is {'not positive' if low == 1 else 'negative'}: "
                                         f"give an integer >= {low}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer_at_least(text, 0)


def seed_value(text: str) -> int:
    """argparse type: a seed, an integer in [0, 2**32)."""
    value = _integer_at_least(text, 0)
    if value >= settings.SEED_BOUND:
        raise argparse.ArgumentTypeError(f"{settings.shown(value)} is not below 2**32 (seeds lie in [0, 2**32))")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{settings.shown(text)} is not a number") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{value} is not a finite positive number")
    return value


def device_name(text: str) -> str:
    """argparse type: a torch device that exists on this machine and holds values."""
    problem = settings.device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")
    return text


#: what each settings kind becomes on the command line
TYPES = {"int": int, "int>=0": nonnegative_int, "int>=1": positive_int, "seed": seed_value,
         "float>0": positive_float, "str": str, "device": device_name}


def add_settings(p: argparse.ArgumentParser, cls) -> None:
    """One flag per field of the settings class ``cls`` (:mod:`pyro_vae.settings`): ``--z-dim`` for ``z_dim``.

    A flag that is not given leaves no trace in the parsed namespace (``argparse.SUPPRESS``), so that
    :func:`pyro_vae.settings.resolve` knows what the command line set, and a config file or ``--quick`` can
    fill the rest; the help shows each default.
    """
    for f in cls.options():
        meta = f.metadata
        flags = meta["flags"] or (f"--{f.name.replace('_', '-')}",)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = {"dest": f.name, "default": argparse.SUPPRESS}
        if meta["kind"] == "bool":
            kw.update(action="store_false" if meta["negate"] else "store_true", help=meta["help"])
            # and the flag that undoes it, for a value a --config file set: --distributed / --no-distributed
            undo = [f"--{f.name.replace('_', '-')}" if meta["negate"] else
                    f"--{flag[5:]}" if flag.startswith("--no-") else f"--no-{flag[2:]}" for flag in flags]
            p.add_argument(*undo, dest=f.name, default=argparse.SUPPRESS,
                           action="store_true" if meta["negate"] else "store_false",
                           help=f"undo {flags[0]} (as a --config file set it)")
        else:
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            kw.update(type=TYPES[meta["kind"]], help=f"{meta['help']} (default: {shown})")
            if meta["many"]:
                kw["nargs"] = "+"
            if meta["choices"] is not None:
                kw["choices"] = list(meta["choices"]())
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
        p.add_argument(*flags, **kw)


def _config_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help=f"read the settings from FILE ({what}); flags given here win; a file never sets --out")


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="pyro-vae", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train one model and guide")
    add_settings(t, settings.TrainSettings)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run (or other pyro-vae output) in --out; without it, or --resume, a folder "
                        "that holds anything is refused")
    _config_flag(t, "JSON such as the config.json a run wrote, or YAML")

    c = sub.add_parser("compare", help="the amortization question: train with each guide, decompose the gaps")
    add_settings(c, settings.CompareSettings)
    c.add_argument("--quick", action="store_true",
                   help=f"a small budget for smoke tests (about 20 s on digits); it sets only what no flag and no "
                        f"--config set: {', '.join(f'{k}={v}' for k, v in settings.QUICK.items())}")
    _config_flag(c, "JSON such as the config.json a study wrote, or YAML")
    c.add_argument("--overwrite", action="store_true",
                   help="replace the study (or other pyro-vae output) in --out; without it, or --resume, a folder "
                        "that holds anything is refused")
    c.add_argument("--resume", action="store_true",
                   help="continue the study in --out with its saved settings (finished runs are kept, unfinished ones "
                        "continue from their checkpoints), or join it from another process or machine sharing the "
                        "folder: each process takes the next run no other holds")

    e = sub.add_parser("evaluate", help="the gap decomposition of trained runs, side by side")
    e.add_argument("runs", nargs="+", metavar="RUN", help="folders written by pyro-vae train")
    add_settings(e, settings.EvaluateSettings)
    _config_flag(e, "JSON or YAML with evaluate's settings: split, n_eval, families, ...")

    m = sub.add_parser("sample", help="samples and reconstructions from a trained run")
    m.add_argument("run", metavar="RUN", help="a folder written by pyro-vae train")
    m.add_argument("--n", type=positive_int, default=64,
                   help="samples (and reconstructions) to draw (default: 64); for image data at most the test split, "
                        "whose images are reconstructed")
    m.add_argument("--seed", type=seed_value, default=0, help="seeds the draws (default: 0)")
    m.add_argument("--at", default=None, metavar="selected|EPOCH",
                   help="for a run of a study: draw from the weights it kept at 'selected' (chosen on validation) or "
                        "at an epoch a budget chose (default: the last epoch)")
    m.add_argument("--out", default=None,
                   help="output file: .png, .pdf or .svg for image data, .csv otherwise; a folder gets samples.png or "
                        "samples.csv in it (default: RUN)")

    u = sub.add_parser("tune", help="tune one arm's learning rates (and T) on the validation split with Optuna")
    add_settings(u, settings.TuneSettings)
    u.add_argument("--resume", action="store_true",
                   help="add trials to the study in --out, with its saved settings (--trials: the total to reach)")
    u.add_argument("--overwrite", action="store_true", help="replace the study (or other pyro-vae output) in --out")
    _config_flag(u, "JSON such as the config.json a study wrote, or YAML")

    j = sub.add_parser("join", help="arms tuned apart (one compare study each) paired as one comparison")
    j.add_argument("studies", nargs="+", metavar="[ARM=]STUDY",
                   help="folders written by pyro-vae compare, each of one arm; ARM=STUDY names the arm (all or none "
                        "named: two studies of one guide, such as a tuned T that came out 1, need names)")
    j.add_argument("--out", required=True, help="the folder of the joined tables and figures")
    j.add_argument("--baseline", default="normal",
                   help="the arm every other is paired with (default: normal)")
    j.add_argument("--overwrite", action="store_true", help="replace what an earlier join wrote in --out")

    for command in IMPORTING:
        sub.choices[command].add_argument(
            "--import", action="append", dest="imports", metavar="MODULE", default=[],
            help="import MODULE first (repeatable), so that the guides it registers can be named by --guide; a run "
                 "of such a guide needs it again to be continued, evaluated or sampled")
    sub.add_parser("guides", help="list the guide registry")
    sub.add_parser("datasets", help="list the data sets")
    return top


def cmd_train(given: dict, config: Optional[dict], resume: bool = False, config_source: str = "",
              overwrite: bool = False) -> None:
    """``pyro-vae train``: the settings are the defaults, then ``config``, then the flags ``given``; with ``resume``,
    :func:`pyro_vae.runs.train` keeps the run's saved settings but for those it lets a resumed run change."""
    cfg = settings.resolve(settings.TrainSettings, given, config, config_source=config_source).to_dict()
    cfg["resume"], cfg["overwrite"] = resume, overwrite
    saved = runs.saved_config(cfg["out"], "--resume") if resume else {}  # what --resume keeps
    if resume:
        settings.refuse_changes_on_resume("train", cfg["out"], saved, {**(config or {}), **given}, runs.RESUMABLE,
                                          held="run", made="trained")
    guide = saved.get("guide", cfg["guide"])
    if cfg["rows_on_disk"] and guides.get(guide).amortized:
        raise InputError(f"--rows-on-disk keeps per-datapoint rows in files, and the {guide} guide has none: "
                         f"drop it, or train a per-datapoint guide (meanfield, local_mvn, local_flow).")
    if torch.device(cfg["device"]).type != "cpu":
        if cfg["rows_on_disk"]:
            raise InputError("--rows-on-disk keeps the rows in memory-mapped files on the CPU: drop it with "
                             "--device cuda.")
        if saved.get("rows_on_disk"):
            raise InputError(f"the run in {cfg['out']} keeps its rows in memory-mapped files on the CPU "
                             f"({saved['rows_on_disk']}), and --resume continues it there: drop --device "
                             f"{cfg['device']}.")
    if not cfg["distributed"]:
        return _train(cfg)
    from . import distributed

    if not distributed.launched_by_torchrun():  # before any work
        raise distributed.DistributedError(f"--distributed runs in the processes torchrun starts: launch with "
                                           f"`{distributed.LAUNCH}`, or drop --distributed.")
    if cfg["local_steps"] != 1:
        raise distributed.DistributedError("--distributed trains with plain SVI steps: drop --local-steps.")
    with distributed.process_group(cfg["device"]):
        _train(cfg)
    distributed.end_worker()


def _train(cfg: dict) -> None:
    from . import distributed, plots

    run = runs.train(cfg, resume=cfg["resume"], overwrite=cfg["overwrite"])
    if not distributed.is_main():
        return
    plots.save(plots.learning_curves(run.history.assign(guide=run.config["guide"]),
                                     title=f"{run.config['guide']} guide on {run.config['data']}"),
               run.path / "learning_curves.png")
    last = run.history.iloc[-1]
    test = f"test -ELBO {last.test_loss:.3f}" if pd.notna(last.test_loss) else \
        "no test -ELBO (a per-datapoint guide has no q for test points)"
    print(f"{run.config['guide']} on {run.config['data']}: epoch {int(last.epoch)}, train -ELBO {last.train_loss:.3f}, "
          f"{test} nats per datapoint; wrote {run.path}/{{config.json, history.csv, {CHECKPOINT}, "
          f"learning_curves.png}}")


def cmd_compare(s: settings.CompareSettings, overwrite: bool = False, resume: bool = False,
                given: Optional[dict] = None) -> None:
    """``pyro-vae compare``: a new study in ``--out``, or with ``resume`` the one there continued (or joined by
    another process) with its saved settings, but for those :data:`pyro_vae.compare.RESUMABLE` that ``given``
    sets."""
    out = Path(s.out)
    if resume:
        saved = compare.saved_settings(out)
        settings.refuse_changes_on_resume("compare", out, saved, given or {}, compare.RESUMABLE)
        s = settings.CompareSettings.from_dict(
            {**saved, **{k: v for k, v in (given or {}).items() if k in compare.RESUMABLE}, "out": str(out)},
            str(out / "config.json"))
    ds = runs.load_data(s.to_dict(), download=not resume)
    result = compare.compare(ds, s, out, resume=resume, overwrite=overwrite)  # checks everything before any work
    report_study(result, s, out)


def report_study(result, s: settings.CompareSettings, out: Path) -> None:
    """What ``compare`` prints: the gaps at the selected checkpoints, the cost, and the paired test differences
    at the pre-registered budgets."""
    if s.seeds > 1:
        summary = measure.across_seeds(result.table.drop(columns=["epoch", "seconds"]))
        print(f"at the selected checkpoints, means over {s.seeds} seeds")
        print(format_table(summary))
        spread = summary[["guide", "split", *[c for c in summary if c.endswith("_seed_sd")]]]
        print(f"\nstandard deviations across the {s.seeds} seeds")
        print(format_table(spread.rename(columns=lambda c: c.removesuffix("_seed_sd")), with_se=False))
    else:
        print("at the selected checkpoints (best validation log p(x))")
        print(format_table(result.table))
    print()
    print(result.cost.drop(columns="run").to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    test = result.differences[result.differences["split"] == "test"]
    if len(test):
        print(f"\ntest log p(x) minus the normal encoder's decoder, paired over {s.seeds} seed"
              f"{'s' if s.seeds > 1 else ''} (95% interval), at each pre-registered budget:")
        print(format_differences(test))
    if len(result.encoder_widths):
        widths = result.encoder_widths.groupby(["split", "width", "retrained"], sort=False).mean(numeric_only=True)
        print("\nencoder widths on the normal guide's decoder (means over seeds):")
        print(widths[["encoder_params", "elbo_q", "amortization_gap"]].to_string(float_format=lambda v: f"{v:.3f}"))
    written = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"\nwrote {out}/{{{', '.join(written)}}} and a run folder per training in {out}/runs")


def format_differences(test: pd.DataFrame) -> str:
    """Test differences (:func:`pyro_vae.budgets.differences`' test rows) as one line per arm and budget."""
    view = test.assign(at=[report.budget_name(b, v) for b, v in zip(test["budget"], test["value"])])
    # with AIS a study pairs each estimator with itself: say which row is which
    by = ["estimator"] if "estimator" in view and view["estimator"].nunique() > 1 else []
    return view[["guide", *by, "at", "mean", "low", "high", "seeds", "resolved"]].to_string(
        index=False, float_format=lambda v: f"{v:+.3f}")


def format_table(table: pd.DataFrame, labels=("guide", "split"), with_se: bool = True) -> str:
    """The headline table: means in nats per datapoint, log p(x) with its standard error (when ``with_se``)."""
    cols = [*labels, "log_px", "log_px_exact", "log_px_ais", "elbo_qstar_normal", "elbo_qstar_mvn",
            "elbo_qstar_flow", "elbo_q", "approximation_gap", "approximation_gap_flow", "amortization_gap",
            "optimization_gap"]
    view = table[[c for c in cols if c in table]].copy()
    if with_se:
        view.insert(len(labels) + 1, "log_px_se", table["log_px_se"])
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def cmd_tune(given: dict, config: Optional[dict], resume: bool = False, overwrite: bool = False,
             config_source: str = "") -> None:
    """``pyro-vae tune``: a new study in ``--out``, or with ``resume`` more trials of the one there."""
    from . import tune

    s = settings.resolve(settings.TuneSettings, given, config, config_source=config_source)
    if resume:
        s = tune.resumed_settings(Path(s.out), given, config)
    tune.check_study(s, resume)  # the URL, the database and the study in it, only read, before any work
    ds = runs.load_data(s.to_dict(), download=not resume, folder=Path(s.out) if resume else None)
    runs.check_fits({**s.to_dict(), "rows_on_disk": None}, ds)
    tune.check(ds, s)
    with folders.writer(s.out, "tune") as out:
        if not resume:
            folders.claim(out, "tune", overwrite)
        study = tune.open_study(s, resume, exclusive=True)  # before config.json: a refusal leaves the folder as it was
        folders.write_text(out / "config.json", json.dumps(s.to_dict(), indent=2))
        study = tune.tune(ds, s, study)
        written = tune.write(study, s, out)
    chosen = tune.best(study, s)
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen["params"].items())
    how = (f"mean over {chosen['rescored'][0]['seeds']} seeds of the {len(chosen['rescored'])} best re-scored"
           if chosen["rescored"] else "its seed")
    print(f"{study.study_name}: best of {len(tune.finished(study))} trials, validation log p(x) {chosen['value']:.3f} "
          f"nats per datapoint ({how}; trial {chosen['trial']}: {shown}); wrote {out}/{{config.json, "
          f"{', '.join(written)}}}" + ("" if s.storage else f", the study in {out}/{tune.OUTPUTS['storage']}"))


EVALUATION = {"table": "evaluation.csv", "points": "evaluation_per_point.csv", "figure": "evaluation_gaps.png"}


def cmd_evaluate(paths: List[str], s: settings.EvaluateSettings) -> None:
    """``pyro-vae evaluate``: each run's gap decomposition, written into it, and with several runs side by side into
    ``--out``. It holds each run as a reader with its outputs lock (:func:`pyro_vae.folders.reader`) and ``--out`` as
    a writer: two evaluates of one run, or into one ``--out``, never interleave (the second is refused), and a run
    being replaced is not read. The files are written at the end, all or none (:func:`pyro_vae.folders.all_or_none`);
    the tables record the epoch of the weights read (a run still training is read at its last checkpoint)."""
    from . import plots

    cfg = s.to_dict()
    out = Path(cfg["out"])
    if len(paths) > 1:  # where the combined table goes, checked before any work
        check_evaluation_folder(out)
    for path in paths:
        if Path(path).is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"evaluate writes {EVALUATION['table']} into each run, and {path} is not writable: make "
                             f"it writable, or copy the run.")
    at = runs.kept_weights(cfg["at"])
    with contextlib.ExitStack() as hold:
        unique = {os.path.realpath(path): path for path in paths}
        for real in sorted(unique):  # in one order: two evaluates of the same runs never hold one each
            hold.enter_context(folders.reader(unique[real], "evaluate", writes=True))
        loaded = [runs.load_run(path, device=cfg["device"], at=at) for path in paths]  # every run checked first
        names = [run.name for run in loaded]
        if len(set(names)) < len(names):
            raise InputError(f"evaluate: two runs share a folder name ({', '.join(names)}); tables label runs by "
                             f"it.")
        flows = ["flow"] if any(run.guide.family == "flow" for run in loaded) else []
        families = cfg["families"] or ["normal", "mvn", *flows]
        measured = settings.CompareSettings(n_eval=cfg["n_eval"], ll_samples=cfg["ll_samples"],
                                            ais_steps=cfg["ais_steps"], ais_leapfrog=cfg["ais_leapfrog"],
                                            elbo_samples=cfg["elbo_samples"],
                                            qstar_steps=cfg["qstar_steps"], qstar_lr=cfg["qstar_lr"],
                                            qstar_starts=cfg["qstar_starts"], families=families,
                                            device=cfg["device"], progress=not cfg["no_progress"])
        for run in loaded:
            if run.guide.family not in families:
                raise InputError(f"evaluate: {run.name}'s guide ({run.config['guide']}) is of the "
                                 f"{run.guide.family!r} family: add it to --families, since its gaps are measured "
                                 f"against q* of that family.")
        if len(loaded) > 1:
            hold.enter_context(folders.writer(out, "evaluate"))
        tables, points = [], []
        with folders.all_or_none():  # a failure part way (a full disk, Ctrl-C) replaces no file
            for run in loaded:
                pyro.set_rng_seed(cfg["seed"])
                summary, per_point = measure.evaluate(run.model, run.guide, run.data, measured, cfg["split"])
                label = {"run": run.name, "guide": run.config["guide"], "epoch": run.epoch}
                summary, per_point = summary.assign(**label), per_point.assign(**label)
                folders.write_csv(summary[[*label, *summary.columns[:-len(label)]]], run.path / EVALUATION["table"])
                folders.write_csv(per_point, run.path / EVALUATION["points"], index=True)
                plots.save(plots.gap_bars(per_point, title=f"Gaps of {run.name} ({run.config['guide']} guide)",
                                          x="run"), run.path / EVALUATION["figure"])
                tables.append(summary)
                points.append(per_point)
            table = pd.concat(tables, ignore_index=True)
            if len(loaded) > 1:
                folders.write_csv(table[[*label, *table.columns[:-len(label)]]], out / EVALUATION["table"])
                plots.save(plots.gap_bars(pd.concat(points), title="Gaps of " + ", ".join(names), x="run"),
                           out / EVALUATION["figure"])
    print(format_table(table, labels=("run", "guide", "epoch", "split")))
    written = [f"{run.path}/{{{', '.join(EVALUATION.values())}}}" for run in loaded]
    if len(loaded) > 1:
        written.append(f"{out}/{{{EVALUATION['table']}, {EVALUATION['figure']}}}")
    print("\nwrote " + "; ".join(written))


def join_arms(given: List[str]):
    """The studies ``pyro-vae join`` was given: a list of folders, or, where each is ARM=FOLDER, arm -> folder."""
    named = ["=" in s for s in given]
    if any(named) and not all(named):
        plain = given[named.index(False)]
        raise InputError(f"join: {plain} has no arm name where the others have one: name every study (ARM=FOLDER) "
                         f"or none.")
    if not any(named):
        return list(given)
    arms = {}
    for s in given:
        name, folder = s.split("=", 1)
        if not name or not folder:
            raise InputError(f"join: {s!r} is not ARM=FOLDER: give the arm's name and its study's folder.")
        if name in arms:
            raise InputError(f"join: the arm {name!r} is named twice: give each arm once.")
        arms[name] = folder
    return arms


def cmd_join(given: List[str], out: str, baseline: str, overwrite: bool) -> None:
    from .join import join

    joined = join(join_arms(given), out=out, baseline=baseline, overwrite=overwrite)
    test = joined.differences[joined.differences["split"] == "test"]
    for estimator, rows in test.groupby("estimator", sort=False):
        print(f"test log p(x) ({estimator}) minus the {baseline} arm's decoder, paired over the seeds (95% interval):")
        print(format_differences(rows))
        print()
    written = sorted(p.name for p in Path(out).iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"wrote {out}/{{{', '.join(written)}}}")


def check_evaluation_folder(out: Path) -> None:
    """``evaluate --out``: a folder (or none yet) that holds no run or study, and that can be written."""
    if out.exists() and not out.is_dir():
        raise InputError(f"evaluate --out {out} is a file: give a folder for {EVALUATION['table']} and "
                         f"{EVALUATION['figure']}.")
    held = folders.contents(out)
    if any(name in held for name in ("config.json", "checkpoint.pt", "results.csv")):
        raise InputError(f"evaluate --out {out} holds {folders.describe(held)}: give a folder of its own for the "
                         f"combined table.")
    existing = folders.nearest_existing(out)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"evaluate --out {out} cannot be written ({existing} is not writable): give another folder.")


#: the files ``sample --out`` may write, by kind of data
SAMPLE_SUFFIXES = {True: (".png", ".pdf", ".svg"), False: (".csv",)}
#: rows of samples drawn and written at a time (non-image data): memory stays constant whatever --n
SAMPLE_BATCH = 4096


def sample_path(run_path: Path, out: Optional[str], image: bool) -> Path:
    """Where ``sample`` writes: ``out``, or ``samples.png`` / ``samples.csv`` in the folder ``out`` (or the run)."""
    default = "samples.png" if image else "samples.csv"
    if out is None:
        return run_path / default
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        return path / default
    if path.suffix.lower() not in SAMPLE_SUFFIXES[image]:
        kinds = " or ".join(SAMPLE_SUFFIXES[image])
        raise InputError(f"sample --out {out}: the samples of {'image' if image else 'non-image'} data are written "
                         f"as {kinds}: give a file name ending so, or a folder.")
    return path


def cmd_sample(cfg: dict) -> None:
    """``pyro-vae sample``: reads the run as a reader (:func:`pyro_vae.folders.reader`: refused while the run is
    replaced, and no ``--overwrite`` replaces it meanwhile); its one file goes into place whole, by a rename."""
    with folders.reader(cfg["run"], "sample"):
        _sample(cfg)


def _sample(cfg: dict) -> None:
    from . import plots

    run = runs.load_run(cfg["run"], at=runs.kept_weights(cfg["at"]))
    image = runs.is_image(run.data)
    out = sample_path(run.path, cfg["out"], image)
    n = cfg["n"]
    if image and n > len(run.data.test):
        raise InputError(f"sample --n {n}: the figure shows each sample beside a test image and its reconstruction, "
                         f"and the test split has {len(run.data.test)}: give --n {len(run.data.test)} or fewer.")
    if not image:  # written as it is drawn: the file is the only thing that grows
        width = run.model.z_dim + run.data.x_dim
        need, free = 14 * n * width, shutil.disk_usage(folders.nearest_existing(out.parent)).free
        if need > free:
            raise InputError(f"sample --n {n}: {n} rows of {width} numbers take about {need / 2**30:.3g} GiB and "
                             f"{out.parent} has {free / 2**30:.3g} GiB free: give a smaller --n.")
    pyro.set_rng_seed(cfg["seed"])
    if image:
        x = run.data.test[:n]
        panels = {"samples: E[x | z], z ~ p(z)": run.model.sample_mean(n).cpu(), "test images": x.cpu(),
                  "reconstructions: E[x | z = mean of q(z | x)]": runs.reconstruct(run, x).cpu()}
        plots.save(plots.image_panels(panels, run.data.image_shape, title=f"{run.name}: samples and reconstructions"),
                   out)
    else:
        def write(f):
            for start in range(0, n, SAMPLE_BATCH):
                runs.samples(run, min(SAMPLE_BATCH, n - start)).to_csv(f, index=False, header=start == 0)
        folders.write_file(out, write, mode="w")
    print(f"wrote {out}")


#: what each command keeps when writing fails part way (a full disk), and how to go on
KEPT_ON_FAILED_WRITE = {
    "train": "the last complete checkpoint is kept, and train --resume continues from it",
    "compare": "the study keeps every finished training (and each one's last checkpoint), and compare --resume "
               "continues it",
    "tune": "the study keeps its finished trials, and tune --resume continues it",
    "evaluate": "no file was replaced (each run and --out keep their earlier evaluation, whole); run evaluate again",
    "sample": "no samples were written (the file goes into place whole or not at all); run sample again",
}
#: the errors of a write that fails part way
FAILED_WRITES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def describe_error(e: BaseException, command: str = "train") -> str:
    """The one line shown for an error about the input or the machine: an ``OSError`` names its file and the fix,
    and one of a write that failed part way (a full disk) what ``command`` kept and how to go on."""
    if not isinstance(e, OSError) or isinstance(e, InputError):
        return str(e)
    where = f" ({e.filename})" if e.filename else ""
    kept = KEPT_ON_FAILED_WRITE.get(command, "run it again")
    if e.errno == errno.ENOSPC:
        return f"no space left on the device{where}: free some space; {kept}."
    if e.errno == errno.EDQUOT:
        return f"{e.strerror}{where}: free some space or raise the quota; {kept}."
    if e.errno in FAILED_WRITES:
        return f"{e.strerror or e}{where}; {kept}."
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{e.strerror}{where}: make it writable, or give another --out."
    return f"{e.strerror or e}{where}"


def out_of_memory(e: BaseException) -> Optional[str]:
    """What an allocation that failed asked for, for a message ("an allocation of 12.3 GiB failed"), or None when
    ``e`` is not an allocation failure: Python's ``MemoryError``, torch's ``OutOfMemoryError`` (CUDA) or its CPU
    allocator's "can't allocate memory" ``RuntimeError``."""
    text = str(e)
    if not (isinstance(e, MemoryError) or isinstance(e, getattr(torch, "OutOfMemoryError", MemoryError))
            or "can't allocate memory" in text or "out of memory" in text.lower()):
        return None
    size = re.search(r"allocate (\d+) bytes", text) or re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
    if size is None:
        return "an allocation failed"
    asked = f"{int(size.group(1)) / 2**30:.3g} GiB" if size.group(1).isdigit() else size.group(1)
    return f"an allocation of {asked} failed"


def interrupted(command: str, cfg: dict) -> str:
    """The one line shown when Ctrl-C (SIGINT) or SIGTERM stops ``command``: what was kept, and how to go on."""
    defaults = {"train": settings.TrainSettings, "compare": settings.CompareSettings, "tune": settings.TuneSettings}
    out = cfg.get("out") or (defaults[command]().out if command in defaults else None)
    if command == "train" and out:
        try:
            epochs = int(load_checkpoint(Path(out) / CHECKPOINT, mmap=True)["epoch"])
        except InputError:  # no checkpoint yet, or one this command did not write
            epochs = 0
        if not epochs:
            return (f"interrupted before the first epoch ended; {out} holds no checkpoint: train again with "
                    f"--overwrite --out {out}.")
        return (f"interrupted; the run in {out} keeps its checkpoint of epoch {epochs}: `pyro-vae train --resume "
                f"--out {out}` continues it exactly.")
    if command == "compare" and out:
        return (f"interrupted; {out} keeps every finished training (and each one's last checkpoint): "
                f"`pyro-vae compare --resume --out {out}` continues it.")
    if command == "tune" and out:
        return (f"interrupted; the study in {out} keeps its finished trials (the running one is marked failed): "
                f"`pyro-vae tune --resume --out {out}` continues it.")
    return "interrupted; nothing was written that a complete run would not write again: run it again."


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM (a scheduler's stop, ``kill``) ends a command as Ctrl-C does, with the line of
    :func:`interrupted`; the handler before it is put back after (outside the main thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: warnings addressed to the user, shown as one line (every other warning keeps Python's form, with its location)
ONE_LINE_WARNINGS = (CheckpointWarning,)


def _warning_printer(show):
    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ONE_LINE_WARNINGS):
            print(f"pyro-vae: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)
    return show_warning


#: the commands that take ``--import MODULE``: those that build or read a guide
IMPORTING = ("train", "compare", "tune", "evaluate", "sample")


def import_user_modules(argv: List[str]) -> List[str]:
    """Import the modules ``--import MODULE`` names (in ``argv``), before the parser offers the guides' names, so
    that a user's ``@register``-ed guide is one of them; the current folder is searched first, as ``python`` does.
    Returns the module names.

    :raises InputError: when a module cannot be found or raises while it is imported.
    """
    import importlib

    names = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--import"]
    names += [a.split("=", 1)[1] for a in argv if a.startswith("--import=")]
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise InputError(f"--import {name}: no module {e.name!r} here or on the path: give the module's import "
                             f"name (my_guides for my_guides.py in the current folder).") from None
        except Exception as e:  # the user's module raised: its message, on one line
            first = str(e).splitlines()[0] if str(e) else ""
            raise InputError(f"--import {name}: importing it raised {type(e).__name__}: {first[:200]}; fix the "
                             f"module.") from None
    return names


def main(argv: Optional[List[str]] = None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the command line only writes figures to files
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        import_user_modules(argv)
    except InputError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    args = parser().parse_args(argv)
    cfg = vars(args)
    warnings.showwarning = _warning_printer(warnings.showwarning)
    with sigterm_as_interrupt():
        return _run(args, cfg)


def _run(args, cfg: dict) -> int:
    """The command ``args`` names; bad input and interruptions as one line (exit status 2 and 130)."""
    try:
        if args.command == "guides":
            print("\n".join(guides.names()))
            for name, why in guides.registry.broken().items():
                print(f"{name}: broken, not loaded ({why})")
        elif args.command == "datasets":
            for name, row in data.describe().iterrows():
                print(f"{name}: {row.train} train / {row.validation} validation / {row.test} test; licence "
                      f"{row.licence}; {row.source}")
        elif args.command == "sample":
            cmd_sample(cfg)
        elif args.command == "join":
            cmd_join(cfg["studies"], cfg["out"], cfg["baseline"], cfg["overwrite"])
        else:
            classes = {"train": settings.TrainSettings, "compare": settings.CompareSettings,
                       "evaluate": settings.EvaluateSettings, "tune": settings.TuneSettings}
            cls = classes[args.command]
            given = {f.name: cfg[f.name] for f in cls.options() if f.name in cfg}
            config = settings.load_config(cfg["config"]) if cfg["config"] else None
            if config is not None:  # the file's own keys and values first: a run's config.json is not evaluate's
                cls.from_dict({k: v for k, v in config.items() if k != "out"}, cfg["config"])
            if config is not None and "out" in config and "out" not in given:
                raise InputError(f"--config {cfg['config']} names the folder it was written to "
                                 f"({config['out']}); say where this {args.command} writes with --out DIR.")
            if config is not None:
                config = {k: v for k, v in config.items() if k != "out"}
            if cfg.get("resume") and cfg.get("overwrite"):
                raise InputError(f"--resume continues what --out holds and --overwrite replaces it: give one of "
                                 f"them to {args.command}.")
            preset = settings.QUICK if cfg.get("quick") else None
            if args.command == "tune":
                cmd_tune(given, config, resume=cfg["resume"], overwrite=cfg["overwrite"],
                         config_source=cfg["config"] or "")
            elif args.command == "train":
                cmd_train(given, config, resume=cfg["resume"], config_source=cfg["config"] or "",
                          overwrite=cfg["overwrite"])
            else:
                chosen = settings.resolve(cls, given, config, preset, config_source=cfg["config"] or "")
                if args.command == "compare":
                    cmd_compare(chosen, overwrite=cfg["overwrite"], resume=cfg["resume"], given=given)
                else:
                    cmd_evaluate(cfg["runs"], chosen)
    except (InputError, OSError, FloatingPointError) as e:  # about the input: one line; anything else is our bug
        print(f"pyro-vae {args.command}: error: {describe_error(e, args.command)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        asked = out_of_memory(e)
        if asked is None:  # anything else is our bug: its traceback
            raise
        print(f"pyro-vae {args.command}: error: out of memory: {asked}; give smaller sizes (--batch-size, --z-dim, "
              f"--hidden, --ll-samples), or run it where there is more memory.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyro-vae {args.command}: {interrupted(args.command, cfg)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
