"""fit(): the loop around ``svi.step`` — progress bar, history, checkpoints, exact resume.

Usage::

    history = fit(vae, guide, ds, epochs=50, batch_size=128, optim=LazyAdam({"lr": 1e-3}),
                  checkpoint_dir="runs/mvn")
    history                          # DataFrame: epoch, train_loss, test_loss (nats per datapoint), seconds
    fit(vae, guide, ds, epochs=100, optim=LazyAdam({"lr": 1e-3}), checkpoint_dir="runs/mvn", resume=True)

Nothing here hides SVI: each epoch is ``for x, idx in ds.loader(...): svi.step(x, idx)``. With
``local_steps=T`` (variational EM), each batch first takes T - 1 of those steps with the model's
weights frozen (:func:`pyro_vae.nets.frozen`), so that only the guide's parameters for that batch
move, and then one that moves both.
``model`` is a model module with ``.model(x, idx)`` (a :class:`~pyro_vae.models.VAE`
or :class:`~pyro_vae.models.LinearGaussian`); ``guide`` is a guide module.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import pyro
import torch
from pyro.infer import SVI

from .errors import InputError
from . import checkpoint, objectives
from .checkpoint import (CHECKPOINT, CHECKPOINT_VERSION, PREVIOUS_CHECKPOINT, CheckpointError,  # noqa: F401
                         CheckpointVersionError, CheckpointWarning)  # (the names users know from here)
from .checkpoint import load as load_checkpoint  # noqa: F401
from .checkpoint import read_run as read_run_checkpoint  # noqa: F401
from .loop import COLUMNS, check_setup, check_values, preflight, test_elbo_loss
from .nets import frozen
from .progress import progress_bar
from . import rows as rows_files
from .rows import is_mapped
from .threads import intra_op_threads, training_threads

def fit(model, guide, data, *, epochs: int, batch_size: int = 128, optim=None, loss=None, jit: Optional[bool] = None,
        device: str = "cpu", checkpoint_dir: Optional[str] = None, resume: bool = False, progress: bool = True,
        seed: int = 0, config: Optional[dict] = None, validate_every_step: bool = False,
        local_steps: int = 1, on_epoch: Optional[Callable[[int, dict], None]] = None,
        train_model: bool = True, distributed: bool = False, shards: Optional[int] = None,
        threads: Optional[int] = None) -> pd.DataFrame:
    """Train ``model`` and ``guide`` by SVI on ``data.train`` for ``epochs`` epochs.

    Each epoch is ``for x, idx in data.loader("train", batch_size, shuffle=True): svi.step(x, idx)``.
    Before the first step, one batch goes through Pyro's checks (validation on: shapes,
    supports, model/guide match) and, with the JIT, through the compilation; only then is
    the RNG seeded (or restored from the checkpoint), so a compiled and a plain run, and a
    resumed and an uninterrupted one, draw the same random numbers.

    :param data: a :class:`pyro_vae.data.Dataset`.
    :param optim: a Pyro optimizer (default ``LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})``).
    :param loss: a Pyro ELBO (default ``Trace_ELBO()``, compiled as ``JitTrace_ELBO()`` when ``jit``).
    :param jit: compile the default loss with Pyro's JIT; None (default) does so when model and
        guide are both marked ``jit_safe`` (see :mod:`pyro_vae.objectives`). Ignored when
        ``loss`` is given: pass the compiled ELBO itself.
    :param checkpoint_dir: write ``checkpoint.pt`` there after every epoch, atomically (a temp
        file renamed over the old one), keeping the one before as ``checkpoint.prev.pt``.
    :param resume: continue from ``checkpoint_dir/checkpoint.pt`` (or, with a
        :class:`CheckpointWarning`, from ``checkpoint.prev.pt`` when the latest cannot be
        read); the run then reproduces the uninterrupted run's losses exactly. Rows on disk
        (:mod:`pyro_vae.rows`) are mapped from the copy of the files the checkpoint names: the guide
        may be built on the meta device, and ``memory_map`` is not called first.
    :param seed: seeds Pyro, torch, numpy and random at the start of a fresh run.
    :param config: JSON-able settings stored in the checkpoint.
    :param validate_every_step: keep Pyro's validation on for every step (default: only the
        checked first batch; the data are checked up front and a NaN loss stops the run at once,
        so later steps re-check nothing that can change, at about 10% of a step's time).
    :param local_steps: T, the optimization steps each batch's guide parameters take per visit
        (iterative training, variational EM with partial E-steps): T - 1 steps with the model's
        parameters held fixed (for a per-datapoint guide only that batch's rows move), then one
        ``svi.step`` that moves the model and the guide together. T = 1 (default) is plain SVI.
        With an amortized guide the extra steps train the encoder with the decoder fixed
        ("aggressive" inference-network training, He et al. 2019). The extra steps are the same
        ``svi.step`` with the model frozen (:func:`visit`): the same ``loss``, compiled where it is, and
        the same ``optim`` (the rows' Adam moments carry over).
    :param on_epoch: called as ``on_epoch(epoch, row)`` after each epoch (``row``: that epoch's history
        row), e.g. to measure the model during training. It runs outside the timed loop, and the
        random state is put back after it, so it does not change the run's losses. When it returns
        True the run stops after that epoch's checkpoint (early stopping; one process only).
    :param train_model: False holds the model's parameters fixed for the whole run (every ``svi.step`` runs
        with the model frozen, as a guide-only step does): only the guide trains, e.g. a new encoder for a
        trained decoder (:func:`pyro_vae.measure.encoder_width_sweep`).
    :param distributed: data-parallel training, one process per core or GPU: call ``fit`` on every rank of a
        process group (``torchrun``, then :func:`pyro_vae.distributed.init`). ``batch_size`` is the global batch,
        each rank takes ``batch_size / P`` rows of its fixed shard of the training set, and the step is Pyro's
        ELBO as a module inside ``DistributedDataParallel`` (see :mod:`pyro_vae.distributed`): no ``svi.step``,
        no JIT, ``local_steps=1`` and ``train_model=True`` only; ``optim`` must be a LazyAdam. Every rank returns
        the same history. A per-datapoint guide keeps only the rank's shard of its rows (``guide.shard``; it still
        takes dataset indices); each rank writes its shard of the checkpoint and rank 0 ``checkpoint.pt``, which
        names them. Resume needs the same number of processes.
    :param shards: with ``distributed``, the number of fixed shards of the training set (default: one per
        process). One process with ``shards=P`` takes the same global batches as ``P`` processes.
    :param threads: intra-op threads of the training steps (``on_epoch`` runs with the process's own count,
        which is put back at the end). None: one for a small model (batch x network parameters under
        :data:`pyro_vae.threads.SMALL`), which would stall with two when another process holds a core;
        torch's default otherwise (:func:`pyro_vae.threads.training_threads`).
    :returns: one row per epoch: ``epoch``, ``train_loss`` (mean ``loss`` over the
        epoch's steps: -ELBO, or -IWAE_K with ``objectives.iwae``), ``test_loss`` (-ELBO
        of the test split, one sample per point; NaN for per-datapoint guides, which have
        no parameters for test points), both in nats per datapoint, and ``seconds`` of training.
    :raises TypeError: when ``data`` is not a :class:`pyro_vae.data.Dataset`.
    :raises ValueError: before any step, when the data do not fit the model,
        model and guide disagree on the data set size, or ``epochs`` / ``batch_size``
        are not positive integers.
    :raises CheckpointError: when ``resume`` finds no readable checkpoint.
    :raises FloatingPointError: as soon as a step returns NaN or inf.
    """
    from .optim import LazyAdam

    check_setup(model, guide, data, epochs, batch_size, local_steps)
    if shards is not None and not distributed:
        raise InputError("shards splits the training set among data-parallel processes: pass distributed=True.")
    if distributed and (local_steps != 1 or not train_model):
        raise InputError("distributed training runs plain SVI steps: local_steps=1 and train_model=True.")
    optim = optim if optim is not None else LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    sampler, state, world, r = None, None, None, 0
    if distributed:
        from . import distributed as ddp

        sampler = ddp.prepare(guide, optim, len(data.train), batch_size, shards, seed)  # this rank's rows only
        world, r = ddp.world_size(), ddp.rank()
    if resume:
        state = checkpoint.read_to_continue(path, epochs, world, r)
    slots = None
    if path is not None:  # rows in files keep a copy per epoch (pyro_vae.rows.Slots): a checkpoint copies none
        folder = checkpoint.rows_folder(state, path.parent) if state is not None else None
        slots = rows_files.attach(guide, optim, folder, state["rows_on_disk"]["slot"]) if folder is not None \
            else rows_files.Slots.of(guide, optim)
    check_values(model, guide)
    if torch.device(device).type != "cpu" and any(is_mapped(p) for p in guide.parameters()):
        raise InputError(f"the guide's rows are memory-mapped files (pyro_vae.rows.memory_map), which live on the "
                         f"CPU: train on the CPU, or keep the rows in memory for device={device!r}.")
    model.to(device)
    guide.to(device)
    data = data.to(device)  # batches are then cut on the device
    if loss is None:
        loss = objectives.make("trace", jit=objectives.jit_safe(model, guide) if jit is None else jit)
    if distributed:
        return ddp.fit(model, guide, data, sampler, epochs=epochs, optim=optim, loss=loss,
                       device=torch.device(device), path=path, state=state, slots=slots,
                       progress=progress, seed=seed, config=config, on_epoch=on_epoch)
    # one SVI for every step: a guide-only step (local_steps, train_model=False) is svi.step with the model frozen
    svi = SVI(model.model, guide, optim, loss)

    rows, start = [], 0
    if state is not None:
        rows, start = checkpoint.restore(state, model, guide, optim)
    preflight(svi.model, svi.guide, loss, model, guide, data, batch_size)
    if state is not None:
        checkpoint.set_rng_state(state["rng"])  # after the preflight, which draws random numbers
        state = None  # the checkpoint is memory-mapped from its file: let it go once everything is copied out
    else:
        pyro.set_rng_seed(seed)

    n_train = len(data.train)
    bar = progress_bar(range(start, epochs), f"fit {type(guide).__name__}", progress, initial=start, total=epochs)
    own_threads = torch.get_num_threads()
    threads = training_threads(model, guide, batch_size) if threads is None else threads
    with pyro.validation_enabled(validate_every_step), objectives.quiet_jit(), intra_op_threads(threads), \
            (contextlib.nullcontext() if train_model else frozen(model)):
        for epoch in bar:
            t0, total = time.perf_counter(), 0.0
            if slots is not None:
                slots.begin(epoch + 1)
            for x, idx in data.loader("train", batch_size, shuffle=True):
                if slots is not None:
                    slots.visit(idx)
                step_loss = visit(svi, model, x, idx, local_steps)
                if not math.isfinite(step_loss):
                    raise FloatingPointError(
                        f"svi.step returned {step_loss} at epoch {epoch + 1} (batch of rows {idx[:5].tolist()}...): "
                        f"lower the learning rate, or check the data and the likelihood's scale."
                    )
                total += step_loss * len(x) / n_train  # each step estimates the full-data loss
            seconds = time.perf_counter() - t0
            on_disk = slots.finish() if slots is not None else None  # every row of this epoch in its copy, fsynced
            train_loss = total / n_train
            test_loss = test_elbo_loss(model, guide, data.test)
            rows.append({"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_loss, "seconds": seconds})
            stop = False
            if on_epoch is not None:
                rng = checkpoint.rng_state()
                with intra_op_threads(own_threads):
                    stop = bool(on_epoch(epoch + 1, dict(rows[-1])))
                checkpoint.set_rng_state(rng)
            shown = {"train": f"{train_loss:.2f}"}
            if math.isfinite(test_loss):
                shown["test"] = f"{test_loss:.2f}"
            bar.set_postfix(shown, refresh=False)
            if path is not None:
                extra = {"rows_part": checkpoint.rows_part(model, guide, optim, path.parent, on_disk)} if on_disk \
                    else None
                checkpoint.save(path, model, guide, optim, rows, config, extra=extra, rows_apart=bool(on_disk))
            if stop:  # early stopping: this epoch is checkpointed, and the run ends here
                break
    return pd.DataFrame(rows, columns=COLUMNS)


def visit(svi, model, x: torch.Tensor, idx: torch.Tensor, local_steps: int = 1) -> float:
    """One mini-batch ``x: (B, D)`` with dataset rows ``idx: (B,)``: ``local_steps - 1`` guide-only steps, then one
    step of model and guide together; returns the last ``svi.step``'s loss (nats, the batch's -ELBO estimate scaled
    to the full data).

    A guide-only step is the same ``svi.step`` (the same ELBO, compiled or not, and the same optimizer, so the rows'
    Adam moments carry over) with the model's weights frozen (:func:`pyro_vae.nets.frozen`): autograd computes no
    gradient for them, which saves about half a backward pass, and the optimizer, finding no gradient, does not
    move them (not even by Adam's momentum); none is left behind for the step that follows.
    """
    if local_steps > 1:
        with frozen(model):
            for _ in range(local_steps - 1):
                svi.step(x, idx)
    return svi.step(x, idx)


