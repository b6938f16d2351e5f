"""Per-datapoint rows outside RAM: a guide's ``(num_data, ...)`` parameters and their Adam moments in files.

Usage::

    with torch.device("meta"):                           # shapes only: the rows are never built in RAM
        guide = guides.make("meanfield", z_dim=8, num_data=10**8)
    optim = LazyAdam({"lr": 1e-3}, sparse_args={"lr": 1e-2})
    rows.memory_map(guide, optim, "runs/big/rows")      # writes the starting rows into files, before the first step
    fit(vae, guide, ds, epochs=10, optim=optim)          # or your own svi.step loop: nothing else changes

A guide built in memory works too (its rows are copied into the files), and so does one built on the
meta device: :func:`memory_map` then writes each file from the guide's starting row
(``guide.initial_row(name)``, the same for every datapoint) in blocks, so RAM never holds more than a
block of rows at any N.

A per-datapoint guide holds ``2 N z`` floats (``meanfield``) or ``N z (z + 3) / 2`` (``local_mvn``),
and Adam keeps two moments of each: ``3x`` that in all. :func:`memory_map` moves each row
tensor into a file (``torch.from_file(..., shared=True)``, a memory map) and has ``optim`` keep
the rows' SparseAdam moments in files beside it. A step then reads and writes only the
batch's rows: the guide gathers them with ``embedding(idx, rows, sparse=True)`` and SparseAdam
updates only the rows of the sparse gradient. The operating system's page cache holds
whatever pages were touched lately and writes them back when it likes; RAM is no longer the
limit, the disk is.

The checkpoint of a run stores every row (``torch.save`` streams them from the files), so resume
and ``load_run`` work as for rows in memory. The files are the live state, changed by every step,
and cannot be the checkpoint themselves: resume must find the rows of the checkpoint's epoch.
Resume reads the checkpoint memory-mapped (``load_checkpoint(path, mmap=True)``), so it copies the rows
from one file into the other without holding them in RAM (``load_run`` reads the whole checkpoint).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from .errors import InputError

#: the suffix of a row file: raw float32, row-major, ``num_data * prod(row shape)`` values
SUFFIX = ".f32"
#: bytes written at a time when a file is filled from a starting row
BLOCK_BYTES = 1 << 26


def _write_new(path: Path, write) -> None:
    """Write the file ``path`` through ``write(f)`` into a temp file renamed over it: a mapping of an older
    file of that name keeps its own (now unlinked) file, where truncating it in place would end in a bus error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _map(path: Path, shape) -> torch.Tensor:
    return torch.from_file(str(path), shared=True, size=math.prod(shape), dtype=torch.float32).view(*shape)


def mapped_zeros(path, shape) -> torch.Tensor:
    """A float32 tensor of ``shape``, zeros, whose storage is the file ``path`` (a new file, replacing any)."""
    path = Path(path)
    _write_new(path, lambda f: f.truncate(math.prod(shape) * 4))  # sparse: no disk is used until a page is written
    return _map(path, shape)


def mapped_rows(path, num_rows: int, row: torch.Tensor) -> torch.Tensor:
    """A float32 ``(num_rows, *row.shape)`` tensor, every row ``row``, whose storage is the file ``path``.

    The file is written in blocks of about :data:`BLOCK_BYTES` (a zero row leaves it sparse): RAM holds one
    block, never the rows.
    """
    path = Path(path)
    row = row.detach().to("cpu", torch.float32).contiguous()
    if not bool(row.any()):
        return mapped_zeros(path, (num_rows, *row.shape))
    per_block = max(1, BLOCK_BYTES // max(1, row.numel() * 4))
    block = memoryview(row.expand(min(per_block, num_rows), *row.shape).contiguous().numpy().tobytes())
    row_bytes = row.numel() * 4

    def write(f):
        for start in range(0, num_rows, per_block):
            f.write(block[: (min(num_rows, start + per_block) - start) * row_bytes])

    _write_new(path, write)
    return _map(path, (num_rows, *row.shape))


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t``'s storage is a memory-mapped file."""
    return getattr(t.untyped_storage(), "filename", None) is not None


def memory_map(guide, optim, folder) -> dict:
    """Move ``guide``'s per-datapoint parameters into files in ``folder``, and their Adam moments with them.

    Call it before the first step (and before ``fit(resume=True)``, which then copies the checkpoint's rows
    into the files). The values are kept: the files start as a copy of the rows in memory, or, for a guide
    built under ``torch.device("meta")``, as its starting rows written block by block.

    :param guide: a per-datapoint guide (``guide.row_parameter_names()`` not empty), on the CPU or built on the
        meta device (then with ``guide.constant_init``: every datapoint starts from the same row).
    :param optim: the :class:`pyro_vae.optim.LazyAdam` that will step it.
    :returns: parameter name -> its file.
    :raises ValueError: for a guide without rows, rows not on the CPU, another optimizer, or a meta-built guide
        whose starting rows are not one constant row (``local_flow``: build it in memory).
    """
    names = guide.row_parameter_names()
    if not names:
        raise InputError(f"{type(guide).__name__} has no per-datapoint rows to memory-map (an amortized guide's "
                         f"parameters do not grow with the data).")
    if not callable(getattr(optim, "keep_moments_in", None)):  # pyro_vae.optim.LazyAdam (which imports this module)
        raise InputError(f"memory-mapped rows keep their Adam moments on disk through pyro_vae.optim.LazyAdam, got "
                         f"{type(optim).__name__}.")
    params = dict(guide.named_parameters())
    if any(params[n].device.type not in ("cpu", "meta") for n in names):
        raise InputError("memory-mapped rows live on the CPU: map them before moving the guide to a GPU, or keep "
                         "them in memory there.")
    meta = [n for n, t in [*guide.named_parameters(), *guide.named_buffers()] if t.device.type == "meta"]
    if meta and (set(meta) - set(names) or not getattr(guide, "constant_init", False)):
        raise InputError(f"{type(guide).__name__} was built on the meta device, and memory_map can write only rows "
                         f"that start from one constant row, not {', '.join(meta)}: build the guide in memory and "
                         f"memory_map copies its rows.")
    folder = Path(folder)
    files = {}
    for name in names:
        old = params[name]
        path = folder / f"{name}{SUFFIX}"
        if old.device.type == "meta":
            with torch.device("cpu"):  # the starting row has values, also inside a torch.device("meta") block
                mapped = mapped_rows(path, old.shape[0], guide.initial_row(name))
        else:
            mapped = mapped_zeros(path, tuple(old.shape))
            with torch.no_grad():
                mapped.copy_(old)
        new = torch.nn.Parameter(mapped, requires_grad=old.requires_grad)
        owner, _, attr = name.rpartition(".")
        setattr(guide.get_submodule(owner) if owner else guide, attr, new)
        optim.keep_moments_in(new, folder / f"{name}.adam")
        files[name] = path
    return files
