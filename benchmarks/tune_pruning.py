"""What the median pruner saves a tuning: the same study (same sampler seed, so the same first trials) with
``--pruner median`` and with ``--pruner none``, side by side.

    python benchmarks/tune_pruning.py              # normal and meanfield on digits; writes tune_pruning.csv and .md
    python benchmarks/tune_pruning.py --guides normal --trials 6 --epochs 20 --out /tmp/p   # a smoke run

Each study runs in this process, one after the other, pinned to one thread. Columns: the wall seconds of the whole
study, the trials pruned, the epochs trained (a pruned trial stops at the measured epoch where it was pruned), and
the best validation log p(x) found (nats per datapoint). TPE draws the same points in both studies only while no
trial has been pruned: after that the pruned trials' values differ from the full ones, and so do later draws.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyro
import torch

from pyro_vae import data, settings, tune
from pyro_vae.report import markdown

HERE = Path(__file__).resolve().parent


def run(ds, guide: str, pruner: str, trials: int, epochs: int, out: Path) -> dict:
    s = settings.TuneSettings(guide=guide, trials=trials, epochs=epochs, pruner=pruner, progress=False, rescore_top=0,
                              budget_points=100,
                              study=f"{guide}-pruning", out=str(out / f"{guide}-{pruner}"))
    t0 = time.perf_counter()
    study = tune.tune(ds, s)
    seconds = time.perf_counter() - t0
    states = [t.state.name for t in study.trials]
    trained = sum(t.user_attrs.get("pruned_at_epoch", epochs) for t in study.trials)
    return {"guide": guide, "pruner": pruner, "trials": len(states), "pruned": states.count("PRUNED"),
            "epochs_trained": trained, "seconds": seconds, "best_validation_log_px": study.best_value,
            "best_lr": study.best_params["lr"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--guides", nargs="+", default=["normal", "meanfield"])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = data.load("digits", binarize="static")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for guide in args.guides:
            for pruner in ("none", "median"):
                rows.append(run(ds, guide, pruner, args.trials, args.epochs, Path(tmp)))
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    full = table[table["pruner"] == "none"].set_index("guide")["seconds"]
    table["seconds_over_unpruned"] = table["seconds"] / table["guide"].map(full)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "tune_pruning.csv", index=False)
    shown = table.apply(lambda c: c.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v))
    (args.out / "tune_pruning.md").write_text(
        f"Measured by `python benchmarks/tune_pruning.py --guides {' '.join(args.guides)} --trials {args.trials} "
        f"--epochs {args.epochs}` on "
        f"{platform.system()} {platform.machine()}, 1 thread, torch {torch.__version__}, pyro {pyro.__version__}; "
        f"digits, the default tune settings (validation log p(x) on 100 points, measured at the default "
        f"--budget-epochs), one study per row.\n\n" + markdown(shown) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
