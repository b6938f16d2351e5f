"""AIS and the K = 5 000 pass with the model's own densities against the same reading them from Pyro's trace.

    python benchmarks/ais_direct.py                  # writes benchmarks/ais_direct.csv and ais_direct.md
    python benchmarks/ais_direct.py --rounds 1 --points 20 --out /tmp/ad      # a smoke run

AIS evaluates log p(z) and log p(x | z) (and their gradients in z) at every leapfrog step of every chain:
``pyro_vae.ais.log_prior_likelihood`` reads them from a Pyro trace of the model, or, for a model whose module
offers ``log_prior_likelihood(x, z)`` (``models.LatentVariableModel``), takes them from it directly, and so does
``contract.log_joint``, the importance-weighted passes' and q* fits' log p(x, z). Both give the
same numbers from the same seed (``tests/test_ais.py``); this times them on a digits decoder trained with the
``normal`` encoder (``pyro-vae train --guide normal --epochs 100``), on its first test points, AIS from the
full-covariance q* (100 steps x 16 chains x 5 leapfrog; the digits study's test reads ran 10 leapfrog), against the
K = 5 000 importance-weighted pass with the same q* as proposal. One thread pinned to one core; the four variants
in interleaved rounds in this one process; medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyro
import torch

from pyro_vae import ais as ais_module, estimators, qstar, runs
from pyro_vae.report import markdown

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--decoder", default=None, help="a run folder of the digits decoder (trained there if absent)")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    torch.set_num_threads(1)
    folder = Path(args.decoder or Path(tempfile.mkdtemp(prefix="pyro-vae-ais-direct-")) / "digits")
    if not (folder / "checkpoint.pt").exists():
        runs.train({"guide": "normal", "epochs": 100, "out": str(folder), "no_progress": True, "threads": 1})
    run = runs.load_run(folder)
    model = run.model.model
    x = run.data.test[:args.points]
    rows = torch.arange(len(x))
    pyro.set_rng_seed(0)
    best = qstar.fit_local(model, x, "mvn", init=run.guide)
    start = best.distribution(x, rows)

    def traced(x, idx=None):  # the same model as a plain function: its densities come from the trace
        return model(x, idx)

    variants = {
        "K=5000 pass, mvn q* proposal": lambda: estimators.log_likelihood(model, best, x, rows, num_samples=5000),
        "K=5000 pass, densities from the trace": lambda: estimators.log_likelihood(traced, best, x, rows,
                                                                                    num_samples=5000),
        "AIS, the model's own densities": lambda: ais_module.ais(model, x, init=start, num_steps=args.steps,
                                                                 leapfrog_steps=5),
        "AIS, densities from the trace": lambda: ais_module.ais(traced, x, init=start, num_steps=args.steps,
                                                                leapfrog_steps=5),
    }
    seconds, values = {name: [] for name in variants}, {}
    for r in range(args.rounds):
        for name, f in variants.items():
            pyro.set_rng_seed(r)
            t0 = time.perf_counter()
            out = f()
            seconds[name].append(time.perf_counter() - t0)
            values[name] = float(out.mean()[0]) if isinstance(out, estimators.Estimate) else float(out.value.mean())
    iwae = statistics.median(seconds["K=5000 pass, mvn q* proposal"])
    table = pd.DataFrame([{"name": name, "seconds": statistics.median(s), "rounds": args.rounds, "points": len(x),
                           "ratio_to_iwae": statistics.median(s) / iwae, "log_px_last_round": values[name]}
                          for name, s in seconds.items()])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "ais_direct.csv", index=False)
    shown = table.assign(**{c: table[c].map(lambda v: f"{v:.4g}") for c in ("seconds", "ratio_to_iwae",
                                                                            "log_px_last_round")})
    (out / "ais_direct.md").write_text("\n".join([
        "# AIS and the K = 5 000 pass: the model's own densities against densities read from the trace", "",
        f"`python benchmarks/ais_direct.py` on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"one thread pinned to one core; {args.steps} steps x 16 chains x 5 leapfrog; medians of {args.rounds} "
        f"interleaved rounds; log p(x) in nats per datapoint.", "", markdown(shown.astype(str)), ""]))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
