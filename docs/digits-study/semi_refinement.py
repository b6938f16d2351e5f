"""What the refinement does at the semi_amortized arm's own decoders: L[q] on all 359 test digits of the encoder's q
alone (0 refinement steps) and of the refined q the arm trained with (Kim et al.'s 20 steps at lr 1), at each run's
selected checkpoint, with the diagonal q* of the study's own test read beside them.

    python docs/digits-study/semi_refinement.py      # writes docs/digits-study/semi-refinement.csv

Reads each finished run of runs/digits-study/compare-semi_amortized/ (its selected weights stay in runs/, so it runs
on the machine that trained them). Nats per test digit; ``_se`` is the standard error across digits of the paired
per-digit values (Monte Carlo noise included), each L[q] from 500 draws per digit, seed 0.
"""

import sys
from pathlib import Path

import pandas as pd
import pyro

from pyro_vae import estimators, runs
from pyro_vae.compare import finished

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "runs" / "digits-study" / "compare-semi_amortized" / "runs"
OUT = ROOT / "docs" / "digits-study" / "semi-refinement.csv"
DRAWS = 500


def main() -> int:
    rows = []
    for folder in sorted(p for p in STUDY.glob("*") if finished(p)):
        run = runs.load_run(folder, at="selected")
        x, guide, trained_steps = run.data.test, run.guide, run.guide.steps
        qstar = pd.read_csv(folder / "results.csv").set_index("split").loc["test", "elbo_qstar_normal"]
        values = {}
        for steps in (0, trained_steps):
            guide.steps = steps
            pyro.set_rng_seed(0)
            values[steps] = estimators.elbo(run.model.model, guide, x, num_samples=DRAWS).value.double()
        guide.steps = trained_steps
        change = values[trained_steps] - values[0]
        rows.append({"run": folder.name, "epoch": run.epoch, "refine_steps": trained_steps, "refine_lr": guide.lr,
                     "elbo_encoder": float(values[0].mean()), "elbo_refined": float(values[trained_steps].mean()),
                     "refined_minus_encoder": float(change.mean()),
                     "refined_minus_encoder_se": float(change.std() / len(change) ** 0.5),
                     "elbo_qstar_normal": float(qstar)})
        print(pd.DataFrame(rows).tail(1).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    if not rows:
        raise SystemExit(f"semi_refinement: {STUDY} holds no finished run")
    pd.DataFrame(rows).to_csv(OUT, index=False)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
