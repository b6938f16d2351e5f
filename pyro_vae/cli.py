"""The ``pyro-vae`` command line: ``train``, ``compare``, ``guides``, ``datasets``.

Usage::

    pyro-vae train --data digits --guide mvn --z-dim 8 --epochs 50 --out runs/mvn
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

from . import compare, data, models
from .optim import LazyAdam
from .train import CHECKPOINT, PREVIOUS_CHECKPOINT, CheckpointError, fit


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (the problem and where the fix is) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give an integer >= 1")
    return value


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
    p.add_argument("--elbo", default="trace", choices=sorted(compare.ELBOS), help="Trace_ELBO or TraceMeanField_ELBO")
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
    t.add_argument("--out", default="runs/train", help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")

    c = sub.add_parser("compare", help="the amortization question: train with each guide, decompose the gaps",
                       formatter_class=fmt)
    _common(c)
    c.add_argument("--guides", nargs="+", default=["normal", "mvn", "meanfield"], choices=guides.names(),
                   help="guides to train decoders with")
    c.add_argument("--epochs", type=positive_int, default=300, help="passes over the training set, per guide")
    c.add_argument("--qstar-lr", type=positive_float, default=3e-2, help="learning rate of the q* fits")
    c.add_argument("--n-eval", type=positive_int, default=200, help="train and test points evaluated")
    c.add_argument("--ll-samples", type=positive_int, default=5000, help="importance samples for log p(x)")
    c.add_argument("--qstar-steps", type=positive_int, default=3000, help="most optimization steps for q*")
    c.add_argument("--quick", action="store_true", help="a small budget for smoke tests (under a minute)")
    c.add_argument("--out", default="runs/compare", help="output folder")

    sub.add_parser("guides", help="list the guide registry", formatter_class=fmt)
    sub.add_parser("datasets", help="list the data sets", formatter_class=fmt)
    return top


def load_data(cfg: dict) -> data.Dataset:
    binarize = "none" if cfg["data"] == "linear-gaussian" else cfg["binarize"]
    return data.load(cfg["data"], binarize=binarize, seed=cfg.get("data_seed", cfg["seed"]), root=cfg.get("root"),
                     download=not cfg.get("no_download", False))


def _saved_config(out: Path) -> dict:
    """The config of the run in ``out``, with a one-line error naming the fix when there is none."""
    config = out / "config.json"
    if not config.is_file() or not ((out / CHECKPOINT).exists() or (out / PREVIOUS_CHECKPOINT).exists()):
        raise CheckpointError(f"--resume: {out} holds no run to continue (it needs config.json and {CHECKPOINT}); "
                              f"train one first without --resume, or pass --out of an existing run.")
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"--resume: {config} is not valid JSON ({e}); restore it or train again.") from None


def cmd_train(cfg: dict) -> None:
    from . import plots

    out = Path(cfg["out"])
    if cfg["resume"]:
        cfg = {**_saved_config(out), "epochs": cfg["epochs"], "resume": True, "no_progress": cfg["no_progress"],
               "device": cfg["device"]}
    out.mkdir(parents=True, exist_ok=True)
    ds = load_data(cfg)
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg["seed"])  # the initial weights are drawn from the seed, as the rest of the run
    model = compare.build_model(ds, cfg["z_dim"], cfg["hidden"], cfg["likelihood"], cfg["seed"])
    extra = {"scale": cfg["scale"]} if cfg["guide"] == "normal" else {}
    guide = compare.build_guide(cfg["guide"], ds, cfg["z_dim"], cfg["hidden"], **extra)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    history = fit(model, guide, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                  optim=LazyAdam({"lr": cfg["lr"]}, sparse_args={"lr": cfg["local_lr"]}),
                  loss=compare.ELBOS[cfg["elbo"]](), checkpoint_dir=str(out), device=cfg["device"],
                  resume=cfg["resume"], progress=not cfg["no_progress"], seed=cfg["seed"], config=cfg)
    history.to_csv(out / "history.csv", index=False)
    plots.save(plots.learning_curves(history.assign(guide=cfg["guide"]),
                                     title=f"{cfg['guide']} guide on {cfg['data']}"), out / "learning_curves.png")
    last = history.iloc[-1]
    test = f"test -ELBO {last.test_loss:.3f}" if pd.notna(last.test_loss) else \
        "no test -ELBO (a per-datapoint guide has no q for test points)"
    print(f"{cfg['guide']} on {cfg['data']}: epoch {int(last.epoch)}, train -ELBO {last.train_loss:.3f}, "
          f"{test} nats per datapoint; wrote {out}/{{config.json, history.csv, {CHECKPOINT}, learning_curves.png}}")


QUICK = {"epochs": 15, "n_eval": 40, "ll_samples": 500, "qstar_steps": 300, "elbo_samples": 100}


def cmd_compare(cfg: dict) -> None:
    from . import plots

    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    ds = load_data(cfg)
    settings = compare.Settings(
        guides=cfg["guides"], z_dim=cfg["z_dim"], hidden=cfg["hidden"], likelihood=cfg["likelihood"],
        epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], local_lr=cfg["local_lr"],
        qstar_lr=cfg["qstar_lr"], elbo=cfg["elbo"], seed=cfg["seed"], n_eval=cfg["n_eval"],
        ll_samples=cfg["ll_samples"],
        qstar_steps=cfg["qstar_steps"], device=cfg["device"], progress=not cfg["no_progress"])
    if cfg["quick"]:
        settings = dataclasses.replace(settings, **QUICK)
    (out / "config.json").write_text(json.dumps({"data": cfg["data"], "binarize": ds.binarize,
                                                 "data_seed": cfg["data_seed"], **compare.settings_dict(settings)},
                                                indent=2))
    result = compare.compare(ds, settings)
    result.table.to_csv(out / "results.csv", index=False)
    result.cost.to_csv(out / "cost.csv", index=False)
    result.per_point.to_csv(out / "per_point.csv", index=False)
    result.histories.to_csv(out / "history.csv", index=False)
    figures = {
        "learning_curves.png": plots.learning_curves(result.histories, title=f"Learning curves on {ds.name}"),
        "gaps.png": plots.gap_bars(result.per_point, title=f"Approximation and amortization gaps on {ds.name}"),
        "latents.png": plots.latent_scatter(compare.latent_frame(result, ds)),
    }
    if ds.image_shape:
        figures["images.png"] = plots.image_grid(compare.image_rows(result, ds), ds.image_shape)
    for fname, fig in figures.items():
        plots.save(fig, out / fname)
    print(format_table(result.table))
    print()
    print(result.cost.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\nwrote {out}/{{results.csv, cost.csv, per_point.csv, history.csv, {', '.join(figures)}}}")


def format_table(table: pd.DataFrame) -> str:
    """The headline table: means in nats per datapoint, log p(x) with its standard error."""
    cols = ["guide", "split", "log_px", "log_px_exact", "elbo_qstar_normal", "elbo_qstar_mvn", "elbo_q",
            "approximation_gap", "amortization_gap", "optimization_gap"]
    view = table[[c for c in cols if c in table]].copy()
    view.insert(3, "log_px_se", table["log_px_se"])
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}")


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
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
