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

**Rows apart.** A per-datapoint guide's rows (and their Adam moments) are left out of ``checkpoint.pt`` in two
cases, and a *rows part* (:func:`rows_part`) says where they are:

- rows in memory-mapped files (:mod:`pyro_vae.rows`): the part names the copy of the files that holds the
  checkpoint's epoch (``on_disk``: folder, relative to the checkpoint's, and copy), and keeps only the rows'
  SparseAdam step counts; one process keeps the part in ``checkpoint.pt`` (``rows_part``);
- a data-parallel run of P > 1 processes: each rank writes the part of its own shard, with its rows when they are
  in memory, to ``shards/epoch{E}.rank{r}.pt`` (:func:`save_shard`), and after every rank's is written rank 0
  writes ``checkpoint.pt`` with a manifest naming them (``shards``). ``checkpoint.pt`` is the commit: until it is
  renamed into place the previous one, and the shard files it names, are the run's checkpoint.
"""

from __future__ import annotations

import copy
import os
import random
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import InputError
from .folders import inside, signals_held, temp_file
from .optim import LazyAdam

CHECKPOINT = "checkpoint.pt"
#: the checkpoint before the latest, kept so that a corrupted latest one does not cost the run
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
#: what to do about a damaged checkpoint
FIX = (f"--resume and load_run fall back on {PREVIOUS_CHECKPOINT} when that one is intact; else train the run "
       f"again")
#: the format of the checkpoints this version writes
CHECKPOINT_VERSION = 3
#: the formats it reads: 2 has every row inside checkpoint.pt (3 may keep them apart, in shards or row files)
READABLE = (2, 3)
#: why each older format cannot be read: what changed in the run, not just the file
FORMAT_CHANGES = {1: "format 1 runs were trained before every data set split off a validation set, so their "
                     "training rows are not this version's"}
#: the folder of a data-parallel run's shard files
SHARDS = "shards"


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


def _optim_by_local_name(model, guide, optim) -> dict:
    """The optimizer's state by module-local name (``model/decoder.0.weight``)."""
    to_local = {store: local for local, store in _to_store(model, guide).items()}
    optim_state = optim.get_state()
    outside = sorted(set(optim_state) - set(to_local))
    if outside:
        raise InputError(f"cannot checkpoint parameters outside the model and guide modules: {outside}.")
    return {to_local[name]: s for name, s in optim_state.items()}


def save(path: Path, model, guide, optim, rows, config, extra: Optional[dict] = None,
         rows_apart: bool = False) -> None:
    """Write the checkpoint to a temp file in the same folder, then rename it over the old one.

    ``extra``: more fields (data-parallel runs add ``distributed``: the world size and every rank's RNG state;
    ``shards`` or ``rows_part``, see the module docstring). ``rows_apart``: leave the guide's per-datapoint rows
    and their optimizer state out (they are in the shard files or the row files ``extra`` names).
    """
    apart = {f"guide/{n}" for n in guide.row_parameter_names()} if rows_apart else set()
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": len(rows),
        "model": model.state_dict(),
        "guide": {k: v for k, v in guide.state_dict().items() if f"guide/{k}" not in apart},
        "optim": {k: v for k, v in _optim_by_local_name(model, guide, optim).items() if k not in apart},
        "rng": rng_state(),
        "history": [{k: float(v) for k, v in row.items()} for row in rows],
        "config": dict(config or {}),
        **(extra or {}),
    }
    _write_atomically(path, state)


def _write_atomically(path: Path, state: dict) -> None:
    """``torch.save(state)`` into a temp file beside ``path``, fsynced, renamed over it (the old one kept as
    ``checkpoint.prev.pt`` when ``path`` is ``checkpoint.pt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_held():  # Ctrl-C or SIGTERM waits for the checkpoint to be written
        fd, tmp = temp_file(path.parent, path.name)  # the mode a plain open() gives, not mkstemp's 0o600
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            if path.exists() and path.name == CHECKPOINT:
                keep_previous(path, _previous_link(tmp))
            os.replace(tmp, path)
        except BaseException:
            for left in (tmp, _previous_link(tmp)):
                if os.path.exists(left):
                    os.unlink(left)
            raise


def _previous_link(tmp: str) -> str:
    return tmp.removesuffix(".tmp") + ".prev.tmp"


def keep_previous(path: Path, link: str) -> None:
    """Make ``checkpoint.prev.pt`` the checkpoint now at ``path``, which stays in place: a hard link renamed over
    the previous one, so that a kill at any moment leaves ``path`` there (the old or, after the caller's rename, the
    new one). ``link``: a free name beside it for the link. Where the file system has no hard links, the checkpoint
    is renamed instead (a kill before the new one is renamed into place then leaves only the previous one, which
    :func:`read_run` falls back on)."""
    try:
        os.link(path, link)
    except OSError:
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
        return
    os.replace(link, path.with_name(PREVIOUS_CHECKPOINT))


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
        with warnings.catch_warnings():  # torch's notices about a foreign pickle: the error below says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, foreign pickle, ...: torch raises several types
        raise CheckpointError(f"{path} is damaged or not a checkpoint (torch.load raised {type(e).__name__}): {FIX}"
                              ) from e
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
        if missing == ["version"]:
            raise CheckpointVersionError(f"{path} was written by pyro-vae before checkpoints carried a format "
                                         f"version; this version reads format {CHECKPOINT_VERSION}: train the run "
                                         f"again.")
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (missing {', '.join(missing)}).")
    if state["version"] not in READABLE:
        why = FORMAT_CHANGES.get(state["version"])
        raise CheckpointVersionError(f"{path} has checkpoint format {state['version']} and this pyro-vae reads "
                                     f"formats {', '.join(map(str, READABLE))}{f' ({why})' if why else ''}: use the "
                                     f"pyro-vae that wrote it, or train the run again.")
    problem = malformed(state)
    if problem:
        raise CheckpointError(f"{path} is damaged ({problem}): {FIX}")
    return state


def malformed(state: dict) -> Optional[str]:
    """What is wrong with the fields of a checkpoint that loaded (a file edited or written by something else),
    or None: every field of the type and size this module writes."""
    epoch, history, rng = state["epoch"], state["history"], state["rng"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return f"its epoch is {epoch!r}, not a count"
    for key in ("model", "guide", "optim", "config", "rng"):
        if not isinstance(state[key], dict):
            return f"its {key} is a {type(state[key]).__name__}, not a dict"
    if not isinstance(history, list) or len(history) != epoch:
        return f"its history has {len(history) if isinstance(history, list) else type(history).__name__} rows " \
               f"for {epoch} epochs"
    columns = ("epoch", "train_loss", "test_loss", "seconds")
    if any(not isinstance(row, dict) or any(not isinstance(row.get(c), float) for c in columns) for row in history):
        return f"a history row lacks one of {', '.join(columns)}"
    if not all(torch.is_tensor(v) for v in (*state["model"].values(), *state["guide"].values())):
        return "a weight is not a tensor"
    if not torch.is_tensor(rng.get("torch")) or not isinstance(rng.get("random"), (list, tuple)) \
            or len(rng["random"]) != 3 or not isinstance(rng.get("numpy"), (list, tuple)) or len(rng["numpy"]) != 5:
        return "its RNG state lacks torch's, random's or numpy's"
    if not all(isinstance(v, dict) for v in state["optim"].values()):
        return "an optimizer state is not a dict"
    return None


def read_run(path, mmap: bool = False, reading: bool = False) -> dict:
    """The latest readable checkpoint of a run: ``path``, else ``checkpoint.prev.pt`` beside it, with a warning.

    ``mmap``: as for :func:`load` (resume maps it; the tensors are copied into place). ``reading``: the caller
    reads the run (``load_run``: evaluate, sample) rather than continues it, which the warning says.

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
            why = [str(e).removesuffix(f": {FIX}") for e in (latest, earlier)]
            raise CheckpointError(f"neither checkpoint can be read: {why[0]}; {why[1]}: train the run again."
                                  ) from earlier
        why = str(latest).removesuffix(f": {FIX}")
        then = (f"reading {previous.name} (epoch {state['epoch']}), the last complete one, instead" if reading else
                f"resuming from {previous.name} (epoch {state['epoch']}) instead: the epochs after it are trained "
                f"again, with the same result")
        warnings.warn(f"{why}; {then}.", CheckpointWarning, stacklevel=3)
        return state


def rows_part(model, guide, optim, checkpoint_dir, on_disk: Optional[dict] = None) -> dict:
    """What a checkpoint keeps of the guide's per-datapoint rows when they are apart (module docstring):

    ``rows`` (name -> tensor; none when the rows are in files), ``optim`` (their SparseAdam states by local name;
    with rows in files the step counts alone, the moments being in the same copy of the files), ``on_disk``
    (``{"folder", "slot", "shapes"}`` from :meth:`pyro_vae.rows.Slots.finish`, the folder made relative to
    ``checkpoint_dir`` when it lies inside it) and ``shard`` (:meth:`pyro_vae.rows.Shard.to_dict`, or None).
    """
    names = guide.row_parameter_names()
    optim_state = _optim_by_local_name(model, guide, optim)
    kept = {}
    for n in names:
        saved = optim_state.get(f"guide/{n}")
        if saved is not None and on_disk is not None:  # the moments are in the files: keep the step count
            saved = {**saved, "state": {i: {k: v for k, v in st.items() if k == "step"}
                                        for i, st in saved["state"].items()}}
        if saved is not None:
            kept[f"guide/{n}"] = saved
    if on_disk is not None:
        folder = Path(on_disk["folder"]).resolve()
        home = Path(checkpoint_dir).resolve()
        on_disk = {**on_disk, "folder": os.path.relpath(folder, home) if home in folder.parents else str(folder)}
    params = dict(guide.named_parameters())
    return {"rows": {} if on_disk is not None else {n: params[n].detach() for n in names}, "optim": kept,
            "on_disk": on_disk, "shard": guide.shard.to_dict() if guide.shard is not None else None}


def shard_file(epoch: int, rank: int) -> str:
    """The name, inside the run folder, of rank ``rank``'s shard of the checkpoint of epoch ``epoch``."""
    return f"{SHARDS}/epoch{epoch}.rank{rank}.pt"


def save_shard(checkpoint_dir, epoch: int, rank: int, part: dict) -> str:
    """Write rank ``rank``'s rows part (:func:`rows_part`) of epoch ``epoch`` atomically; returns its name."""
    name = shard_file(epoch, rank)
    _write_atomically(Path(checkpoint_dir) / name, {"version": CHECKPOINT_VERSION, "epoch": epoch, "rank": rank,
                                                    **part})
    return name


def drop_old_shards(checkpoint_dir, epoch: int) -> None:
    """Remove the shard files that neither the checkpoint of ``epoch`` nor the one before it names, and the temp
    files of shard writes cut short (every rank's write of this epoch is done when it is called)."""
    keep = {f"epoch{e}" for e in (epoch, epoch - 1)}  # shard_file's names: epoch{E}.rank{r}.pt
    for f in (Path(checkpoint_dir) / SHARDS).iterdir():
        if f.name.endswith(".tmp") or f.name.split(".")[0] not in keep:
            f.unlink(missing_ok=True)


def read_shard(checkpoint_dir, state: dict, rank: int) -> dict:
    """Rank ``rank``'s rows part of the sharded checkpoint ``state``, checked against it.

    :raises CheckpointError: when the file is missing, damaged or of another epoch or rank.
    """
    files = state["shards"]["files"]
    if not 0 <= rank < len(files):
        raise CheckpointError(f"the checkpoint has shards of {len(files)} processes, not of rank {rank}.")
    path = inside(checkpoint_dir, files[rank], f"the checkpoint's shard of rank {rank}", fix=NAMED_ELSEWHERE)
    if not path.is_file():
        raise CheckpointError(f"{path}, the rows of rank {rank} that the checkpoint names, is missing: the run's "
                              f"{SHARDS} folder was moved or cut; {FIX}.")
    try:
        part = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path} is damaged (torch.load raised {type(e).__name__}): {FIX}.") from e
    if not isinstance(part, dict) or part.get("epoch") != state["epoch"] or part.get("rank") != rank \
            or not isinstance(part.get("rows"), dict) or not isinstance(part.get("optim"), dict):
        raise CheckpointError(f"{path} is not the rows of rank {rank} at epoch {state['epoch']}: {FIX}.")
    return part


def merge_rows(state: dict, part: dict) -> dict:
    """``state`` with a rows part put back: its rows in ``guide``, their optimizer state in ``optim``, and
    ``rows_on_disk`` (the files' record, or None) and ``shard`` set."""
    return {**state, "guide": {**state["guide"], **part["rows"]}, "optim": {**state["optim"], **part["optim"]},
            "rows_on_disk": part.get("on_disk"), "shard": part.get("shard")}


def with_rows(state: dict, checkpoint_dir, rank: int = 0) -> dict:
    """``state`` with the rows a process continues from: rank ``rank``'s shard of a sharded checkpoint, the
    rows part of one with rows in files, or ``state`` itself when its rows are inside it."""
    if "shards" in state:
        return merge_rows(state, read_shard(checkpoint_dir, state, rank))
    if state.get("rows_part"):
        return merge_rows(state, state["rows_part"])
    return state


def every_row(state: dict, checkpoint_dir) -> dict:
    """``state`` with all ``num_data`` rows of every rank in ``guide``, in dataset order, for a reader
    (``load_run``): a sharded checkpoint's shards put together in memory (their row files read, never written).
    A checkpoint of one process is :func:`with_rows`'s."""
    if "shards" not in state:
        return with_rows(state, checkpoint_dir)
    from .rows import Shard, read_slot

    full = {}
    for r in range(len(state["shards"]["files"])):
        part = read_shard(checkpoint_dir, state, r)
        on_disk = part.get("on_disk")
        tensors = part["rows"] if not on_disk else read_slot(rows_folder({"rows_on_disk": on_disk}, checkpoint_dir),
                                                             on_disk["slot"], on_disk["shapes"])
        shard = Shard.from_dict(part["shard"])
        for name, t in tensors.items():
            full.setdefault(name, torch.empty(shard.num_data, *t.shape[1:], dtype=t.dtype))[shard.dataset_rows()] = t
    return {**state, "guide": {**state["guide"], **full}, "rows_on_disk": None}


#: what to do about a checkpoint that names its rows or shards outside its run folder
NAMED_ELSEWHERE = "the checkpoint was edited or belongs to another run: put back the run's own, or train the run again"


def named_folders(state: dict, checkpoint_dir) -> list:
    """The folders of row files the checkpoint ``state`` names (its rows part's, or each shard's, read through
    :func:`read_shard`, which refuses a shard file outside ``checkpoint_dir`` before it is read), as
    ``[(what, path), ...]`` for :func:`pyro_vae.folders.inside`."""
    parts = [read_shard(checkpoint_dir, state, r) for r in range(len(state["shards"]["files"]))] \
        if "shards" in state else [state.get("rows_part") or {}]
    return [("the checkpoint's rows", rows_folder({"rows_on_disk": part["on_disk"]}, checkpoint_dir))
            for part in parts if part.get("on_disk")]


def rows_folder(state: dict, checkpoint_dir) -> Optional[Path]:
    """The folder of the row files a (merged) checkpoint's rows are in, or None for rows inside it."""
    on_disk = state.get("rows_on_disk")
    if not on_disk:
        return None
    folder = Path(on_disk["folder"])
    return folder if folder.is_absolute() else Path(checkpoint_dir) / folder


def _to_store(model, guide) -> dict:
    out = {}
    for prefix, module in (("model", model), ("guide", guide)):
        out.update({f"{prefix}/{local}": store for local, store in store_names(module).items()})
    return out


def check_matches(state: dict, model, guide) -> None:
    """A :class:`CheckpointError` unless the checkpoint's weights have the names and shapes of ``model``'s and
    ``guide``'s (which may be shapes only, on the meta device) and its optimizer state names only their parameters.
    ``state``'s rows are put back first (:func:`with_rows`); rows in files are not compared.
    """
    on_disk = set(guide.row_parameter_names()) if state.get("rows_on_disk") else set()
    for key, module in (("model", model), ("guide", guide)):
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if key == "model" or k not in on_disk}
        found = {k: tuple(v.shape) for k, v in state[key].items()}
        if expected != found:
            differ = sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
            raise CheckpointError(f"the checkpoint's {key} weights do not fit the {key} ({', '.join(differ[:3])} "
                                  f"differ): it is damaged or of another run; {FIX}.")
    unknown = sorted(set(state["optim"]) - set(_to_store(model, guide)))
    if unknown:
        raise CheckpointError(f"the checkpoint holds optimizer state for {', '.join(unknown[:3])}, which the model "
                              f"and guide do not have: it is damaged or of another run; {FIX}.")


def read_to_continue(path: Optional[Path], epochs: int, world: Optional[int] = None, rank: int = 0) -> dict:
    """The checkpoint a resumed run continues from (:func:`read_run`, memory-mapped), checked against the run that
    resumes it: it has not trained past ``epochs``, and it was written by as many processes (``world``; None: one
    process, not data-parallel), whose random streams alone can continue it. Rank ``rank``'s rows are put back
    (:func:`with_rows`).

    :raises InputError: when ``path`` is None or a check fails; :class:`CheckpointError` when nothing can be read.
    """
    if path is None:
        raise InputError("resume=True needs checkpoint_dir, the folder of the run to continue.")
    state = read_run(path, mmap=True)  # the rows are copied into place page by page
    if state["epoch"] > epochs:
        raise InputError(f"the run in {path.parent} has already trained {state['epoch']} epochs: pass --epochs "
                         f"(epochs=) above {state['epoch']} to continue it; it counts from the start of the run.")
    saved = state.get("distributed")
    if saved and world is None:
        raise InputError(f"{path} was written by {saved['world_size']} processes: resume it in as many with "
                         f"distributed=True (torchrun ... --distributed); one process cannot continue their random "
                         f"streams.")
    if world is not None and not saved:
        raise InputError(f"{path} was written by a one-process run: resume it without --distributed (the ranks' "
                         f"random streams cannot continue one process's).")
    if world is not None and saved["world_size"] != world:
        raise InputError(f"{path} was written by {saved['world_size']} processes and this run has {world}: resume "
                         f"with as many (--nproc_per_node, times --nnodes), which hold its shards of the rows and "
                         f"continue its random streams.")
    return with_rows(state, path.parent, rank)


def restore(state: dict, model, guide, optim):
    """Put a checkpoint's weights and optimizer state in place; returns (history rows, epochs done).

    The RNG state is restored by the caller, last, once nothing else draws random numbers.
    """
    check_matches(state, model, guide)
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"], strict=not state.get("rows_on_disk"))  # rows in files: already mapped
    to_store = _to_store(model, guide)
    saved = state["optim"]
    if not isinstance(optim, LazyAdam):  # torch's load_state_dict keeps the saved tensors, maybe mapped from a file
        saved = copy.deepcopy(saved)  # copies every tensor into memory
    try:
        optim.set_state({to_store[local]: s for local, s in saved.items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a state of the wrong form, from an edited file
        raise CheckpointError(f"the checkpoint's optimizer state cannot be put back ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:80] if str(e) else ''}): it is damaged; {FIX}.") from None
    rows = [{**row, "epoch": int(row["epoch"])} for row in state["history"]]
    return rows, int(state["epoch"])


def save_weights(path: Path, model, guide, epoch: int, seconds: float) -> None:
    """The weights alone of a measured checkpoint (a study's ``kept/epoch-E.pt`` and ``selected.pt``), with its
    ``epoch`` and training ``seconds``; atomic, and read back with ``torch.load(..., weights_only=True)``."""
    state = {"epoch": int(epoch), "seconds": float(seconds), "model": model.state_dict(),
             "guide": guide.state_dict()}
    _write_atomically(Path(path), state)


def load_weights(path, model, guide) -> dict:
    """Put the weights :func:`save_weights` wrote into ``model`` and ``guide`` (no pickled code runs); returns
    the saved state (``epoch``, ``seconds``, ...).

    :raises CheckpointError: when the file is missing, damaged, or holds weights of other shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"there are no saved weights at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except Exception as e:  # truncated, foreign, or of other shapes: torch raises several types
        raise CheckpointError(f"{path} is damaged or not the weights of this run ({type(e).__name__}): train the "
                              f"run again.") from None
    return state

