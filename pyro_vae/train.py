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
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

CHECKPOINT = "checkpoint.pt"
COLUMNS = ["epoch", "train_loss", "test_loss", "seconds"]


def fit(model, guide, data, *, epochs: int, batch_size: int = 128, optim=None, loss=None, device: str = "cpu",
        checkpoint_dir: Optional[str] = None, resume: bool = False, progress: bool = True, seed: int = 0,
        config: Optional[dict] = None) -> pd.DataFrame:
    """Train ``model`` and ``guide`` by SVI on ``data.train`` for ``epochs`` epochs.

    :param data: a :class:`pyro_vae.data.Dataset`.
    :param optim: a Pyro optimizer (default ``LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})``).
    :param loss: a Pyro ELBO (default ``Trace_ELBO()``).
    :param checkpoint_dir: write ``checkpoint.pt`` there after every epoch (atomically).
    :param resume: continue from ``checkpoint_dir/checkpoint.pt``; the run then
        reproduces the uninterrupted run's losses exactly.
    :param seed: seeds Pyro, torch, numpy and random at the start of a fresh run.
    :param config: JSON-able settings stored in the checkpoint.
    :returns: one row per epoch: ``epoch``, ``train_loss`` (mean -ELBO over the
        epoch's steps), ``test_loss`` (-ELBO of the test split, one sample per
        point; NaN for per-datapoint guides, which have no parameters for test
        points), both in nats per datapoint, and ``seconds`` of training.
    :raises ValueError: before any step, when the data do not fit the model or
        model and guide disagree on the data set size.
    :raises FloatingPointError: as soon as a step returns NaN or inf.
    """
    from .optim import LazyAdam

    _check_setup(model, guide, data)
    model.to(device)
    guide.to(device)
    optim = optim if optim is not None else LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    loss = loss if loss is not None else Trace_ELBO()
    svi = SVI(model.model, guide, optim, loss)
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None

    rows, start = [], 0
    if resume:
        if path is None or not path.exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}.")
        rows, start = _load_checkpoint(path, model, guide, optim)
    else:
        pyro.set_rng_seed(seed)

    n_train = len(data.train)
    bar = tqdm(range(start, epochs), desc=f"fit {type(guide).__name__}", disable=not progress,
               initial=start, total=epochs)
    for epoch in bar:
        t0, total = time.perf_counter(), 0.0
        for x, idx in data.loader("train", batch_size, shuffle=True):
            step_loss = svi.step(x.to(device), idx.to(device))
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


def _check_setup(model, guide, data) -> None:
    """Clear errors before any step: the data fit the model, model and guide agree on N."""
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
        total = sum(svi.evaluate_loss(x.to(device)) for x, _ in data.loader("test", batch_size * 4))
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
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "random": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path) -> dict:
    """Read a checkpoint without executing pickled code (``torch.load(..., weights_only=True)``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_checkpoint(path: Path, model, guide, optim):
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    to_store = {}
    for prefix, module in (("model", model), ("guide", guide)):
        to_store.update({f"{prefix}/{local}": store for local, store in _store_names(module).items()})
    optim.set_state({to_store[local]: s for local, s in state["optim"].items()})
    _set_rng_state(state["rng"])
    rows = [{**row, "epoch": int(row["epoch"])} for row in state["history"]]
    return rows, int(state["epoch"])
