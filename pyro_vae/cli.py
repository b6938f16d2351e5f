"""The ``pyro-vae`` command line: ``train``, ``compare``, ``evaluate``, ``sample``, ``guides``, ``datasets``.

Usage::

    pyro-vae train --data digits --guide mvn --z-dim 8 --epochs 50 --out runs/mvn
    pyro-vae evaluate runs/mvn runs/normal        # their gaps, side by side
    pyro-vae sample runs/mvn --n 64               # runs/mvn/samples.png
    pyro-vae compare --out runs/compare           # the amortization question on digits
    pyro-vae guides                               # the guide registry

The only module that parses arguments or prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import pandas as pd
import pyro
import torch

import guides

from . import compare, data, gaps, models, objectives, runs
from .train import CHECKPOINT


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (the problem and where the fix is) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is {'not positive' if low == 1 else 'negative'}: "
                                         f"give an integer >= {low}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{value} is not a finite positive number")
    return value


def device_name(text: str) -> str:
    """argparse type: a torch device that exists on this machine."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text} was asked for but this machine has no CUDA device: use --device cpu")
    return text


SEED_HELP = ("seeds what is random in training: the initial weights of decoder and encoder, the order of the "
             "mini-batches, the dynamic binarization draws and every Monte Carlo sample (of training, q* and "
             "log p(x)); the same seed, data and flags give the same history.csv losses")
AIS_HELP = ("also estimate log p(x) by AIS with this many annealing steps (16 chains) and use the larger estimate per "
            "point; 0: importance weighting alone")
QSTAR_STEPS_HELP = ("steps of each q* fit: natural-gradient iterations for the normal and mvn families (default 20), "
                    "Adam steps for the flow family (default 200)")
QSTAR_LR_HELP = ("step size of the q* fits: the largest natural-gradient step for the Gaussian families (default 1), "
                 "Adam's initial learning rate for the flow family (default 0.01, decaying linearly to 0)")
DATA_SEED_HELP = ("seeds the data: the digits train/test split, the static binarization draws and the "
                  "linear-gaussian data (kept apart from --seed so that runs with several seeds see the same data)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", choices=data.names(), help="data set")
    p.add_argument("--root", default=None, help="folder of the IDX files for mnist / fashion-mnist")
    p.add_argument("--no-download", action="store_true",
                   help="never download mnist / fashion-mnist: only read the IDX files in --root")
    p.add_argument("--binarize", default="static", choices=data.BINARIZATIONS,
                   help="binarization of grey levels (ignored for linear-gaussian)")
    p.add_argument("--likelihood", default=None, choices=sorted(models.LIKELIHOODS),
                   help="VAE likelihood (default: bernoulli for binarized data, else continuous_bernoulli)")
    p.add_argument("--z-dim", type=positive_int, default=8, help="latent dimension")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=[256],
                   help="hidden widths of decoder and encoder")
    p.add_argument("--batch-size", type=positive_int, default=128, help="mini-batch size")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate of decoder and encoder")
    p.add_argument("--local-lr", type=positive_float, default=1e-2,
                   help="learning rate of per-datapoint guide parameters (meanfield, local_mvn)")
    p.add_argument("--loss", "--elbo", dest="elbo", default="trace", choices=objectives.names(),
                   help="the objective: trace (Trace_ELBO), meanfield (TraceMeanField_ELBO, closed-form KL) or iwae "
                        "(the importance-weighted bound with --particles samples, right under mini-batches)")
    p.add_argument("--particles", type=positive_int, default=5,
                   help="K, the importance samples per datapoint of --loss iwae")
    p.add_argument("--num-flows", type=positive_int, default=2,
                   help="affine autoregressive transforms of the flow and local_flow guides")
    p.add_argument("--refine-steps", type=nonnegative_int, default=5,
                   help="gradient steps by which the semi_amortized guide refines each q (0: the plain encoder)")
    p.add_argument("--no-jit", action="store_true",
                   help="do not compile the ELBO with Pyro's JIT (it is compiled only for the models and guides "
                        "tested under it; see the README for the trade-off)")
    p.add_argument("--validate-every-step", action="store_true",
                   help="keep Pyro's validation on for every step, not only for the checked first batch")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--data-seed", type=int, default=0, help=DATA_SEED_HELP)
    p.add_argument("--device", type=device_name, default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    top = Parser(prog="pyro-vae", description=__doc__.splitlines()[0], formatter_class=fmt)
    sub = top.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train one model and guide", formatter_class=fmt)
    _common(t)
    t.add_argument("--guide", default="normal", choices=guides.names(), help="guide from the registry")
    t.add_argument("--scale", default="softplus", choices=["softplus", "logvar", "exp"],
                   help="sigma parameterization of the normal guide")
    t.add_argument("--epochs", type=positive_int, default=300,
                   help="passes over the training set (with --resume: the total to reach)")
    t.add_argument("--local-steps", type=positive_int, default=1, metavar="T",
                   help="iterative training: T steps of the guide's parameters per batch, the first T - 1 with the "
                        "model held fixed (1: plain SVI)")
    t.add_argument("--out", default="runs/train", help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--rows-on-disk", default=None, metavar="FOLDER",
                   help="keep a per-datapoint guide's rows and their Adam moments in memory-mapped files in FOLDER "
                        "(only each batch's rows are read and written per step): for N too large for RAM; "
                        "--resume keeps the run's folder unless given another")
    t.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads of the training steps (default: 1 for a model whose batch x parameters is "
                        "under 1e8, which two threads would stall when another process holds a core; else torch's)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training in the processes torchrun starts (`torchrun --standalone "
                        "--nproc_per_node=P --no-python pyro-vae train ... --distributed`): gloo on CPU, nccl with "
                        "--device cuda (one GPU per process); --batch-size is the global batch, a multiple of P; "
                        "rank 0 writes the outputs")

    c = sub.add_parser("compare", help="the amortization question: train with each guide, decompose the gaps",
                       formatter_class=fmt)
    _common(c)
    c.add_argument("--guides", nargs="+", default=list(compare.Settings.guides), choices=guides.names(),
                   help="guides to train decoders with")
    c.add_argument("--epochs", type=positive_int, default=300, help="passes over the training set, per guide")
    c.add_argument("--seeds", type=positive_int, default=compare.Settings.seeds, metavar="N",
                   help="repeat every training with seeds SEED, SEED+1, ..., SEED+N-1; tables and figures show the "
                        "mean and the spread across seeds")
    c.add_argument("--local-steps", type=positive_int, nargs="+", default=list(compare.Settings.local_steps),
                   metavar="T", help="one decoder per T for each per-datapoint guide (meanfield, ...), trained "
                                     "iteratively: T steps of the batch's rows per visit, T - 1 with the decoder fixed")
    c.add_argument("--families", nargs="+", default=list(compare.Settings.families), choices=sorted(gaps.FAMILIES),
                   help="families of q* (flow gives L[q*_flow]; each guide's own family must be among them)")
    c.add_argument("--qstar-lr", type=positive_float, default=None, help=QSTAR_LR_HELP)
    c.add_argument("--n-eval", type=positive_int, default=200, help="train and test points evaluated")
    c.add_argument("--ll-samples", type=positive_int, default=5000, help="importance samples for log p(x)")
    c.add_argument("--ais-steps", type=nonnegative_int, default=0, help=AIS_HELP)
    c.add_argument("--qstar-steps", type=positive_int, default=None, help=QSTAR_STEPS_HELP)
    c.add_argument("--budget-every", type=nonnegative_int, default=compare.Settings.budget_every, metavar="E",
                   help="measure each decoder in training every E epochs on --budget-points test points (budget.csv, "
                        "budget.png); 0: off")
    c.add_argument("--budget-points", type=positive_int, default=compare.Settings.budget_points,
                   help="test points of the budget curves")
    c.add_argument("--encoder-widths", type=positive_int, nargs="+", default=[], metavar="W",
                   help="the encoder-width sweep: on the decoder trained with the normal guide, held fixed, train new "
                        "normal encoders W units wide for --epochs each and measure their amortization gap "
                        "(encoder_widths.csv, encoder_widths.png)")
    c.add_argument("--workers", type=positive_int, default=compare.Settings.workers,
                   help="trainings run in this many processes at once, each with an equal share of the cores (CPU "
                        "only); the numbers do not depend on it")
    c.add_argument("--quick", action="store_true",
                   help="a small budget for smoke tests (about a minute and a half on digits)")
    c.add_argument("--out", default="runs/compare", help="output folder")

    e = sub.add_parser("evaluate", help="the gap decomposition of trained runs, side by side", formatter_class=fmt)
    e.add_argument("runs", nargs="+", metavar="RUN", help="folders written by pyro-vae train")
    e.add_argument("--split", nargs="+", default=["train", "test"], choices=["train", "test"],
                   help="splits to evaluate (the first --n-eval points of each)")
    e.add_argument("--n-eval", type=positive_int, default=200, help="points evaluated per split")
    e.add_argument("--ll-samples", type=positive_int, default=5000, help="importance samples for log p(x)")
    e.add_argument("--ais-steps", type=nonnegative_int, default=0, help=AIS_HELP)
    e.add_argument("--elbo-samples", type=positive_int, default=500, help="samples for each ELBO estimate")
    e.add_argument("--families", nargs="+", default=None, choices=sorted(gaps.FAMILIES),
                   help="families of q*; each run's own guide family must be among them (default: normal and mvn, "
                        "and flow when a run's guide is a flow)")
    e.add_argument("--qstar-steps", type=positive_int, default=None, help=QSTAR_STEPS_HELP)
    e.add_argument("--qstar-lr", type=positive_float, default=None, help=QSTAR_LR_HELP)
    e.add_argument("--seed", type=int, default=0, help="seeds the Monte Carlo samples of the evaluation")
    e.add_argument("--device", type=device_name, default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    e.add_argument("--out", default="runs/evaluation",
                   help="folder of the combined table and figure when several runs are given")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")

    m = sub.add_parser("sample", help="samples and reconstructions from a trained run", formatter_class=fmt)
    m.add_argument("run", metavar="RUN", help="a folder written by pyro-vae train")
    m.add_argument("--n", type=positive_int, default=64, help="samples (and reconstructions) to draw")
    m.add_argument("--seed", type=int, default=0, help="seeds the draws")
    m.add_argument("--out", default=None,
                   help="output file (default RUN/samples.png for image data, RUN/samples.csv otherwise)")

    sub.add_parser("guides", help="list the guide registry", formatter_class=fmt)
    sub.add_parser("datasets", help="list the data sets", formatter_class=fmt)
    return top


def cmd_train(cfg: dict) -> None:
    saved = runs.saved_config(cfg["out"], "--resume") if cfg["resume"] else {}  # what --resume keeps
    guide = saved.get("guide", cfg["guide"])
    if cfg["rows_on_disk"] and guides.get(guide).amortized:
        raise ValueError(f"--rows-on-disk keeps per-datapoint rows in files, and the {guide} guide has none: "
                         f"drop it, or train a per-datapoint guide (meanfield, local_mvn, local_flow).")
    if torch.device(cfg["device"]).type != "cpu":
        if cfg["rows_on_disk"]:
            raise ValueError("--rows-on-disk keeps the rows in memory-mapped files on the CPU: drop it with "
                             "--device cuda.")
        if saved.get("rows_on_disk"):
            raise ValueError(f"the run in {cfg['out']} keeps its rows in memory-mapped files on the CPU "
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


def _train(cfg: dict) -> None:
    from . import distributed, plots

    run = runs.train(cfg, resume=cfg["resume"])
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


QUICK = {"epochs": 15, "n_eval": 20, "ll_samples": 300, "elbo_samples": 50, "qstar_steps": 20, "budget_every": 5,
         "budget_points": 10, "budget_ll_samples": 100}


def cmd_compare(cfg: dict) -> None:
    from . import plots

    settings = compare.Settings(
        guides=cfg["guides"], z_dim=cfg["z_dim"], hidden=cfg["hidden"], likelihood=cfg["likelihood"],
        epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], local_lr=cfg["local_lr"],
        qstar_lr=cfg["qstar_lr"], elbo=cfg["elbo"], particles=cfg["particles"], num_flows=cfg["num_flows"],
        refine_steps=cfg["refine_steps"], local_steps=cfg["local_steps"], families=cfg["families"],
        jit=not cfg["no_jit"], seed=cfg["seed"], seeds=cfg["seeds"], n_eval=cfg["n_eval"],
        budget_every=cfg["budget_every"], budget_points=cfg["budget_points"],
        encoder_widths=cfg["encoder_widths"], workers=cfg["workers"],
        ll_samples=cfg["ll_samples"], ais_steps=cfg["ais_steps"], qstar_steps=cfg["qstar_steps"], device=cfg["device"],
        progress=not cfg["no_progress"])
    if cfg["quick"]:
        settings = dataclasses.replace(settings, **QUICK)
    compare.check(settings)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    ds = runs.load_data(cfg)
    (out / "config.json").write_text(json.dumps({"data": cfg["data"], "binarize": ds.binarize,
                                                 "data_seed": cfg["data_seed"], **compare.settings_dict(settings)},
                                                indent=2))
    result = compare.compare(ds, settings)
    tables = {"results.csv": result.table, "cost.csv": result.cost, "per_point.csv": result.per_point,
              "history.csv": result.histories}
    figures = {
        "learning_curves.png": plots.learning_curves(result.histories, title=f"Learning curves on {ds.name}"),
        "gaps.png": plots.gap_bars(result.per_point, title=f"Approximation and amortization gaps on {ds.name}"),
        "latents.png": plots.latent_scatter(compare.latent_frame(result, ds)),
    }
    if len(result.budget):
        comparisons = compare.budget_comparisons(result.budget)
        tables.update({"budget.csv": result.budget, "budget_comparisons.csv": comparisons})
        figures["budget.png"] = plots.budget_curves(result.budget, title=f"Test log p(x) during training on {ds.name}")
        figures["gaps_during_training.png"] = plots.gap_curves(result.budget, title=f"The gaps during training on "
                                                                                     f"{ds.name} (test points)")
    if len(result.encoder_widths):
        tables["encoder_widths.csv"] = result.encoder_widths
        figures["encoder_widths.png"] = plots.encoder_widths(
            result.encoder_widths, title=f"Amortization gap against the encoder's width on {ds.name}")
    if ds.image_shape:
        figures["images.png"] = plots.image_grid(compare.image_rows(result, ds), ds.image_shape)
    for fname, table in tables.items():
        table.to_csv(out / fname, index=False)
    for fname, fig in figures.items():
        plots.save(fig, out / fname)
    if settings.seeds > 1:
        summary = compare.across_seeds(result.table)
        print(f"means over {settings.seeds} seeds")
        print(format_table(summary))
        spread = summary[["guide", "split", *[c for c in summary if c.endswith("_seed_sd")]]]
        print(f"\nstandard deviations across the {settings.seeds} seeds")
        print(format_table(spread.rename(columns=lambda c: c.removesuffix("_seed_sd")), with_se=False))
    else:
        print(format_table(result.table))
    print()
    print(result.cost.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if len(result.budget):
        print(f"\nbudget curves (test log p(x) on {settings.budget_points} test points), means over seeds:")
        print(format_comparisons(comparisons))
    if len(result.encoder_widths):
        widths = result.encoder_widths.groupby(["split", "width", "retrained"], sort=False).mean(numeric_only=True)
        print("\nencoder widths on the normal guide's decoder (means over seeds):")
        print(widths[["encoder_params", "elbo_q", "amortization_gap"]].to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {out}/{{{', '.join(list(tables) + list(figures))}}}")


def format_comparisons(comparisons: pd.DataFrame) -> str:
    """:func:`pyro_vae.compare.budget_comparisons` as means over seeds (nats per datapoint)."""
    columns = ["log_px_equal_epochs", "equal_seconds", "log_px_equal_seconds", "log_px_best", "best_epoch",
               "rise_last_third", "flattened"]
    means = comparisons.groupby("guide", sort=False)[columns].mean()
    return means.to_string(float_format=lambda v: f"{v:.3f}")


def format_table(table: pd.DataFrame, labels=("guide", "split"), with_se: bool = True) -> str:
    """The headline table: means in nats per datapoint, log p(x) with its standard error (when ``with_se``)."""
    cols = [*labels, "log_px", "log_px_exact", "log_px_iwae", "log_px_ais", "elbo_qstar_normal", "elbo_qstar_mvn",
            "elbo_qstar_flow", "elbo_q", "approximation_gap", "approximation_gap_flow", "amortization_gap",
            "optimization_gap"]
    view = table[[c for c in cols if c in table]].copy()
    if with_se:
        view.insert(len(labels) + 1, "log_px_se", table["log_px_se"])
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}")


EVALUATION = {"table": "evaluation.csv", "points": "evaluation_per_point.csv", "figure": "evaluation_gaps.png"}


def cmd_evaluate(cfg: dict) -> None:
    from . import plots

    loaded = [runs.load_run(path, device=cfg["device"]) for path in cfg["runs"]]  # every run checked before any work
    names = [run.name for run in loaded]
    if len(set(names)) < len(names):
        raise ValueError(f"evaluate: two runs share a folder name ({', '.join(names)}); tables label runs by it.")
    flows = ["flow"] if any(run.guide.family == "flow" for run in loaded) else []
    families = cfg["families"] or ["normal", "mvn", *flows]
    settings = compare.Settings(n_eval=cfg["n_eval"], ll_samples=cfg["ll_samples"], ais_steps=cfg["ais_steps"],
                                elbo_samples=cfg["elbo_samples"],
                                qstar_steps=cfg["qstar_steps"], qstar_lr=cfg["qstar_lr"], families=families,
                                device=cfg["device"], progress=not cfg["no_progress"])
    for run in loaded:
        if run.guide.family not in families:
            raise ValueError(f"evaluate: {run.name}'s guide ({run.config['guide']}) is of the {run.guide.family!r} "
                             f"family: add it to --families, since its gaps are measured against q* of that family.")
    tables, points = [], []
    for run in loaded:
        pyro.set_rng_seed(cfg["seed"])
        summary, per_point = compare.evaluate(run.model, run.guide, run.data, settings, cfg["split"])
        label = {"run": run.name, "guide": run.config["guide"]}
        summary, per_point = summary.assign(**label), per_point.assign(**label)
        summary[["run", "guide", *summary.columns[:-2]]].to_csv(run.path / EVALUATION["table"], index=False)
        per_point.to_csv(run.path / EVALUATION["points"])
        plots.save(plots.gap_bars(per_point, title=f"Gaps of {run.name} ({run.config['guide']} guide)", x="run"),
                   run.path / EVALUATION["figure"])
        tables.append(summary)
        points.append(per_point)
    table = pd.concat(tables, ignore_index=True)
    print(format_table(table, labels=("run", "guide", "split")))
    written = [f"{run.path}/{{{', '.join(EVALUATION.values())}}}" for run in loaded]
    if len(loaded) > 1:
        out = Path(cfg["out"])
        out.mkdir(parents=True, exist_ok=True)
        table[["run", "guide", *table.columns[:-2]]].to_csv(out / EVALUATION["table"], index=False)
        plots.save(plots.gap_bars(pd.concat(points), title="Gaps of " + ", ".join(names), x="run"),
                   out / EVALUATION["figure"])
        written.append(f"{out}/{{{EVALUATION['table']}, {EVALUATION['figure']}}}")
    print("\nwrote " + "; ".join(written))


def cmd_sample(cfg: dict) -> None:
    from . import plots

    run = runs.load_run(cfg["run"])
    pyro.set_rng_seed(cfg["seed"])
    if runs.is_image(run.data):
        out = Path(cfg["out"] or run.path / "samples.png")
        x = run.data.test[:cfg["n"]]
        panels = {"samples: E[x | z], z ~ p(z)": run.model.sample_mean(cfg["n"]).cpu(), "test images": x.cpu(),
                  "reconstructions: E[x | z = mean of q(z | x)]": runs.reconstruct(run, x).cpu()}
        plots.save(plots.image_panels(panels, run.data.image_shape, title=f"{run.name}: samples and reconstructions"),
                   out)
    else:
        out = Path(cfg["out"] or run.path / "samples.csv")
        out.parent.mkdir(parents=True, exist_ok=True)
        runs.samples(run, cfg["n"]).to_csv(out, index=False)
    print(f"wrote {out}")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"pyro-vae: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Optional[List[str]] = None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the command line only writes figures to files
    args = parser().parse_args(argv)
    cfg = vars(args)
    warnings.showwarning = _one_line_warning
    try:
        if args.command == "guides":
            print("\n".join(guides.names()))
        elif args.command == "datasets":
            print("\n".join(data.names()))
        elif args.command == "train":
            cmd_train(cfg)
        elif args.command == "compare":
            cmd_compare(cfg)
        elif args.command == "evaluate":
            cmd_evaluate(cfg)
        elif args.command == "sample":
            cmd_sample(cfg)
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
