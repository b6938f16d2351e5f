"""One training run for tests/test_distributed.py: under torchrun (P processes) or alone (one process).

    torchrun --standalone --nproc_per_node=2 tests/ddp_run.py OUT --guide delta --epochs 3
    python tests/ddp_run.py OUT --guide delta --epochs 3 --shards 2      # the one-process reference

Writes OUT/history.csv (rank 0), OUT/rows{RANK}.pt (the per-datapoint rows each rank ends with, its shard's, with
their dataset indices, and the model) and, with --checkpoint, OUT/checkpoint.pt. The ``delta`` guide is a point estimate, q(z) = Delta:
the loss is then a deterministic function of the batches, so P processes must equal one
process up to the all-reduce's floating-point order.
"""

import argparse
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

import guides
from guides.base import Guide
from pyro_vae import data, distributed, models
from pyro_vae.nets import mlp
from pyro_vae.optim import LazyAdam
from pyro_vae.train import fit


class DeltaWithRows(Guide):
    """q(z | x, i) = Delta(encoder(x) + offset_i): an amortized point estimate plus a per-datapoint row.

    The encoder is all-reduced by DDP, the ``offset`` rows are not: one guide exercises both.
    For new points (``idx=None``) the offset is 0, so the test -ELBO is defined.
    """

    shardable = True  # reads its rows through local_rows: a process can hold its shard alone

    def __init__(self, x_dim, z_dim, num_data):
        super().__init__(z_dim, num_data, "delta_with_rows")
        self.encoder = mlp(x_dim, (16,), z_dim)
        self.offset = torch.nn.Parameter(0.1 * torch.randn(num_data, z_dim, generator=torch.Generator().manual_seed(1)))

    def row_parameter_names(self):
        return ["offset"]

    def distribution(self, x, idx=None):
        loc = self.encoder(x)
        if idx is not None:
            loc = loc + F.embedding(self.local_rows(idx), self.offset, sparse=True)
        return dist.Delta(loc, event_dim=1)


def dataset(n: int = 96, d: int = 12) -> data.Dataset:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n + 32, d, generator=g) < torch.linspace(0.1, 0.9, d)).float()
    return data.from_tensors(x[:n], x[n:], binarize="static")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--guide", default="delta", choices=["delta", "normal", "meanfield"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shards", type=int, default=None)
    p.add_argument("--checkpoint", action="store_true")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    pyro.settings.set(module_local_params=True)
    device = distributed.init() if distributed.launched_by_torchrun() else torch.device("cpu")
    ds = dataset()
    n = len(ds.train)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = models.VAE(ds.x_dim, 2, (16,), likelihood="bernoulli", num_data=n)
    guide = {"delta": lambda: DeltaWithRows(ds.x_dim, 2, n),
             "normal": lambda: guides.make("normal", x_dim=ds.x_dim, z_dim=2, hidden=(16,), num_data=n),
             "meanfield": lambda: guides.make("meanfield", z_dim=2, num_data=n)}[args.guide]()
    # eps = 1 for the rows: Adam with a tiny eps is blind to the scale of a gradient, and the rows' gradient
    # must be that of the ranks' average loss (divided by P); with eps = 1 a wrong scale moves the rows elsewhere
    optim = LazyAdam({"lr": 1e-2}, sparse_args={"lr": 1e-1, "eps": 1.0})
    history = fit(model, guide, ds, epochs=args.epochs, batch_size=args.batch_size, distributed=True,
                  shards=args.shards, optim=optim, device=str(device),
                  checkpoint_dir=str(out) if args.checkpoint or args.resume else None, resume=args.resume,
                  progress=False, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    rows = {name: p.detach().clone() for name, p in guide.named_parameters() if name in guide.row_parameter_names()}
    held = guide.shard.dataset_rows() if guide.shard is not None else torch.arange(n)
    torch.save({"rows": rows, "dataset_rows": held, "model": model.state_dict()}, out / f"rows{distributed.rank()}.pt")
    if distributed.is_main():
        history.to_csv(out / "history.csv", index=False)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears the group down while another still uses it
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
