"""The README's loop, epoch by epoch, with Pyro's Trace_ELBO and with the compiled one it now uses.

    python benchmarks/readme_loop.py          # 10 interleaved rounds, one thread; writes readme_loop.csv and .md

Both variants are the README's script verbatim but for the loss: digits (static binarization), z = 8, hidden 128,
batch 128, ``LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})``, 10 epochs a round, Pyro's validation at its
default (on). ``objectives.make("trace", jit=True)`` is Pyro's ``JitTrace_ELBO``: the first step traces the model and
guide (with validation) and later steps replay the trace. Rounds alternate the variants so that both see the same
machine; the table gives medians over rounds of the seconds per epoch, and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

import guides
from pyro_vae import data, models, objectives
from pyro_vae.optim import LazyAdam
from pyro_vae.report import markdown

HERE = Path(__file__).resolve().parent
LOSSES = {"Trace_ELBO()": Trace_ELBO, 'objectives.make("trace", jit=True)': lambda: objectives.make("trace", jit=True)}


def seconds_per_epoch(ds, guide_name: str, loss, epochs: int) -> float:
    """The README's loop for ``epochs`` epochs from seed 0; seconds per epoch (the first, compiling, included)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    n = len(ds.train)
    vae = models.VAE(x_dim=ds.x_dim, z_dim=8, hidden=(128,), num_data=n)
    sizes = {} if guide_name == "meanfield" else {"x_dim": ds.x_dim, "hidden": (128,)}
    guide = guides.make(guide_name, z_dim=8, num_data=n, **sizes)
    svi = SVI(vae.model, guide, LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2}), loss())
    start = time.perf_counter()
    for _ in range(epochs):
        for x, idx in ds.loader("train", batch_size=128, shuffle=True):
            svi.step(x, idx)
    return (time.perf_counter() - start) / epochs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = data.load("digits", binarize="static")
    times = {}
    for _ in range(args.rounds):
        for guide_name in ("normal", "mvn", "meanfield"):
            for name, loss in LOSSES.items():
                times.setdefault((guide_name, name), []).append(seconds_per_epoch(ds, guide_name, loss, args.epochs))
    rows = []
    for guide_name in ("normal", "mvn", "meanfield"):
        plain, jit = (statistics.median(times[(guide_name, name)]) for name in LOSSES)
        rows.append({"guide": guide_name, "trace_elbo_ms_per_epoch": 1000 * plain, "jit_ms_per_epoch": 1000 * jit,
                     "trace_elbo_over_jit": plain / jit, "rounds": args.rounds, "epochs_per_round": args.epochs})
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "readme_loop.csv", index=False)
    (args.out / "readme_loop.md").write_text(
        f"Measured by `python benchmarks/readme_loop.py` on {platform.system()} {platform.machine()}, 1 thread, "
        f"torch {torch.__version__}, pyro {pyro.__version__}; medians over {args.rounds} interleaved rounds of "
        f"{args.epochs} epochs of the README's loop (digits, z = 8, hidden 128, batch 128, LazyAdam).\n\n"
        + markdown(table.apply(lambda c: c.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v))) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
