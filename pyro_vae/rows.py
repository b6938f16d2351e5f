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

**Checkpoints do not copy the rows.** A run that checkpoints (``fit(..., checkpoint_dir=...)``) keeps
:data:`SLOTS` copies of every row file (``loc.0.f32``, ``loc.1.f32``, ``loc.2.f32``, and the same for each Adam
moment): epoch ``e`` trains in copy ``e % 3`` (:class:`Slots`). Before a step, the batch's rows that this epoch has
not yet visited are copied from the copy the last epoch ended in (a visited-row mask, a file of one byte per row);
at the epoch's end the rows it never visited are copied too, the copy is fsynced, and the checkpoint records which
copy holds its epoch. The copy ``checkpoint.pt`` names and the one ``checkpoint.prev.pt`` names are never written
while the next epoch trains, so a kill at any moment resumes to the same result, and the checkpoint itself writes
no row. Disk: three copies, what the rows, ``checkpoint.pt`` and ``checkpoint.prev.pt`` took before.
``fit(resume=True)`` maps the copy the checkpoint names (:func:`attach`): do not call :func:`memory_map` before a
resume (it refuses a folder that holds a checkpointed run's rows).

**Shards.** In a data-parallel run each process holds only the rows of its own shard of the training set
(:class:`Shard`, :func:`keep_shard`), in memory or in its own folder of files; the guide maps a dataset index to
its row (:meth:`guides.base.Guide.local_rows`).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
from pathlib import Path
from typing import Optional

import torch
from .errors import InputError

#: the suffix of a row file: raw float32, row-major, ``num_data * prod(row shape)`` values
SUFFIX = ".f32"
#: bytes written at a time when a file is filled from a starting row
BLOCK_BYTES = 1 << 26


def _write_new(path: Path, write) -> None:
    """Write the file ``path`` through ``write(f)`` into a temp file renamed over it: a mapping of an older
    file of that name keeps its own (now unlinked) file, where truncating it in place would end in a bus error.
    A temp file left by a killed write, or a symlink planted in its place, is replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "xb") as f:
        write(f)
    os.replace(tmp, path)


def _map(path: Path, shape, dtype=torch.float32, shared: bool = True) -> torch.Tensor:
    """The file ``path`` as a tensor; ``shared=False``: a private (copy-on-write) mapping that never writes it.

    The kernel is told that the mapping is read at random (``madvise(MADV_RANDOM)``): a page fault then reads its
    own page, not the pages around it. With read-around, 200 steps at N = 10^8 left 1.7 GB of each 3.2 GB row file
    in the page cache for the 26 000 rows they touched, and twelve such files (two copies) filled it and thrashed.
    """
    t = torch.from_file(str(path), shared=shared, size=math.prod(shape), dtype=dtype).view(*shape)
    _advise_random(t)
    return t


def _advise_random(t: torch.Tensor) -> None:
    """``madvise(MADV_RANDOM)`` on a mapped tensor's storage, where the platform has it (else nothing)."""
    storage = t.untyped_storage()
    if not hasattr(mmap, "MADV_RANDOM") or storage.nbytes() == 0:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(storage.data_ptr()), ctypes.c_size_t(storage.nbytes()), mmap.MADV_RANDOM)
    except (OSError, AttributeError):  # no libc to call: the kernel's default read-around stays
        pass


def mapped_zeros(path, shape, dtype=torch.float32) -> torch.Tensor:
    """A tensor of ``shape``, zeros, whose storage is the file ``path`` (a new file, replacing any)."""
    path = Path(path)
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    _write_new(path, lambda f: f.truncate(size))  # sparse: no disk is used until a page is written
    return _map(path, shape, dtype)


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
    if (folder / MARKER).exists():
        raise InputError(f"{folder} holds the rows of a checkpointed run ({MARKER}): to continue it, call "
                         f"fit(..., resume=True) without memory_map (it maps the rows its checkpoint names); to start "
                         f"afresh, give an empty folder.")
    files = {}
    for name in names:
        old = params[name]
        path = slot_file(folder, name, 0)
        if old.device.type == "meta":
            with torch.device("cpu"):  # the starting row has values, also inside a torch.device("meta") block
                mapped = mapped_rows(path, old.shape[0], guide.initial_row(name))
        else:
            mapped = mapped_zeros(path, tuple(old.shape))
            with torch.no_grad():
                mapped.copy_(old)
        new = _replace(guide, name, mapped)
        optim.keep_moments_in(new, {k: mapped_zeros(slot_file(folder, key, 0), tuple(old.shape))
                                    for k, key in zip(MOMENTS, _keys(name)[1:])})
        files[name] = path
    return files


def _replace(guide, name: str, tensor: torch.Tensor) -> torch.nn.Parameter:
    """Make ``tensor`` the guide's parameter ``name`` (a new Parameter: call before the first step)."""
    old = dict(guide.named_parameters())[name]
    new = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
    owner, _, attr = name.rpartition(".")
    setattr(guide.get_submodule(owner) if owner else guide, attr, new)
    return new


#: the Adam moments SparseAdam keeps for each row tensor
MOMENTS = ("exp_avg", "exp_avg_sq")
#: copies of every row file: epoch ``e`` trains in copy ``e % SLOTS``, so that the copies of the last two
#: checkpoints (``checkpoint.pt``'s and ``checkpoint.prev.pt``'s) are never written while an epoch trains
SLOTS = 3
#: the file that marks a folder of rows as a checkpointed run's (:class:`Slots` writes it)
MARKER = "slots.json"
#: the visited-row mask of the epoch that trains: one byte per row
VISITED = "visited.u8"


def _keys(name: str) -> list:
    """The files' stems of a row tensor ``name``: its rows, then each Adam moment."""
    return [name, *(f"{name}.adam.{k}" for k in MOMENTS)]


def slot_file(folder, key: str, slot: int) -> Path:
    """The file of copy ``slot`` of the row tensor (or moment) ``key``: ``FOLDER/KEY.SLOT.f32``."""
    return Path(folder) / f"{key}.{slot}{SUFFIX}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # Linux writes back the pages dirtied through a shared mapping of the file with it
    finally:
        os.close(fd)


class Slots:
    """The row files of a run that checkpoints: epoch ``e`` trains in copy ``e % SLOTS`` (module docstring).

    Usage, in a training loop (what both of ``fit``'s loops do)::

        slots = Slots.of(guide, optim)            # after memory_map; or attach(...) on resume
        for epoch in range(start, epochs):
            slots.begin(epoch + 1)                # the rows and moments now live in copy (epoch + 1) % 3
            for x, idx in batches:
                slots.visit(guide.local_rows(idx))    # before the step reads the batch's rows
                svi.step(x, idx)
            record = slots.finish()               # {"folder", "slot", "shapes"}: what the checkpoint names

    :param folder: the folder of the files; ``slot``: the copy the guide's rows and ``optim``'s moments map now.
    """

    def __init__(self, guide, optim, folder, slot: int):
        names = guide.row_parameter_names()
        self.params = {n: p for n, p in guide.named_parameters() if n in names}
        self.optim, self.folder, self.slot = optim, Path(folder), slot
        self.source, self.visited = None, None

    @classmethod
    def of(cls, guide, optim) -> Optional["Slots"]:
        """The slots of a guide whose rows :func:`memory_map` (or :func:`attach`) mapped; None for rows in memory."""
        names = guide.row_parameter_names()
        params = dict(guide.named_parameters())
        if not names or not is_mapped(params[names[0]]):
            return None
        path = Path(params[names[0]].untyped_storage().filename)
        return cls(guide, optim, path.parent, int(path.name[: -len(SUFFIX)].rsplit(".", 1)[1]))

    def _tensors(self, name: str) -> dict:
        """File stem -> the tensor in use now: the rows ``name`` and their moments."""
        p = self.params[name]
        moments = self.optim.moments_of(p)
        return dict(zip(_keys(name), [p, *(moments[k] for k in MOMENTS)]))

    def begin(self, epoch: int) -> None:
        """Point the rows and their moments at copy ``epoch % SLOTS`` (the copy the last epoch ended in, which
        a checkpoint may name, is from now on only read); the next :meth:`visit` of a row copies it over."""
        target = epoch % SLOTS
        for p in self.params.values():  # Adam moments loaded from a checkpoint go into the files now, not at a step
            self.optim.settle(p)
        if target == self.slot:  # rows copied into copy 0 from a checkpoint that held them (format 2): move them
            self._point_at((target + 1) % SLOTS, copy=True)
        marker = self.folder / MARKER
        if not marker.exists():
            _write_new(marker, lambda f: f.write(b'{"slots": %d}\n' % SLOTS))
        self.source = self._point_at(target)
        num_rows = next(iter(self.params.values())).shape[0]
        self.visited = mapped_zeros(self.folder / VISITED, (num_rows,), torch.bool)

    @torch.no_grad()
    def _point_at(self, slot: int, copy: bool = False) -> dict:
        """Make copy ``slot`` the rows and moments in use (all of them copied over with ``copy``); returns the
        tensors of the copy in use before, by file stem."""
        before = {}
        for name, p in self.params.items():
            current = {key: t.detach() for key, t in self._tensors(name).items()}  # the old storage, kept
            before.update(current)
            maps = {key: self._target(key, slot, tuple(t.shape)) for key, t in current.items()}
            if copy:
                for key, t in maps.items():
                    t.copy_(current[key])
            keys = _keys(name)
            p.data = maps[keys[0]]
            self.optim.keep_moments_in(p, {k: maps[key] for k, key in zip(MOMENTS, keys[1:])})
        self.slot = slot
        return before

    def _target(self, key: str, slot: int, shape) -> torch.Tensor:
        path = slot_file(self.folder, key, slot)
        if path.exists() and path.stat().st_size == math.prod(shape) * 4:
            return _map(path, shape)  # overwritten row by row as the epoch visits them
        return mapped_zeros(path, shape)

    @torch.no_grad()
    def visit(self, idx: torch.Tensor) -> None:
        """Copy the rows ``idx`` (this process's rows: ``guide.local_rows(idx)``) that this epoch has not visited
        yet from the copy it started from, before a step reads and moves them."""
        fresh = idx[~self.visited[idx]]
        if len(fresh):
            self._copy(fresh.unique())

    def _copy(self, rows: torch.Tensor) -> None:
        for name in self.params:
            for key, t in self._tensors(name).items():
                t[rows] = self.source[key][rows]  # (index_select / index_copy_ take ~0.1 s at N = 10^8: not those)
        self.visited[rows] = True

    @torch.no_grad()
    def finish(self) -> dict:
        """End the epoch: copy the rows it never visited, fsync every file of its copy; returns the record a
        checkpoint keeps, ``{"folder": str, "slot": int, "shapes": {name: shape}}``."""
        num_rows, block = len(self.visited), max(1, BLOCK_BYTES // 4)
        for start in range(0, num_rows, block):
            left = (~self.visited[start:start + block]).nonzero().flatten()
            if len(left):
                self._copy(left + start)
        for name in self.params:
            for key in _keys(name):
                _fsync(slot_file(self.folder, key, self.slot))
        self.source = None  # the old copy's mappings are let go
        return {"folder": str(self.folder), "slot": self.slot,
                "shapes": {n: list(p.shape) for n, p in self.params.items()}}


def read_slot(folder, slot: int, shapes: dict) -> dict:
    """Copy ``slot`` of the row tensors ``shapes`` (name -> shape) in ``folder``, mapped privately (nothing is ever
    written to the files): name -> tensor."""
    return {name: _map_saved(slot_file(folder, name, slot), tuple(shape), shared=False)
            for name, shape in shapes.items()}


def _map_saved(path: Path, shape, shared: bool) -> torch.Tensor:
    """A checkpoint's row file mapped, after a check that it is there with ``shape``'s size."""
    if not path.is_file() or path.stat().st_size != math.prod(shape) * 4:
        raise InputError(f"the checkpoint's rows {path} are missing or not {shape}: the run's rows folder "
                         f"was moved or damaged; put it back, or train the run again.")
    return _map(path, shape, shared=shared)


def attach(guide, optim, folder, slot: int, writable: bool = True) -> Slots:
    """Map copy ``slot`` of the row files in ``folder`` (a checkpoint's record) as ``guide``'s rows and, with
    ``optim``, their Adam moments; the guide may be built in memory or on the meta device. ``writable=False``
    maps them privately (copy-on-write: nothing is ever written to the files), for a reader.

    :raises InputError: when a file is missing or of the wrong size (the run's rows were moved or damaged).
    """
    folder = Path(folder)
    params = dict(guide.named_parameters())
    for name in guide.row_parameter_names():
        shape = tuple(params[name].shape)
        maps = {key: _map_saved(slot_file(folder, key, slot), shape, writable)
                for key in _keys(name)[: 3 if optim is not None else 1]}
        new = _replace(guide, name, maps[name])
        if optim is not None:
            optim.keep_moments_in(new, {k: maps[key] for k, key in zip(MOMENTS, _keys(name)[1:])})
    return Slots(guide, optim, folder, slot)


@torch.no_grad()
def in_memory(guide) -> None:
    """Give the rows of a guide built on the meta device (kept to a shard or not) their starting values, in RAM:
    ``guide.initial_row(name)`` in every row. What a data-parallel process with its rows in memory does, so that it
    never holds more than its shard's rows."""
    params = dict(guide.named_parameters())
    for name in guide.row_parameter_names():
        p = params[name]
        if p.device.type == "meta":
            with torch.device("cpu"):
                row = guide.initial_row(name)
            _replace(guide, name, row.expand(p.shape[0], *row.shape).clone())


class Shard:
    """The rows one process holds of ``num_data`` rows cut into ``shards`` shards (row ``i`` in shard
    ``i % shards``, the :class:`pyro_vae.distributed.ShardSampler` layout): shards ``first .. first + count - 1``,
    held one after another, each in dataset order.

    :meth:`local` maps dataset indices to rows of this process's ``(len(shard), ...)`` tensors.
    """

    def __init__(self, num_data: int, shards: int, first: int, count: int):
        self.num_data, self.shards, self.first, self.count = num_data, shards, first, count
        sizes = torch.tensor([len(range(s, num_data, shards)) for s in range(first, first + count)])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __eq__(self, other) -> bool:
        return isinstance(other, Shard) and self.to_dict() == other.to_dict()

    def to_dict(self) -> dict:
        return {"num_data": self.num_data, "shards": self.shards, "first": self.first, "count": self.count}

    @classmethod
    def from_dict(cls, d: dict) -> "Shard":
        return cls(int(d["num_data"]), int(d["shards"]), int(d["first"]), int(d["count"]))

    def dataset_rows(self) -> torch.Tensor:
        """The dataset indices of this process's rows, in the order it holds them: ``(len(self),)``."""
        return torch.cat([torch.arange(s, self.num_data, self.shards)
                          for s in range(self.first, self.first + self.count)])

    def local(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows of this process for dataset indices ``idx`` (each must lie in this shard)."""
        k = idx % self.shards - self.first
        if len(idx) and not torch.jit.is_tracing() and bool(((k < 0) | (k >= self.count)).any()):
            bad = idx[(k < 0) | (k >= self.count)][:3].tolist()
            raise InputError(f"dataset rows {bad} are not in this process's shards {self.first}..."
                             f"{self.first + self.count - 1} of {self.shards}: a process reads only its own rows.")
        return self.offsets.to(idx.device)[k] + torch.div(idx, self.shards, rounding_mode="floor")


@torch.no_grad()
def keep_shard(guide, shard: Shard) -> None:
    """Keep only ``shard``'s rows of each per-datapoint parameter of ``guide`` (built in memory: those rows are
    copied; on the meta device: shapes only), and have the guide map dataset indices to them. Call it before
    :func:`memory_map` and before the first step."""
    params = dict(guide.named_parameters())
    names = guide.row_parameter_names()
    for name in names:
        p = params[name]
        if p.shape[0] != shard.num_data:
            raise InputError(f"{type(guide).__name__}.{name} has {p.shape[0]} rows, and the shard cuts "
                             f"{shard.num_data}: keep a shard of the full guide, once.")
        if p.device.type == "meta":
            kept = torch.empty(len(shard), *p.shape[1:], device="meta")
        else:
            kept = p.detach().index_select(0, shard.dataset_rows().to(p.device))
        _replace(guide, name, kept)
    guide.shard = shard
    guide.num_rows = len(shard)
