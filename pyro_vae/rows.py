"""Per-datapoint rows outside RAM: a guide's ``(num_data, ...)`` parameters and their Adam moments in files.

Usage::

    guide = guides.make("meanfield", z_dim=8, num_data=10**7)
    optim = LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    rows.memory_map(guide, optim, "runs/big/rows")      # before the first step
    fit(vae, guide, ds, epochs=10, optim=optim)          # or your own svi.step loop: nothing else changes

A per-datapoint guide holds ``2 N z`` floats (``meanfield``) or ``N z (z + 3) / 2`` (``local_mvn``),
and Adam keeps two moments of each: ``3x`` that in all. :func:`memory_map` moves each row
tensor into a file (``torch.from_file(..., shared=True)``, a memory map) and has ``optim`` keep
the rows' SparseAdam moments in files beside it. A step then reads and writes only the
batch's rows: the guide gathers them with ``embedding(idx, rows, sparse=True)`` and SparseAdam
updates only the rows of the sparse gradient. The operating system's page cache holds
whatever pages were touched lately and writes them back when it likes; RAM is no longer the
limit, the disk is.

The checkpoint of a run still stores every row (``state_dict`` reads the whole file), so
resume and ``load_run`` work as for rows in memory; at N where that copy hurts, the files
themselves are the state to keep.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

#: the suffix of a row file: raw float32, row-major, ``num_data * prod(row shape)`` values
SUFFIX = ".f32"


def mapped_zeros(path, shape) -> torch.Tensor:
    """A float32 tensor of ``shape``, zeros, whose storage is the file ``path`` (created or truncated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    numel = math.prod(shape)
    with open(path, "wb") as f:
        f.truncate(numel * 4)  # a sparse file: no disk is used until a page is written
    return torch.from_file(str(path), shared=True, size=numel, dtype=torch.float32).view(*shape)


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t``'s storage is a memory-mapped file."""
    return getattr(t.untyped_storage(), "filename", None) is not None


def memory_map(guide, optim, folder) -> dict:
    """Move ``guide``'s per-datapoint parameters into files in ``folder``, and their Adam moments with them.

    Call it before the first step (and before ``fit(resume=True)``, which then copies the checkpoint's rows
    into the files). The values are kept: the files start as a copy of the rows in memory.

    :param guide: a per-datapoint guide (``guide.row_parameter_names()`` not empty), on the CPU.
    :param optim: the :class:`pyro_vae.optim.LazyAdam` that will step it.
    :returns: parameter name -> its file.
    :raises ValueError: for a guide without rows, rows not on the CPU, or another optimizer.
    """
    from .optim import LazyAdam

    names = guide.row_parameter_names()
    if not names:
        raise ValueError(f"{type(guide).__name__} has no per-datapoint rows to memory-map (an amortized guide's "
                         f"parameters do not grow with the data).")
    if not isinstance(optim, LazyAdam):
        raise ValueError(f"memory-mapped rows keep their Adam moments on disk through pyro_vae.optim.LazyAdam, got "
                         f"{type(optim).__name__}.")
    params = dict(guide.named_parameters())
    if any(params[n].device.type != "cpu" for n in names):
        raise ValueError("memory-mapped rows live on the CPU: map them before moving the guide to a GPU, or keep "
                         "them in memory there.")
    folder = Path(folder)
    files = {}
    for name in names:
        old = params[name]
        path = folder / f"{name}{SUFFIX}"
        mapped = mapped_zeros(path, tuple(old.shape))
        with torch.no_grad():
            mapped.copy_(old)
        new = torch.nn.Parameter(mapped, requires_grad=old.requires_grad)
        owner, _, attr = name.rpartition(".")
        setattr(guide.get_submodule(owner) if owner else guide, attr, new)
        optim.moment_files[new] = folder / f"{name}.adam"
        files[name] = path
    return files
