"""How tight is log p(x) on digits? BDMC brackets and the IWAE estimate, on data simulated from a trained decoder.

    python benchmarks/bdmc.py                     # writes benchmarks/bdmc.csv and bdmc.md
    python benchmarks/bdmc.py --steps 50 200 --points 20 --out /tmp/bdmc    # a smoke run
    python benchmarks/bdmc.py --run runs/mnist-5k-study/compare-normal/runs/normal-seed100 --at selected \
        --from-qstar --steps 30 --leapfrog 5 --out docs/mnist-5k-study/bdmc     # a study's decoder, its own AIS

A decoder is trained as ``pyro-vae train --guide normal`` (digits, static binarization, 300
epochs, seed 0), or read from a trained run (``--run``, at its selected checkpoint with ``--at
selected``). Then ``--points`` latents z ~ p(z) are drawn and images x ~ p(x | z) simulated
from it, so that each z is an exact posterior sample for its x. For each number of annealing
steps, forward AIS gives a stochastic lower bound and reverse AIS from z an upper bound of
log p(x) (Grosse, Ghahramani & Adams 2015); the bracket's width bounds the error of either. AIS
anneals from the prior, or with ``--from-qstar`` from the full-covariance q* fitted to the
simulated images with the decoder frozen (from the encoder's q where the run has an encoder),
as a study's ``--ais-steps`` reading does. The importance-weighted estimate with
``--ll-samples`` draws from the encoder, or from that q*, is put beside them. Nats per
datapoint; ``_se`` columns are standard errors across the points.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyro
import torch

from pyro_vae import estimators, gaps, qstar, runs
from pyro_vae.ais import bdmc
from pyro_vae.errors import InputError

from iwae import markdown  # benchmarks/ is on the path when a script here runs

HERE = Path(__file__).resolve().parent


def mean_se(values: torch.Tensor):
    return float(values.mean()), float(values.std() / values.numel() ** 0.5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 500, 2000], help="annealing steps of each run")
    p.add_argument("--points", type=int, default=100, help="simulated images")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=gaps.AIS_LEAPFROG, help="leapfrog steps per transition")
    p.add_argument("--epochs", type=int, default=300, help="epochs of the decoder trained here (without --run)")
    p.add_argument("--run", type=Path, help="a trained run's folder: its decoder instead of one trained here")
    p.add_argument("--at", help="with --run: 'selected' or a kept epoch (pyro-vae evaluate's --at)")
    p.add_argument("--from-qstar", action="store_true",
                   help="anneal from the full-covariance q* of the simulated images, not from the prior")
    p.add_argument("--ll-samples", type=int, default=5000)
    p.add_argument("--out", type=Path, default=HERE, help="folder for bdmc.csv and bdmc.md")
    args = p.parse_args(argv)
    if args.at is not None and args.run is None:
        p.error("--at reads a run's kept weights: give the run with --run")
    if args.run is not None:
        try:
            run = runs.load_run(args.run, at=runs.kept_weights(args.at))
        except InputError as e:  # not a run, no such kept weights, a damaged checkpoint: one line, exit 2
            p.error(str(e))
        source = f"the run {args.run} at epoch {run.epoch}" + (f" (--at {args.at})" if args.at else "")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run = runs.train({"guide": "normal", "epochs": args.epochs, "out": tmp, "no_progress": True})
        source = f"`pyro-vae train --guide normal --epochs {args.epochs}` (digits, 64-256-8)"
    model, guide = run.model, run.guide
    pyro.set_rng_seed(0)
    with torch.no_grad():
        z = torch.randn(args.points, model.z_dim)
        x = model.likelihood_dist(z).sample()
    rows_of_x = torch.arange(len(x))
    init = None
    if args.from_qstar:
        guide = qstar.fit_local(model.model, x, "mvn", init=guide if guide.amortized else None)
        with torch.no_grad():
            init = guide.distribution(x, rows_of_x)
    elif not guide.amortized:
        p.error(f"{args.run} has a per-datapoint guide, which has no q for new images: give --from-qstar")
    iwae = estimators.log_likelihood(model.model, guide, x, rows_of_x if args.from_qstar else None,
                                     num_samples=args.ll_samples)
    rows = []
    for steps in args.steps:
        pyro.set_rng_seed(1)
        t0 = time.perf_counter()
        table = bdmc(model.model, x, z, init=init, num_chains=args.chains, num_steps=steps,
                     leapfrog_steps=args.leapfrog)
        seconds = time.perf_counter() - t0
        lower, upper, width = (torch.tensor(table[c].values) for c in ("lower", "upper", "width"))
        row = {"num_steps": steps, "chains": args.chains, "points": args.points, "seconds": seconds,
               "start": "q*" if args.from_qstar else "prior",
               "leapfrog": args.leapfrog}
        for name, values in (("lower", lower), ("upper", upper), ("width", width),
                             ("iwae_minus_lower", iwae.value.double() - lower)):
            row[name], row[f"{name}_se"] = mean_se(values)
        row["width_max"] = float(width.max())
        row["iwae"] = float(iwae.value.mean())
        rows.append(row)
        print(pd.DataFrame(rows).tail(1).to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "bdmc.csv", index=False)
    command = " ".join(["python benchmarks/bdmc.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"Measured by `{command}` on {platform.system()} {platform.machine()}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, pyro {pyro.__version__}. Decoder: {source}; {args.points} images "
             f"simulated from it; AIS from {'q* (full covariance)' if args.from_qstar else 'the prior'}; nats per "
             f"datapoint.", "",
             markdown(table, digits=4)]
    (args.out / "bdmc.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}/bdmc.csv and bdmc.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
