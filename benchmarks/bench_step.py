"""Speed of one training step, side by side in one run, as ratios.

    python benchmarks/bench_step.py [--repeats 200] [--out benchmarks/step_times.csv]

Rows (median seconds per step over ``repeats`` steps, batch 128, 64-256-8 nets):

- ``torch``: a hand-written PyTorch VAE step (encode, reparameterize, decode,
  ELBO, Adam) on the very same encoder and decoder modules;
- ``svi normal`` / ``svi mvn``: ``svi.step`` with our model and guides;
- ``svi meanfield (LazyAdam)``: the per-datapoint guide at N = 60000 with
  sparse row gathering and SparseAdam;
- ``svi meanfield dense (Adam)``: the same guide written the naive way, a
  dense (N, K) PyroParam indexed by idx and plain Adam (Pyro issue #2386).

``ratio`` is each row's time over the hand-written PyTorch step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule, PyroParam

import guides
from pyro_vae import models
from pyro_vae.contract import SITE, data_plate
from pyro_vae.optim import LazyAdam

X_DIM, Z_DIM, HIDDEN, BATCH, N_LOCAL = 64, 8, (256,), 128, 60000


class DenseMeanField(PyroModule):
    """The naive per-datapoint guide: (N, K) PyroParams subsampled by the plate; every row moves every step."""

    def __init__(self, num_data):
        super().__init__("dense_meanfield")
        self.num_data = num_data
        self.loc = PyroParam(torch.zeros(num_data, Z_DIM), event_dim=1)
        self.scale = PyroParam(torch.ones(num_data, Z_DIM), dist.constraints.positive, event_dim=1)

    def forward(self, x, idx):
        with data_plate(x, idx, self.num_data, owner="DenseMeanField"):
            pyro.sample(SITE, dist.Normal(self.loc, self.scale).to_event(1))


def time_steps(step, repeats):
    for _ in range(10):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_step_fn(vae, guide, x):
    """A plain PyTorch VAE step on the same modules: no Pyro between the reader and the math."""
    params = list(vae.decoder.parameters()) + list(guide.encoder.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    n = N_LOCAL

    def step():
        loc, h = guide.encoder(x).split(Z_DIM, -1)
        scale = torch.nn.functional.softplus(h) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        log_lik = torch.distributions.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        loss = -(n / len(x)) * (log_lik + log_prior - log_q).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", default="benchmarks/step_times.csv")
    args = p.parse_args(argv)
    pyro.set_rng_seed(0)
    x = torch.bernoulli(torch.full((BATCH, X_DIM), 0.3))
    idx = torch.randperm(N_LOCAL)[:BATCH]
    rows = []

    def svi_step(guide, optim, vae):
        svi = SVI(vae.model, guide, optim, Trace_ELBO())
        return lambda: svi.step(x, idx)

    def new_vae():
        return models.VAE(X_DIM, Z_DIM, HIDDEN, num_data=N_LOCAL)

    vae = new_vae()
    normal = guides.make("normal", x_dim=X_DIM, z_dim=Z_DIM, hidden=HIDDEN, num_data=N_LOCAL)
    cases = {
        "torch": torch_step_fn(vae, normal, x),
        "svi normal": svi_step(normal, LazyAdam({"lr": 1e-3}), vae),
        "svi mvn": svi_step(guides.make("mvn", x_dim=X_DIM, z_dim=Z_DIM, hidden=HIDDEN, num_data=N_LOCAL),
                            LazyAdam({"lr": 1e-3}), new_vae()),
        "svi meanfield (LazyAdam)": svi_step(guides.make("meanfield", z_dim=Z_DIM, num_data=N_LOCAL),
                                             LazyAdam({"lr": 1e-2}), new_vae()),
        "svi meanfield dense (Adam)": svi_step(DenseMeanField(N_LOCAL), pyro.optim.Adam({"lr": 1e-2}), new_vae()),
    }
    for name, step in cases.items():
        rows.append({"step": name, "seconds": time_steps(step, args.repeats)})
    table = pd.DataFrame(rows)
    table["ratio_to_torch"] = table["seconds"] / table.loc[table.step == "torch", "seconds"].iloc[0]
    table.to_csv(args.out, index=False)
    print(f"batch {BATCH}, nets {X_DIM}-{HIDDEN[0]}-{Z_DIM}, N = {N_LOCAL}, torch threads {torch.get_num_threads()}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
