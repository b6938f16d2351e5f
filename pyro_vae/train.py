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
import copy
import math
import os
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from . import estimators, objectives
from .nets import frozen
from .progress import progress_bar
from .rows import is_mapped
from .threads import intra_op_threads, training_threads

CHECKPOINT = "checkpoint.pt"
#: the checkpoint before the latest, kept so that a corrupted latest one does not cost the run
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
#: the format of the checkpoints this version writes and reads
CHECKPOINT_VERSION = 1
COLUMNS = ["epoch", "train_loss", "test_loss", "seconds"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, corrupted, or of another format version."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint written in another format version: intact, but not for this pyro-vae to read."""


class CheckpointWarning(UserWarning):
    """Resuming from the previous checkpoint because the latest one cannot be read."""


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
        read); the run then reproduces the uninterrupted run's losses exactly.
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
        random state is put back after it, so it does not change the run's losses.
    :param train_model: False holds the model's parameters fixed for the whole run (every ``svi.step`` runs
        with the model frozen, as a guide-only step does): only the guide trains, e.g. a new encoder for a
        trained decoder (:func:`pyro_vae.compare.encoder_width_sweep`).
    :param distributed: data-parallel training, one process per core or GPU: call ``fit`` on every rank of a
        process group (``torchrun``, then :func:`pyro_vae.distributed.init`). ``batch_size`` is the global batch,
        each rank takes ``batch_size / P`` rows of its fixed shard of the training set, and the step is Pyro's
        ELBO as a module inside ``DistributedDataParallel`` (see :mod:`pyro_vae.distributed`): no ``svi.step``,
        no JIT, ``local_steps=1`` and ``train_model=True`` only; ``optim`` must be a LazyAdam. Every rank returns
        the same history; rank 0 alone writes the checkpoint. Resume needs the same number of processes.
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

    _check_setup(model, guide, data, epochs, batch_size, local_steps)
    if shards is not None and not distributed:
        raise ValueError("shards splits the training set among data-parallel processes: pass distributed=True.")
    if distributed and (local_steps != 1 or not train_model):
        raise ValueError("distributed training runs plain SVI steps: local_steps=1 and train_model=True.")
    if torch.device(device).type != "cpu" and any(is_mapped(p) for p in guide.parameters()):
        raise ValueError(f"the guide's rows are memory-mapped files (pyro_vae.rows.memory_map), which live on the "
                         f"CPU: train on the CPU, or keep the rows in memory for device={device!r}.")
    model.to(device)
    guide.to(device)
    data = data.to(device)  # batches are then cut on the device
    optim = optim if optim is not None else LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    if loss is None:
        loss = objectives.make("trace", jit=objectives.jit_safe(model, guide) if jit is None else jit)
    if distributed:
        from . import distributed as ddp

        return ddp.fit(model, guide, data, epochs=epochs, batch_size=batch_size, optim=optim, loss=loss,
                       device=torch.device(device), shards=shards, checkpoint_dir=checkpoint_dir, resume=resume,
                       progress=progress, seed=seed, config=config, on_epoch=on_epoch)
    # one SVI for every step: a guide-only step (local_steps, train_model=False) is svi.step with the model frozen
    svi = SVI(model.model, guide, optim, loss)
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None

    rows, start, state = [], 0, None
    if resume:
        if path is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder of the run to continue.")
        state = read_run_checkpoint(path, mmap=True)  # the rows are copied into place page by page
        if "distributed" in state:
            raise ValueError(f"{path} was written by {state['distributed']['world_size']} processes: resume it in as "
                             f"many with distributed=True (torchrun ... --distributed); one process cannot continue "
                             f"their random streams.")
        if state["epoch"] > epochs:
            raise ValueError(f"the run in {path.parent} has already trained {state['epoch']} epochs: pass epochs > "
                             f"{state['epoch']} to continue it (epochs counts from the start of the run).")
        rows, start = _restore(state, model, guide, optim)
    _preflight(svi.model, svi.guide, loss, model, guide, data, batch_size)
    if state is not None:
        _set_rng_state(state["rng"])  # after the preflight, which draws random numbers
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
            for x, idx in data.loader("train", batch_size, shuffle=True):
                step_loss = visit(svi, model, x, idx, local_steps)
                if not math.isfinite(step_loss):
                    raise FloatingPointError(
                        f"svi.step returned {step_loss} at epoch {epoch + 1} (batch of rows {idx[:5].tolist()}...): "
                        f"lower the learning rate, or check the data and the likelihood's scale."
                    )
                total += step_loss * len(x) / n_train  # each step estimates the full-data loss
            seconds = time.perf_counter() - t0
            train_loss = total / n_train
            test_loss = test_elbo_loss(model, guide, data.test)
            rows.append({"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_loss, "seconds": seconds})
            if on_epoch is not None:
                rng = _rng_state()
                with intra_op_threads(own_threads):
                    on_epoch(epoch + 1, dict(rows[-1]))
                _set_rng_state(rng)
            shown = {"train": f"{train_loss:.2f}"}
            if math.isfinite(test_loss):
                shown["test"] = f"{test_loss:.2f}"
            bar.set_postfix(shown, refresh=False)
            if path is not None:
                _save_checkpoint(path, model, guide, optim, rows, config)
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


def _preflight(model_fn, guide_fn, loss, model, guide, data, batch_size) -> None:
    """One batch through Pyro's checks, and through the JIT's compilation; leaves no gradient behind.

    Validation is on for this one loss: it checks every site's shape, support and
    model/guide match with Pyro's own messages. A compiled loss is traced here, on the
    same callables ``svi.step`` uses (``model_fn``, ``guide_fn``), so the first training
    step does not draw extra random numbers for its compilation.
    """
    n = min(batch_size, len(data.train))
    x, idx = data.train[:n], torch.arange(n, device=data.train.device)
    with pyro.validation_enabled(True):
        Trace_ELBO().loss(model_fn, guide_fn, x, idx)
    if objectives.is_jit(loss):
        with objectives.quiet_jit():
            loss.loss_and_grads(model_fn, guide_fn, x, idx)
    for p in [*model.parameters(), *guide.parameters()]:
        p.grad = None


@torch.no_grad()
def test_elbo_loss(model, guide, x: torch.Tensor, chunk_size: int = 1024) -> float:
    """-ELBO of ``x: (n, D)`` under an amortized guide, one sample per point, in nats per datapoint.

    NaN for a per-datapoint guide, which has no q for points outside its training set.
    """
    if not getattr(guide, "amortized", True):
        return float("nan")
    total = sum(float(estimators.elbo(model.model, guide, x[i:i + chunk_size], None, num_samples=1).value.sum())
                for i in range(0, len(x), chunk_size))
    return -total / len(x)


def _check_setup(model, guide, data, epochs, batch_size, local_steps=1) -> None:
    """Clear errors before any step: a Dataset that fits the model, model and guide agree on N, sane sizes."""
    from .data import Dataset

    if not isinstance(data, Dataset):
        raise TypeError(
            f"fit needs a pyro_vae.data.Dataset (a train and a test split), got {type(data).__name__}: "
            f"wrap tensors with data.from_tensors(train, test), or load one with data.load(name)."
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("local_steps", local_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    model.check_data(data.train, "data.train")
    model.check_data(data.test, "data.test")
    for who, obj in (("model", model), ("guide", guide)):
        meta = [n for n, p in obj.named_parameters() if p.device.type == "meta"]
        if meta:
            raise ValueError(f"the {who}'s {', '.join(meta[:3])} are shapes only (built on the meta device): "
                             f"give them values first, rows.memory_map(guide, optim, folder) for a per-datapoint "
                             f"guide's rows.")
    n = len(data.train)
    for who, obj in (("model", model), ("guide", guide)):
        if getattr(obj, "num_data", None) != n:
            raise ValueError(
                f"the {who} was built with num_data={getattr(obj, 'num_data', None)} but the training set has "
                f"{n} rows: build both with num_data=len(data.train) so mini-batches scale to the full data."
            )


# ---------------------------------------------------------------- checkpoints

def _store_names(module) -> dict:
    """Module-local parameter name -> name in Pyro's param store (PyroModule naming)."""
    out = {}
    for local, _ in module.named_parameters():
        short = local[: -len("_unconstrained")] if local.endswith("_unconstrained") else local
        out[local] = f"{module._pyro_name}.{short}" if module._pyro_name else short
    return out


def _rng_state() -> dict:
    """Every generator a run draws from: torch (CPU and, when present, every CUDA device), random, numpy."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "random": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) != torch.cuda.device_count():
            warnings.warn(f"the checkpoint holds the RNG state of {len(saved)} CUDA devices and this machine has "
                          f"{torch.cuda.device_count()}: CUDA draws will differ from the uninterrupted run.",
                          CheckpointWarning)
        for i, cuda_state in enumerate(saved[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)
    random.setstate(tuple(state["random"][:1]) + (tuple(state["random"][1]),) + tuple(state["random"][2:]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def _save_checkpoint(path: Path, model, guide, optim, rows, config, extra: Optional[dict] = None) -> None:
    """Write the checkpoint to a temp file in the same folder, then rename it over the old one.

    ``extra``: more fields (data-parallel runs add ``distributed``: the world size and every rank's RNG state).
    """
    to_local = {}
    for prefix, module in (("model", model), ("guide", guide)):
        to_local.update({store: f"{prefix}/{local}" for local, store in _store_names(module).items()})
    optim_state = optim.get_state()
    outside = sorted(set(optim_state) - set(to_local))
    if outside:
        raise ValueError(f"cannot checkpoint parameters outside the model and guide modules: {outside}.")
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": len(rows),
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "optim": {to_local[name]: s for name, s in optim_state.items()},
        "rng": _rng_state(),
        "history": [{k: float(v) for k, v in row.items()} for row in rows],
        "config": dict(config or {}),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_REQUIRED = ("version", "epoch", "model", "guide", "optim", "rng", "history", "config")


def load_checkpoint(path, mmap: bool = False) -> dict:
    """Read a checkpoint without executing pickled code (``torch.load(..., weights_only=True)``).

    :param mmap: map the tensors from the file (copy-on-write) instead of reading them into RAM, as resume
        does: a checkpoint of rows larger than RAM (:mod:`pyro_vae.rows`) is then read page by page as it is
        copied into place. The file must not be rewritten while the tensors live (pyro-vae's checkpoints
        replace the file, never rewrite it; a ``torch.save`` over the same path would end in a bus error).

    :raises CheckpointError: when the file is missing, cannot be read (truncated, not a
        checkpoint), lacks a field, or was written in another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"there is no checkpoint at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, foreign pickle, ...: torch raises several types
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
        if missing == ["version"]:
            raise CheckpointVersionError(f"{path} was written by pyro-vae before checkpoints carried a format "
                                         f"version; this version reads format {CHECKPOINT_VERSION}: train the run "
                                         f"again.")
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (missing {', '.join(missing)}).")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointVersionError(f"{path} has checkpoint format {state['version']} and this pyro-vae reads "
                                     f"format {CHECKPOINT_VERSION}: use the pyro-vae that wrote it, or train the "
                                     f"run again.")
    return state


def read_run_checkpoint(path, mmap: bool = False) -> dict:
    """The latest readable checkpoint of a run: ``path``, else ``checkpoint.prev.pt`` beside it, with a warning.

    ``mmap``: as for :func:`load_checkpoint` (resume maps it; the tensors are copied into place).

    A checkpoint of another format version is intact work of another pyro-vae: it is never
    passed over for the previous one (resuming would overwrite it).

    :raises CheckpointError: when neither can be read; the message names both problems.
    :raises CheckpointVersionError: when the latest one is of another format version.
    """
    path = Path(path)
    try:
        return load_checkpoint(path, mmap)
    except CheckpointVersionError:
        raise
    except CheckpointError as latest:
        previous = path.with_name(PREVIOUS_CHECKPOINT)
        if not previous.exists():
            raise
        try:
            state = load_checkpoint(previous, mmap)
        except CheckpointError as earlier:
            raise CheckpointError(f"{latest}; and the previous one: {earlier}") from earlier
        warnings.warn(f"{latest}; resuming from {previous.name} (epoch {state['epoch']}) instead: the epochs after "
                      f"it are trained again, with the same result.", CheckpointWarning, stacklevel=3)
        return state


def _restore(state: dict, model, guide, optim):
    """Put a checkpoint's weights and optimizer state in place; returns (history rows, epochs done).

    The RNG state is restored by the caller, last, once nothing else draws random numbers.
    """
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    to_store = {}
    for prefix, module in (("model", model), ("guide", guide)):
        to_store.update({f"{prefix}/{local}": store for local, store in _store_names(module).items()})
    from .optim import LazyAdam

    saved = state["optim"]
    if not isinstance(optim, LazyAdam):  # torch's load_state_dict keeps the saved tensors, maybe mapped from a file
        saved = copy.deepcopy(saved)  # copies every tensor into memory
    optim.set_state({to_store[local]: s for local, s in saved.items()})
    rows = [{**row, "epoch": int(row["epoch"])} for row in state["history"]]
    return rows, int(state["epoch"])
