"""fit(): the loop around ``svi.step`` — progress bar, history, checkpoints, exact resume.

Usage::

    history = fit(vae, guide, ds, epochs=50, batch_size=128, optim=LazyAdam({"lr": 1e-3}),
                  checkpoint_dir="runs/mvn")
    history                          # DataFrame: epoch, train_loss, test_loss (nats per datapoint), seconds
    fit(vae, guide, ds, epochs=100, optim=LazyAdam({"lr": 1e-3}), checkpoint_dir="runs/mvn", resume=True)

Nothing here hides SVI: each epoch is ``for x, idx in ds.loader(...): svi.step(x, idx)``.
``model`` is a model module with ``.model(x, idx)`` (a :class:`~pyro_vae.models.VAE`
or :class:`~pyro_vae.models.LinearGaussian`); ``guide`` is a guide module.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

CHECKPOINT = "checkpoint.pt"
#: the checkpoint before the latest, kept so that a corrupted latest one does not cost the run
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
#: the format of the checkpoints this version writes and reads
CHECKPOINT_VERSION = 1
COLUMNS = ["epoch", "train_loss", "test_loss", "seconds"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, corrupted, or of another format version."""


class CheckpointWarning(UserWarning):
    """Resuming from the previous checkpoint because the latest one cannot be read."""


def fit(model, guide, data, *, epochs: int, batch_size: int = 128, optim=None, loss=None, device: str = "cpu",
        checkpoint_dir: Optional[str] = None, resume: bool = False, progress: bool = True, seed: int = 0,
        config: Optional[dict] = None) -> pd.DataFrame:
    """Train ``model`` and ``guide`` by SVI on ``data.train`` for ``epochs`` epochs.

    :param data: a :class:`pyro_vae.data.Dataset`.
    :param optim: a Pyro optimizer (default ``LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})``).
    :param loss: a Pyro ELBO (default ``Trace_ELBO()``).
    :param checkpoint_dir: write ``checkpoint.pt`` there after every epoch, atomically (a temp
        file renamed over the old one), keeping the one before as ``checkpoint.prev.pt``.
    :param resume: continue from ``checkpoint_dir/checkpoint.pt`` (or, with a
        :class:`CheckpointWarning`, from ``checkpoint.prev.pt`` when the latest cannot be
        read); the run then reproduces the uninterrupted run's losses exactly.
    :param seed: seeds Pyro, torch, numpy and random at the start of a fresh run.
    :param config: JSON-able settings stored in the checkpoint.
    :returns: one row per epoch: ``epoch``, ``train_loss`` (mean -ELBO over the
        epoch's steps), ``test_loss`` (-ELBO of the test split, one sample per
        point; NaN for per-datapoint guides, which have no parameters for test
        points), both in nats per datapoint, and ``seconds`` of training.
    :raises TypeError: when ``data`` is not a :class:`pyro_vae.data.Dataset`.
    :raises ValueError: before any step, when the data do not fit the model,
        model and guide disagree on the data set size, or ``epochs`` / ``batch_size``
        are not positive integers.
    :raises CheckpointError: when ``resume`` finds no readable checkpoint.
    :raises FloatingPointError: as soon as a step returns NaN or inf.
    """
    from .optim import LazyAdam

    _check_setup(model, guide, data, epochs, batch_size)
    model.to(device)
    guide.to(device)
    data = data.to(device)  # batches are then cut on the device
    optim = optim if optim is not None else LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    loss = loss if loss is not None else Trace_ELBO()
    svi = SVI(model.model, guide, optim, loss)
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None

    rows, start = [], 0
    if resume:
        if path is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder of the run to continue.")
        rows, start = _load_checkpoint(path, model, guide, optim)
        if start > epochs:
            raise ValueError(f"the run in {path.parent} has already trained {start} epochs: pass epochs > {start} "
                             f"to continue it (epochs counts from the start of the run).")
    else:
        pyro.set_rng_seed(seed)

    n_train = len(data.train)
    bar = tqdm(range(start, epochs), desc=f"fit {type(guide).__name__}", disable=not progress,
               initial=start, total=epochs)
    for epoch in bar:
        t0, total = time.perf_counter(), 0.0
        for x, idx in data.loader("train", batch_size, shuffle=True):
            step_loss = svi.step(x, idx)
            if not math.isfinite(step_loss):
                raise FloatingPointError(
                    f"svi.step returned {step_loss} at epoch {epoch + 1} (batch of rows {idx[:5].tolist()}...): "
                    f"lower the learning rate, or check the data and the likelihood's scale."
                )
            total += step_loss * len(x) / n_train  # each step estimates the full-data loss
        seconds = time.perf_counter() - t0
        train_loss = total / n_train
        test_loss = _test_loss(svi, guide, data, batch_size, device)
        rows.append({"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_loss, "seconds": seconds})
        shown = {"train": f"{train_loss:.2f}"}
        if math.isfinite(test_loss):
            shown["test"] = f"{test_loss:.2f}"
        bar.set_postfix(shown)
        if path is not None:
            _save_checkpoint(path, model, guide, optim, rows, config)
    return pd.DataFrame(rows, columns=COLUMNS)


def _check_setup(model, guide, data, epochs, batch_size) -> None:
    """Clear errors before any step: a Dataset that fits the model, model and guide agree on N, sane sizes."""
    from .data import Dataset

    if not isinstance(data, Dataset):
        raise TypeError(
            f"fit needs a pyro_vae.data.Dataset (a train and a test split), got {type(data).__name__}: "
            f"wrap tensors with data.from_tensors(train, test), or load one with data.load(name)."
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    model.check_data(data.train, "data.train")
    model.check_data(data.test, "data.test")
    n = len(data.train)
    for who, obj in (("model", model), ("guide", guide)):
        if getattr(obj, "num_data", None) != n:
            raise ValueError(
                f"the {who} was built with num_data={getattr(obj, 'num_data', None)} but the training set has "
                f"{n} rows: build both with num_data=len(data.train) so mini-batches scale to the full data."
            )


def _test_loss(svi, guide, data, batch_size, device) -> float:
    if not getattr(guide, "amortized", True):
        return float("nan")
    with torch.no_grad():
        total = sum(svi.evaluate_loss(x) for x, _ in data.loader("test", batch_size * 4))
    return total / len(data.test)


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


def _save_checkpoint(path: Path, model, guide, optim, rows, config) -> None:
    """Write the checkpoint to a temp file in the same folder, then rename it over the old one."""
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


def load_checkpoint(path) -> dict:
    """Read a checkpoint without executing pickled code (``torch.load(..., weights_only=True)``).

    :raises CheckpointError: when the file is missing, cannot be read (truncated, not a
        checkpoint), lacks a field, or was written in another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"there is no checkpoint at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...: torch raises several types
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
        if missing == ["version"]:
            raise CheckpointError(f"{path} was written by pyro-vae before checkpoints carried a format version; "
                                  f"this version reads format {CHECKPOINT_VERSION}: train the run again.")
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (missing {', '.join(missing)}).")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['version']} and this pyro-vae reads format "
                              f"{CHECKPOINT_VERSION}: use the pyro-vae that wrote it, or train the run again.")
    return state


def read_run_checkpoint(path) -> dict:
    """The latest readable checkpoint of a run: ``path``, else ``checkpoint.prev.pt`` beside it, with a warning.

    :raises CheckpointError: when neither can be read; the message names both problems.
    """
    path = Path(path)
    try:
        return load_checkpoint(path)
    except CheckpointError as latest:
        previous = path.with_name(PREVIOUS_CHECKPOINT)
        if not previous.exists():
            raise
        try:
            state = load_checkpoint(previous)
        except CheckpointError as earlier:
            raise CheckpointError(f"{latest}; and the previous one: {earlier}") from earlier
        warnings.warn(f"{latest}; resuming from {previous.name} (epoch {state['epoch']}) instead: the epochs after "
                      f"it are trained again, with the same result.", CheckpointWarning, stacklevel=3)
        return state


def _load_checkpoint(path: Path, model, guide, optim):
    state = read_run_checkpoint(path)
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    to_store = {}
    for prefix, module in (("model", model), ("guide", guide)):
        to_store.update({f"{prefix}/{local}": store for local, store in _store_names(module).items()})
    optim.set_state({to_store[local]: s for local, s in state["optim"].items()})
    _set_rng_state(state["rng"])
    rows = [{**row, "epoch": int(row["epoch"])} for row in state["history"]]
    return rows, int(state["epoch"])
