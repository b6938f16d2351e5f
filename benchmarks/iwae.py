"""The IWAE objective against Trace_ELBO on digits: test log p(x) at equal epochs and at equal seconds.

    python benchmarks/iwae.py                       # 3 seeds, 300 epochs; writes benchmarks/iwae.csv and iwae.md
    python benchmarks/iwae.py --seeds 0 --epochs 20 --out /tmp/iwae    # a smoke run

For each seed, in one process and one after the other (so both see the same machine):

1. ``pyro-vae train --guide normal --epochs E --seed s`` (Trace_ELBO, compiled by Pyro's JIT as ``fit`` does);
2. ``pyro-vae train --guide normal --loss iwae --particles K --epochs E --seed s`` (``objectives.iwae``, uncompiled);
3. the Trace_ELBO run resumed (``--resume``, which continues exactly) to the epoch at which its training
   seconds reach the IWAE run's: the equal-seconds comparison gives Trace_ELBO the IWAE run's time.

Each decoder is judged on every test point by the importance-weighted log p(x) with ``--ll-samples``
draws from its own encoder's q (the IWAE-trained encoder is the proposal it was trained to be), and by
its test ELBO L[q] (``--elbo-samples`` draws). Nats per datapoint; ``_se`` columns are standard errors
of the mean across test points; ``diff_*`` rows are IWAE minus Trace_ELBO, paired across test points.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyro
import torch

from pyro_vae import estimators, runs

HERE = Path(__file__).resolve().parent


def judge(run, ll_samples: int, elbo_samples: int, seed: int) -> dict:
    """Test log p(x) (importance-weighted, proposal the run's encoder) and test ELBO, per test point."""
    x = run.data.test
    pyro.set_rng_seed(seed)
    model, guide = run.model.model, run.guide
    return {"log_px": estimators.log_likelihood(model, guide, x, num_samples=ll_samples).value,
            "elbo": estimators.elbo(model, guide, x, num_samples=elbo_samples).value}


def train(out: Path, seed: int, epochs: int, loss: str, particles: int, resume: bool = False):
    cfg = {"guide": "normal", "elbo": loss, "particles": particles, "epochs": epochs, "seed": seed,
           "out": str(out), "no_progress": True}
    return runs.train(cfg, resume=resume)


def compare_seed(root: Path, seed: int, epochs: int, particles: int, ll_samples: int, elbo_samples: int):
    """The three runs of one seed: per-test-point values and one summary row per run."""
    trace = train(root / f"trace_{seed}", seed, epochs, "trace", particles)
    trace_seconds = float(trace.history["seconds"].sum())
    judged = {"trace, equal epochs": (trace, judge(trace, ll_samples, elbo_samples, seed))}
    iwae = train(root / f"iwae_{seed}", seed, epochs, "iwae", particles)
    iwae_seconds = float(iwae.history["seconds"].sum())
    judged[f"iwae{particles}"] = (iwae, judge(iwae, ll_samples, elbo_samples, seed))
    per_epoch = trace_seconds / epochs
    equal = max(epochs, round(iwae_seconds / per_epoch))
    longer = train(root / f"trace_{seed}", seed, equal, "trace", particles, resume=True)
    judged["trace, equal seconds"] = (longer, judge(longer, ll_samples, elbo_samples, seed))
    rows = []
    for method, (run, values) in judged.items():
        rows.append({"seed": seed, "method": method, "epochs": int(run.history["epoch"].iloc[-1]),
                     "train_seconds": float(run.history["seconds"].sum()), **summary(values)})
    base = judged[f"iwae{particles}"][1]
    for method in ("trace, equal epochs", "trace, equal seconds"):
        diff = {k: base[k] - judged[method][1][k] for k in base}
        rows.append({"seed": seed, "method": f"diff: iwae{particles} - {method}", **summary(diff)})
    return rows


def summary(values: dict) -> dict:
    out = {}
    for name, v in values.items():
        out[name], out[f"{name}_se"] = float(v.mean()), float(v.std() / v.numel() ** 0.5)
    return out


def markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A pipe table (pandas' ``to_markdown`` needs tabulate, which this project does not install)."""
    def cell(v):
        if pd.isna(v):
            return ""
        return (f"{v:.0f}" if v.is_integer() else f"{v:.{digits}f}") if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--particles", type=int, default=5, help="K of the IWAE objective")
    p.add_argument("--ll-samples", type=int, default=5000)
    p.add_argument("--elbo-samples", type=int, default=500)
    p.add_argument("--out", type=Path, default=HERE, help="folder for iwae.csv and iwae.md")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows += compare_seed(Path(tmp), seed, args.epochs, args.particles, args.ll_samples, args.elbo_samples)
            print(pd.DataFrame(rows).tail(5).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    table = pd.DataFrame(rows)
    spread = table.groupby("method", sort=False)[["epochs", "train_seconds", "log_px", "elbo"]].agg(["mean", "std"])
    spread.columns = [f"{a}_{b}" for a, b in spread.columns]
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "iwae.csv", index=False)
    command = " ".join(["python benchmarks/iwae.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"Measured by `{command}`"
              f" on {platform.system()} {platform.machine()}, {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}, pyro {pyro.__version__}. Digits (static binarization), `normal` guide, "
              f"64-256-8, batch 128, Adam 1e-3; test log p(x) importance-weighted with {args.ll_samples} draws "
              f"from each run's encoder on all {len(runs.load_data({}).test)} test points; nats per datapoint.\n")
    md = [header, "Per seed (`_se`: across test points):\n", markdown(table.astype({"epochs": "Int64"})),
          "\nMean and standard deviation across seeds:\n", markdown(spread.reset_index())]
    (args.out / "iwae.md").write_text("\n".join(md) + "\n")
    print(spread.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}/iwae.csv and iwae.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
