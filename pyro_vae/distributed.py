"""Data-parallel training on ``torch.distributed``: one process per core or GPU, launched by torchrun.

Usage, from the command line or from a script launched the same way::

    torchrun --standalone --nproc_per_node=2 --no-python pyro-vae train --guide normal --distributed

    # script.py, run as: torchrun --standalone --nproc_per_node=2 script.py
    from pyro_vae import distributed
    pyro.settings.set(module_local_params=True)   # before the model and guide are built
    device = distributed.init()          # the process group torchrun describes: gloo on CPU, nccl on CUDA
    history = fit(vae, guide, ds, epochs=50, distributed=True, device=device, checkpoint_dir="runs/ddp")
    if distributed.is_main():            # rank 0 alone writes files
        history.to_csv("history.csv")

Each rank builds the same model and guide, and each step is Pyro's ELBO as a module (the pattern
of Pyro's ``examples/svi_lightning.py``), wrapped in ``DistributedDataParallel``::

    pyro.settings.set(module_local_params=True)   # before building the modules, as Pyro requires
    elbo = DistributedDataParallel(Trace_ELBO()(vae, guide))
    loss = elbo(x, idx)              # this rank's batch: -ELBO scaled to the full data
    loss.backward()                  # DDP all-reduces (averages) the networks' gradients
    optim(params)                    # a Pyro optimizer, stepped on the module's parameters

There is no ``svi.step`` here: ``SVI`` owns its backward pass, and DDP must hook into it. Each
rank's loss is ``(N / b) sum_i loss_i`` over its ``b = B / P`` rows, so the average DDP takes is
``(N / B) sum_i loss_i`` over the global batch of ``B``: the single-process loss at batch size
``B``.

**Per-datapoint rows.** The training set is cut into fixed shards (:class:`ShardSampler`), one
per rank, reshuffled within the shard every epoch. Rank r holds only the rows of its shards
(:func:`prepare` calls :func:`pyro_vae.rows.keep_shard`: ``N / P`` rows, in memory or in its own
folder of row files), and the guide maps a dataset index to its row there
(:meth:`guides.base.Guide.local_rows`). DDP is told to ignore those tensors: no collective ever
touches a row. Their sparse gradient is divided by ``P``, which makes it the gradient of the same
averaged objective (for Adam the scale matters only through ``eps``).

**Checkpoints** (:func:`save`): each rank writes its rows and their Adam moments to
``shards/epoch{E}.rank{r}.pt`` (with rows in files, only the name of the files' copy that holds
epoch E), then rank 0 writes ``checkpoint.pt``, the shared part and a manifest naming the shards:
the commit. A rank killed while writing leaves the previous ``checkpoint.pt`` and its shards in
place. ``--resume`` needs the same number of processes (each continues its own shard and random
stream); ``load_run`` and ``pyro-vae evaluate`` put the shards together.

Across machines, the same command under torchrun's rendezvous, on every node::

    torchrun --nnodes=2 --nproc_per_node=1 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=RUN \\
        --no-python pyro-vae train --guide meanfield --distributed --out runs/ddp
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pandas as pd
import pyro
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import InputError
from . import checkpoint, objectives, rows
from .loop import COLUMNS, preflight, test_elbo_loss
from .progress import progress_bar

#: environment variables torchrun sets in every process it launches
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH = "torchrun --standalone --nproc_per_node=P --no-python pyro-vae train ... --distributed"


class DistributedError(InputError):
    """Data-parallel training asked for where it cannot run (no torchrun, a mismatched checkpoint, ...)."""


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (its environment names a rank and a rendezvous)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def init(device: str = "cpu", timeout_s: float = 600.0) -> torch.device:
    """Join the process group torchrun describes; returns this rank's device.

    gloo for ``device="cpu"``, nccl for CUDA with one GPU per rank (``cuda:LOCAL_RANK``).
    Does nothing but return the device when the group already exists.

    :raises DistributedError: when the process was not launched by torchrun.
    """
    if not dist.is_initialized():
        if not launched_by_torchrun():
            raise DistributedError(f"distributed training needs the processes torchrun starts; launch with "
                                   f"`{LAUNCH}` (missing {', '.join(k for k in TORCHRUN_ENV if k not in os.environ)}).")
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    if torch.device(device).type == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(local)
        return local
    return torch.device(device)


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes training together (1 outside a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, which alone writes checkpoints, tables and figures (and outside a process group)."""
    return rank() == 0


def rank_seed(seed: int, r: int) -> int:
    """The RNG seed of rank ``r``: ``seed`` itself on rank 0, an independent stream on the others."""
    return seed if r == 0 else int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


class ShardSampler:
    """Mini-batches of dataset indices for data-parallel training: fixed shards, a new order every epoch.

    Shard ``s`` of ``shards`` holds rows ``s, s + shards, s + 2 shards, ...`` of the training set,
    always the same, so a per-datapoint guide's row lives with its datapoint on one rank. Rank
    ``r`` of ``world`` takes shards ``r k, ..., r k + k - 1`` (``k = shards / world``). Every
    epoch each shard is shuffled by a generator seeded with ``(seed, epoch, shard)``, the way
    torch's ``DistributedSampler`` seeds by epoch, so that a resumed run needs no sampler state.
    Shards one row short repeat their first row, so every rank takes the same number of
    equal-sized steps (DDP needs every rank in every all-reduce).

    Step ``t`` of a rank is the concatenation of step ``t`` of each of its shards, each
    ``batch_size / shards`` rows: a process with ``world=1`` and ``shards=P`` takes, step by
    step, the union of what ``P`` ranks take — the one-process run that the ``P``-process run
    must equal.

    :param int num_data: N, the training rows.
    :param int batch_size: B, the global batch (all ranks together); a multiple of ``shards``.
    """

    def __init__(self, num_data: int, batch_size: int, world: int = 1, shards: Optional[int] = None, seed: int = 0):
        shards = world if shards is None else shards
        if shards % world:
            raise DistributedError(f"{shards} shards cannot be split among {world} processes: give a multiple.")
        if batch_size % shards:
            raise DistributedError(f"the batch size {batch_size} is the global batch of {shards} shards: give a "
                                   f"multiple of {shards} (each shard takes batch_size / {shards} rows a step).")
        if num_data < shards:
            raise DistributedError(f"{num_data} training rows cannot fill {shards} shards.")
        self.num_data, self.batch_size, self.world, self.shards, self.seed = num_data, batch_size, world, shards, seed
        self.shard_batch = batch_size // shards
        self.shard_size = math.ceil(num_data / shards)

    def shard(self, s: int) -> torch.Tensor:
        """The dataset indices of shard ``s``: ``(N / shards,)`` rounded up or down."""
        return torch.arange(s, self.num_data, self.shards)

    def shard_of(self, r: int) -> rows.Shard:
        """The rows rank ``r`` holds (of a per-datapoint guide's parameters): its shards, one after another."""
        k = self.shards // self.world
        return rows.Shard(self.num_data, self.shards, r * k, k)

    def owned(self, r: int) -> torch.Tensor:
        """The dataset indices rank ``r`` holds (the rows whose per-datapoint parameters it trains), in the order
        it holds them."""
        return self.shard_of(r).dataset_rows()

    def batches(self, epoch: int, r: int) -> List[torch.Tensor]:
        """Rank ``r``'s batches of ``epoch``: index tensors ``(B / world,)`` (the last may be shorter)."""
        k = self.shards // self.world
        orders = [self._order(epoch, s) for s in range(r * k, (r + 1) * k)]
        steps = range(0, self.shard_size, self.shard_batch)
        return [torch.cat([o[t:t + self.shard_batch] for o in orders]) for t in steps]

    def _order(self, epoch: int, s: int) -> torch.Tensor:
        rows = self.shard(s)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch, s]).generate_state(1)[0]))
        rows = rows[torch.randperm(len(rows), generator=g)]
        return torch.cat([rows, rows[: self.shard_size - len(rows)]])  # pad a short shard with its first rows


def prepare(guide, optim, num_data: int, batch_size: int, shards: Optional[int], seed: int) -> "ShardSampler":
    """Everything :func:`fit` checks before any work, and this rank's rows: the sampler of its shards, after
    ``guide`` keeps only their rows (:func:`pyro_vae.rows.keep_shard`; with one process it keeps them all).

    :raises DistributedError: for another optimizer than LazyAdam, parameters in Pyro's param store, a guide
        with rows that cannot be sharded, or a batch size and shard count that do not fit.
    """
    from .optim import LazyAdam

    if not isinstance(optim, LazyAdam):
        raise DistributedError(f"distributed training steps its parameters with pyro_vae.optim.LazyAdam, got "
                               f"{type(optim).__name__}: pass optim=LazyAdam({{...}}) (or none, the default).")
    if not pyro.settings.get("module_local_params"):
        raise DistributedError("distributed training needs module-local parameters: call "
                               "pyro.settings.set(module_local_params=True) before building the model and guide.")
    r, world = rank(), world_size()
    sampler = ShardSampler(num_data, batch_size, world, shards, seed)
    if world > 1 and guide.row_parameter_names():
        if not guide.shardable:
            raise DistributedError(f"{type(guide).__name__} has per-datapoint rows but does not read them through "
                                   f"guide.local_rows(idx), so a process cannot hold only its shard of them: read "
                                   f"them that way and set shardable = True.")
        shard = sampler.shard_of(r)
        if guide.shard is None:
            rows.keep_shard(guide, shard)
        elif guide.shard != shard:
            raise DistributedError(f"the guide holds the rows of shards {guide.shard.to_dict()}, and rank {r} of "
                                   f"{world} holds {shard.to_dict()}: build the guide again.")
    return sampler


def fit(model, guide, data, sampler: "ShardSampler", *, epochs: int, optim, loss, device, path: Optional[Path],
        state: Optional[dict], slots, progress: bool, seed: int, config: Optional[dict],
        on_epoch: Optional[Callable[[int, dict], None]]) -> pd.DataFrame:
    """:func:`pyro_vae.train.fit` with ``distributed=True``: see there and this module's docstring.

    Called on every rank of an initialized process group (or, with none, as one process over
    ``sampler.shards`` shards), after :func:`prepare` and with the checkpoint ``state`` to continue from (this
    rank's rows put back) and the ``slots`` of rows in files (or None). Every rank returns the same history, and
    its guide holds its own shard of the rows; rank 0 writes ``checkpoint.pt``, every rank its shard.
    """
    r, world = rank(), world_size()
    names = set(guide.row_parameter_names())
    elbo_loss = objectives.uncompiled(loss)  # DDP runs the module's forward eagerly; the JIT is not used
    history, start = [], 0
    elbo = elbo_loss(model, guide)  # an ELBOModule: its parameters are the model's and the guide's
    for module in (model, guide):  # module-local parameters are not in the param store: name them for optim
        local = dict(module.named_parameters())
        optim.names.update({local[k]: name for k, name in checkpoint.store_names(module).items()})
    row_params = [p for name, p in guide.named_parameters() if name in names]
    if state is not None:
        history, start = checkpoint.restore(state, model, guide, optim)
    first = sampler.shard_of(r)  # a check on rows this rank holds: the first of each of its shards
    preflight(model, guide, elbo_loss, model, guide, data, sampler.batch_size // sampler.shards,
              idx=(first.first + torch.arange(first.count)).to(data.train.device))
    if world > 1:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(elbo, [f"guide.{n}" for n in names])
        step_module = DistributedDataParallel(elbo, device_ids=[device] if device.type == "cuda" else None)
    else:
        step_module = elbo
    params = [p for p in elbo.parameters() if p.requires_grad]
    if state is not None:
        checkpoint.set_rng_state(state["distributed"]["rng"][r])
        state = None  # memory-mapped from the checkpoint file: let it go
    else:
        pyro.set_rng_seed(rank_seed(seed, r))

    n_train = len(data.train)
    bar = progress_bar(range(start, epochs), f"fit {type(guide).__name__} ({world} processes)",
                       progress and r == 0, initial=start, total=epochs)
    for epoch in bar:
        t0, total = time.perf_counter(), 0.0
        if slots is not None:
            slots.begin(epoch + 1)
        for idx in sampler.batches(epoch, r):
            idx = idx.to(device)
            x = _rows(data, idx)
            if slots is not None:
                slots.visit(guide.local_rows(idx))
            step_loss = step_module(x, idx)
            step_loss.backward()
            for p in row_params:  # the rows' gradient of the ranks' average loss (DDP averages the rest)
                if p.grad is not None and world > 1:
                    p.grad = p.grad / world
            optim([p for p in params if p.grad is not None])
            for p in params:
                p.grad = None
            step_total = torch.tensor([step_loss.item() * len(idx) / n_train], dtype=torch.float64,
                                      device=device)  # nccl reduces only tensors on the GPU
            if world > 1:
                dist.all_reduce(step_total)  # the global batch's loss, and every rank learns of a NaN
            if not math.isfinite(step_total.item()):
                raise FloatingPointError(f"the loss was {step_total.item()} at epoch {epoch + 1} on some rank: "
                                         f"lower the learning rate, or check the data and the likelihood's scale.")
            total += step_total.item()
        seconds = time.perf_counter() - t0
        on_disk = slots.finish() if slots is not None else None
        test_loss = _broadcast(test_elbo_loss(model, guide, data.test) if r == 0 else 0.0, world, device)
        history.append({"epoch": epoch + 1, "train_loss": total / n_train, "test_loss": test_loss,
                        "seconds": seconds})
        if on_epoch is not None:
            rng = checkpoint.rng_state()
            on_epoch(epoch + 1, dict(history[-1]))
            checkpoint.set_rng_state(rng)
        bar.set_postfix({"train": f"{history[-1]['train_loss']:.2f}"}, refresh=False)
        if path is not None:
            save(path, model, guide, optim, history, config, sampler, on_disk)
    return pd.DataFrame(history, columns=COLUMNS)


def save(path: Path, model, guide, optim, history, config, sampler: "ShardSampler", on_disk: Optional[dict]) -> None:
    """The checkpoint of a data-parallel run, from every rank: each writes its shard of the rows (P > 1), then
    rank 0 writes ``checkpoint.pt`` naming them, the commit (:mod:`pyro_vae.checkpoint`). Returns on every rank
    once it is written."""
    r, world = rank(), world_size()
    epoch = len(history)
    part = checkpoint.rows_part(model, guide, optim, path.parent, on_disk)
    rng_states, files = [checkpoint.rng_state()], None
    if world > 1:
        mine, rng_states, files = rng_states[0], [None] * world, [None] * world
        dist.all_gather_object(rng_states, mine)
        name = checkpoint.save_shard(path.parent, epoch, r, part) if guide.row_parameter_names() else None
        dist.all_gather_object(files, name)  # every rank's shard is written (and fsynced) before the commit
    if r == 0:
        extra = {"distributed": {"world_size": world, "shards": sampler.shards, "rng": rng_states}}
        sharded = files is not None and files[0] is not None
        if sharded:
            extra["shards"] = {"files": files}
        elif on_disk:
            extra["rows_part"] = part
        checkpoint.save(path, model, guide, optim, history, config, extra=extra, rows_apart=sharded or bool(on_disk))
        if sharded:
            checkpoint.drop_old_shards(path.parent, epoch)
    if world > 1:
        dist.barrier()  # no rank starts the next epoch (or returns) before the checkpoint is written


def _rows(data, idx: torch.Tensor) -> torch.Tensor:
    """The training rows ``idx``: ``(len(idx), D)``, redrawn from the grey levels under dynamic binarization."""
    if data.binarize == "dynamic":
        return torch.bernoulli(data.train_probs[idx])
    return data.train[idx]


def _broadcast(value: float, world: int, device) -> float:
    """Rank 0's ``value`` on every rank (sent from ``device``: nccl sends only GPU tensors)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t)


@contextlib.contextmanager
def process_group(device: str = "cpu"):
    """``init(device)`` for a block, and the process group destroyed after it (what ``pyro-vae train`` does)."""
    local = init(device)
    try:
        yield local
        dist.barrier()  # on success, no rank tears the group down while another still uses it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def end_worker() -> None:
    """End a torchrun worker whose work is done and whose process group is destroyed: stdio flushed, exit status 0.

    The interpreter's teardown is skipped (``os._exit``): torch's gloo backend can abort there, with ``terminate
    called without an active exception`` (SIGABRT), after every file is written. That turned a finished
    ``pyro-vae train --distributed`` into torchrun's exit status 1 once in CI (rank 1, after rank 0 had written
    the run and printed its summary); a command must not report a finished run as failed.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(0)
