"""The checkpoint of a run: its format, the RNG state it captures, and putting it back in place.

Usage::

    save(Path("runs/mvn/checkpoint.pt"), model, guide, optim, history_rows, config)   # atomic: temp file, rename
    state = read_run("runs/mvn/checkpoint.pt")     # the latest readable one (or checkpoint.prev.pt, with a warning)
    rows, epochs_done = restore(state, model, guide, optim)
    set_rng_state(state["rng"])                    # last, once nothing else draws random numbers

A checkpoint is a dict read with ``torch.load(..., weights_only=True)`` (no pickled code runs): a format
``version``, the ``epoch`` count, the ``model`` and ``guide`` state dicts, the ``optim`` state by
module-local parameter name (``model/decoder.0.weight``, so it does not depend on how Pyro's param store
names things), every RNG state (``rng``: torch CPU and CUDA, numpy, random), the ``history`` rows and the
run's ``config``. Both training loops, :func:`pyro_vae.train.fit` and the data-parallel
:func:`pyro_vae.distributed.fit`, write and read it through this module.
"""

from __future__ import annotations

import copy
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import InputError
from .optim import LazyAdam

CHECKPOINT = "checkpoint.pt"
#: the checkpoint before the latest, kept so that a corrupted latest one does not cost the run
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
#: the format of the checkpoints this version writes and reads
CHECKPOINT_VERSION = 2
#: why each older format cannot be read: what changed in the run, not just the file
FORMAT_CHANGES = {1: "format 1 runs were trained before every data set split off a validation set, so their "
                     "training rows are not this version's"}


class CheckpointError(InputError):
    """A checkpoint that cannot be read: missing, corrupted, or of another format version."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint written in another format version: intact, but not for this pyro-vae to read."""


class CheckpointWarning(UserWarning):
    """Resuming from the previous checkpoint because the latest one cannot be read."""


def store_names(module) -> dict:
    """Module-local parameter name -> name in Pyro's param store (PyroModule naming)."""
    out = {}
    for local, _ in module.named_parameters():
        short = local[: -len("_unconstrained")] if local.endswith("_unconstrained") else local
        out[local] = f"{module._pyro_name}.{short}" if module._pyro_name else short
    return out


def rng_state() -> dict:
    """Every generator a run draws from: torch (CPU and, when present, every CUDA device), random, numpy."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "random": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back every generator that :func:`rng_state` captured."""
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


def save(path: Path, model, guide, optim, rows, config, extra: Optional[dict] = None) -> None:
    """Write the checkpoint to a temp file in the same folder, then rename it over the old one.

    ``extra``: more fields (data-parallel runs add ``distributed``: the world size and every rank's RNG state).
    """
    to_local = {}
    for prefix, module in (("model", model), ("guide", guide)):
        to_local.update({store: f"{prefix}/{local}" for local, store in store_names(module).items()})
    optim_state = optim.get_state()
    outside = sorted(set(optim_state) - set(to_local))
    if outside:
        raise InputError(f"cannot checkpoint parameters outside the model and guide modules: {outside}.")
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": len(rows),
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "optim": {to_local[name]: s for name, s in optim_state.items()},
        "rng": rng_state(),
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


REQUIRED = ("version", "epoch", "model", "guide", "optim", "rng", "history", "config")


def load(path, mmap: bool = False) -> dict:
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
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
        if missing == ["version"]:
            raise CheckpointVersionError(f"{path} was written by pyro-vae before checkpoints carried a format "
                                         f"version; this version reads format {CHECKPOINT_VERSION}: train the run "
                                         f"again.")
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (missing {', '.join(missing)}).")
    if state["version"] != CHECKPOINT_VERSION:
        why = FORMAT_CHANGES.get(state["version"])
        raise CheckpointVersionError(f"{path} has checkpoint format {state['version']} and this pyro-vae reads "
                                     f"format {CHECKPOINT_VERSION}{f' ({why})' if why else ''}: use the pyro-vae "
                                     f"that wrote it, or train the run again.")
    return state


def read_run(path, mmap: bool = False) -> dict:
    """The latest readable checkpoint of a run: ``path``, else ``checkpoint.prev.pt`` beside it, with a warning.

    ``mmap``: as for :func:`load` (resume maps it; the tensors are copied into place).

    A checkpoint of another format version is intact work of another pyro-vae: it is never
    passed over for the previous one (resuming would overwrite it).

    :raises CheckpointError: when neither can be read; the message names both problems.
    :raises CheckpointVersionError: when the latest one is of another format version.
    """
    path = Path(path)
    try:
        return load(path, mmap)
    except CheckpointVersionError:
        raise
    except CheckpointError as latest:
        previous = path.with_name(PREVIOUS_CHECKPOINT)
        if not previous.exists():
            raise
        try:
            state = load(previous, mmap)
        except CheckpointError as earlier:
            raise CheckpointError(f"{latest}; and the previous one: {earlier}") from earlier
        warnings.warn(f"{latest}; resuming from {previous.name} (epoch {state['epoch']}) instead: the epochs after "
                      f"it are trained again, with the same result.", CheckpointWarning, stacklevel=3)
        return state


def restore(state: dict, model, guide, optim):
    """Put a checkpoint's weights and optimizer state in place; returns (history rows, epochs done).

    The RNG state is restored by the caller, last, once nothing else draws random numbers.
    """
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    to_store = {}
    for prefix, module in (("model", model), ("guide", guide)):
        to_store.update({f"{prefix}/{local}": store for local, store in store_names(module).items()})
    saved = state["optim"]
    if not isinstance(optim, LazyAdam):  # torch's load_state_dict keeps the saved tensors, maybe mapped from a file
        saved = copy.deepcopy(saved)  # copies every tensor into memory
    optim.set_state({to_store[local]: s for local, s in saved.items()})
    rows = [{**row, "epoch": int(row["epoch"])} for row in state["history"]]
    return rows, int(state["epoch"])
