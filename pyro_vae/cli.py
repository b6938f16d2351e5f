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
from pathlib import Path
from typing import List, Optional

import pandas as pd
import pyro

import guides

from . import compare, data, models
from .optim import LazyAdam
from .train import CHECKPOINT, fit

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", choices=data.names(), help="data set")
    p.add_argument("--root", default=None, help="folder of the IDX files for mnist / fashion-mnist")
    p.add_argument("--binarize", default="static", choices=data.BINARIZATIONS,
                   help="binarization of grey levels (ignored for linear-gaussian)")
    p.add_argument("--likelihood", default=None, choices=sorted(models.LIKELIHOODS),
                   help="VAE likelihood (default: bernoulli for binarized data, else continuous_bernoulli)")
    p.add_argument("--z-dim", type=int, default=8, help="latent dimension")
    p.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden widths of decoder and encoder")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of decoder and encoder")
    p.add_argument("--local-lr", type=float, default=1e-2,
                   help="learning rate of per-datapoint guide parameters (meanfield, local_mvn)")
    p.add_argument("--elbo", default="trace", choices=sorted(compare.ELBOS), help="Trace_ELBO or TraceMeanField_ELBO")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    top = argparse.ArgumentParser(prog="pyro-vae", description=__doc__.splitlines()[0], formatter_class=fmt)
    sub = top.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one model and guide", formatter_class=fmt)
    _common(t)
    t.add_argument("--guide", default="normal", choices=guides.names(), help="guide from the registry")
    t.add_argument("--scale", default="softplus", choices=["softplus", "logvar", "exp"],
                   help="sigma parameterization of the normal guide")
    t.add_argument("--epochs", type=int, default=300, help="passes over the training set")
    t.add_argument("--out", default="runs/train", help="output folder")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")

    c = sub.add_parser("compare", help="the amortization question: train with each guide, decompose the gaps",
                       formatter_class=fmt)
    _common(c)
    c.add_argument("--guides", nargs="+", default=["normal", "mvn", "meanfield"], choices=guides.names(),
                   help="guides to train decoders with")
    c.add_argument("--epochs", type=int, default=300, help="passes over the training set, per guide")
    c.add_argument("--qstar-lr", type=float, default=3e-2, help="learning rate of the q* fits")
    c.add_argument("--n-eval", type=int, default=200, help="train and test points evaluated")
    c.add_argument("--ll-samples", type=int, default=5000, help="importance samples for log p(x)")
    c.add_argument("--qstar-steps", type=int, default=3000, help="most optimization steps for q*")
    c.add_argument("--quick", action="store_true", help="a small budget for smoke tests (under a minute)")
    c.add_argument("--out", default="runs/compare", help="output folder")

    sub.add_parser("guides", help="list the guide registry", formatter_class=fmt)
    sub.add_parser("datasets", help="list the data sets", formatter_class=fmt)
    return top


def load_data(cfg: dict) -> data.Dataset:
    binarize = "none" if cfg["data"] == "linear-gaussian" else cfg["binarize"]
    return data.load(cfg["data"], binarize=binarize, seed=cfg["seed"], root=cfg.get("root"))


def cmd_train(cfg: dict) -> None:
    from . import plots

    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    if cfg["resume"]:
        saved = json.loads((out / "config.json").read_text())
        cfg = {**saved, "epochs": cfg["epochs"], "resume": True, "no_progress": cfg["no_progress"]}
    ds = load_data(cfg)
    pyro.clear_param_store()
    model = compare.build_model(ds, cfg["z_dim"], cfg["hidden"], cfg["likelihood"], cfg["seed"])
    extra = {"scale": cfg["scale"]} if cfg["guide"] == "normal" else {}
    guide = compare.build_guide(cfg["guide"], ds, cfg["z_dim"], cfg["hidden"], **extra)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    history = fit(model, guide, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                  optim=LazyAdam({"lr": cfg["lr"]}, sparse_args={"lr": cfg["local_lr"]}),
                  loss=compare.ELBOS[cfg["elbo"]](), checkpoint_dir=str(out),
                  resume=cfg["resume"], progress=not cfg["no_progress"], seed=cfg["seed"], config=cfg)
    history.to_csv(out / "history.csv", index=False)
    plots.save(plots.learning_curves(history.assign(guide=cfg["guide"]),
                                     title=f"{cfg['guide']} guide on {cfg['data']}"), out / "learning_curves.png")
    last = history.iloc[-1]
    print(f"{cfg['guide']} on {cfg['data']}: epoch {int(last.epoch)}, train -ELBO {last.train_loss:.3f}, "
          f"test -ELBO {last.test_loss:.3f} nats per datapoint; wrote {out}/"
          f"{{config.json, history.csv, {CHECKPOINT}, learning_curves.png}}")


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
        qstar_steps=cfg["qstar_steps"], progress=not cfg["no_progress"])
    if cfg["quick"]:
        settings = dataclasses.replace(settings, **QUICK)
    (out / "config.json").write_text(json.dumps({"data": cfg["data"], "binarize": ds.binarize,
                                                 **compare.settings_dict(settings)}, indent=2))
    result = compare.compare(ds, settings)
    result.table.to_csv(out / "results.csv", index=False)
    result.cost.to_csv(out / "cost.csv", index=False)
    result.per_point.to_csv(out / "per_point.csv", index=False)
    result.histories.to_csv(out / "history.csv", index=False)
    figures = {
        "learning_curves.png": plots.learning_curves(result.histories, title=f"Learning curves on {ds.name}"),
        "gaps.png": plots.gap_bars(result.table, title=f"Approximation and amortization gaps on {ds.name}"),
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
            "approximation_gap", "amortization_gap"]
    view = table[[c for c in cols if c in table]].copy()
    view.insert(3, "log_px_se", table["log_px_se"])
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    cfg = vars(args)
    try:
        if args.command == "guides":
            print("\n".join(guides.names()))
        elif args.command == "datasets":
            print("\n".join(data.names()))
        elif args.command == "train":
            cmd_train(cfg)
        elif args.command == "compare":
            cmd_compare(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
