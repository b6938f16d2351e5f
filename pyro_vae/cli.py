"""The ``pyro-vae`` command line: ``train``, ``compare``, ``guides``, ``datasets``.

Usage::

    pyro-vae train --data digits --guide mvn --z-dim 8 --epochs 50 --out runs/mvn
    pyro-vae compare --out runs/compare           # the amortization question on digits
    pyro-vae guides                               # the guide registry

The only module that parses arguments or prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import pandas as pd
import pyro
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import guides

from . import data, models
from .optim import LazyAdam
from .train import CHECKPOINT, fit

ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}


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
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--elbo", default="trace", choices=sorted(ELBOS), help="Trace_ELBO or TraceMeanField_ELBO")
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

    sub.add_parser("guides", help="list the guide registry", formatter_class=fmt)
    sub.add_parser("datasets", help="list the data sets", formatter_class=fmt)
    return top


def load_data(cfg: dict) -> data.Dataset:
    binarize = "none" if cfg["data"] == "linear-gaussian" else cfg["binarize"]
    return data.load(cfg["data"], binarize=binarize, seed=cfg["seed"], root=cfg.get("root"))


def build_model(cfg: dict, ds: data.Dataset):
    """The generative model a config asks for: a learnable LinearGaussian for linear-gaussian data, else a VAE."""
    n = len(ds.train)
    if ds.name == "linear-gaussian":
        return models.LinearGaussian.random(ds.x_dim, cfg["z_dim"], noise_scale=1.0, seed=cfg["seed"] + 10,
                                            num_data=n)
    likelihood = cfg.get("likelihood") or ("bernoulli" if ds.binarize != "none" else "continuous_bernoulli")
    return models.VAE(ds.x_dim, cfg["z_dim"], cfg["hidden"], likelihood=likelihood, num_data=n)


def build_guide(cfg: dict, ds: data.Dataset, name: str):
    kw = dict(x_dim=ds.x_dim, z_dim=cfg["z_dim"], hidden=cfg["hidden"], num_data=len(ds.train))
    if name == "normal":
        kw["scale"] = cfg.get("scale", "softplus")
    return guides.make(name, **kw)


def cmd_train(cfg: dict) -> None:
    from . import plots

    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    if cfg["resume"]:
        saved = json.loads((out / "config.json").read_text())
        cfg = {**saved, "epochs": cfg["epochs"], "resume": True, "no_progress": cfg["no_progress"]}
    ds = load_data(cfg)
    pyro.clear_param_store()
    model, guide = build_model(cfg, ds), build_guide(cfg, ds, cfg["guide"])
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    history = fit(model, guide, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                  optim=LazyAdam({"lr": cfg["lr"]}), loss=ELBOS[cfg["elbo"]](), checkpoint_dir=str(out),
                  resume=cfg["resume"], progress=not cfg["no_progress"], seed=cfg["seed"], config=cfg)
    history.to_csv(out / "history.csv", index=False)
    plots.save(plots.learning_curves(history.assign(guide=cfg["guide"]),
                                     title=f"{cfg['guide']} guide on {cfg['data']}"), out / "learning_curves.png")
    last = history.iloc[-1]
    print(f"{cfg['guide']} on {cfg['data']}: epoch {int(last.epoch)}, train -ELBO {last.train_loss:.3f}, "
          f"test -ELBO {last.test_loss:.3f} nats per datapoint; wrote {out}/"
          f"{{config.json, history.csv, {CHECKPOINT}, learning_curves.png}}")


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
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
