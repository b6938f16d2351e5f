"""Output folders that cannot be lost or mixed: one writer at a time, nothing replaced unasked, nothing outside.

Usage::

    with folders.writer(out, "train"):                      # an OS lock; a second writer is refused, naming its PID
        folders.claim(out, "train", overwrite=False)        # refuses a folder that holds a run or other output
        folders.write_text(out / "config.json", text)        # atomic (temp file, rename), never through a symlink
    rows = folders.inside(out, "rows", "rows_on_disk")       # a path the run names, refused unless inside ``out``

The lock is ``fcntl.flock`` on ``OUT/.pyro-vae.lock``: the kernel releases it when the process ends, however
it ends, so a killed run never leaves its folder locked. Readers (``load_run``, ``evaluate``, ``sample``) take no
lock: a checkpoint is replaced by a rename, so they read the last complete one, and its own copy of the
settings is checked against ``config.json`` (:func:`pyro_vae.runs.load_run`).

Every file pyro-vae writes into a folder is named in :data:`OUTPUTS` (or is a temp file of the form
``.NAME.*.tmp``, or the rows folder a run's config names): ``--overwrite`` removes exactly those, and refuses a
folder that holds anything else.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import InputError

LOCK = ".pyro-vae.lock"
#: every file a command writes into its folder: train (a run), compare (a study), evaluate and sample (into a run)
OUTPUTS = frozenset({
    "config.json", "checkpoint.pt", "checkpoint.prev.pt", "history.csv", "learning_curves.png",
    "evaluation.csv", "evaluation_per_point.csv", "evaluation_gaps.png", "samples.png", "samples.csv",
    "results.csv", "cost.csv", "per_point.csv", "budget.csv", "budget_comparisons.csv", "encoder_widths.csv",
    "gaps.png", "latents.png", "images.png", "budget.png", "gaps_during_training.png", "encoder_widths.png", LOCK,
    "optuna.db", "optuna.db-journal", "trials.csv", "best.json", "trials.png",
    "shards",  # a data-parallel run's folder of shard checkpoints
    "runs", "test_at_budgets.csv", "differences.csv", "differences.png", "selection.csv",  # a study's
    "kept", "selected.pt",  # a study's run: the weights its budgets and its selection chose
})
#: what a folder holding these files is, for messages (first match wins)
KINDS = (("checkpoint.pt", "a run of `pyro-vae train`"), ("checkpoint.prev.pt", "a run of `pyro-vae train`"),
         ("results.csv", "the output of `pyro-vae compare`"), ("runs", "the output of `pyro-vae compare`"), ("evaluation.csv", "the output of `pyro-vae evaluate`"),
         ("optuna.db", "a study of `pyro-vae tune`"), ("best.json", "a study of `pyro-vae tune`"))


#: (command, what the folder holds) that the command can continue with --resume
CONTINUED_BY_RESUME = {("train", "a run of `pyro-vae train`"), ("tune", "a study of `pyro-vae tune`"),
                       ("compare", "the output of `pyro-vae compare`")}


class FolderError(InputError):
    """A folder that this command may not write: busy, holding other output, or a path outside it."""


def is_temp(name: str) -> bool:
    """Whether ``name`` is one of the temp files pyro-vae writes before a rename (``.NAME.*.tmp``, ``NAME*.tmp``)."""
    return name.endswith(".tmp") and any(name.lstrip(".").startswith(out) for out in OUTPUTS)


def owned(name: str) -> bool:
    """Whether a file called ``name`` in an output folder is pyro-vae's."""
    return name in OUTPUTS or is_temp(name)


@contextmanager
def writer(folder, command: str, wait: bool = False) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the block (the folder is created); another holder is refused at once, or
    with ``wait`` waited for (for the moments a study's processes write its shared files).

    :raises FolderError: when another process holds it; the message names its PID and command.
    :raises OSError: when the folder cannot be created or written (read-only, not a folder).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{folder} is a file, not a folder: give --out a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FolderError(f"{folder} is not writable: make it writable, or give another --out.")
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise FolderError(f"{folder} is being written by {holder}: wait for it to finish, or give another --out."
                          ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} (pyro-vae {command})\n".encode(), 0)
        yield folder
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def holder(folder) -> Optional[str]:
    """Who holds ``folder``'s writer lock now ("process PID (pyro-vae COMMAND)"), or None."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def contents(folder) -> list:
    """The names in ``folder`` other than its lock file (sorted; empty when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK)


def describe(names) -> str:
    """What a folder holding ``names`` is, for a message."""
    return next((what for name, what in KINDS if name in names), "files")


def claim(folder, command: str, overwrite: bool = False, rows: Optional[Path] = None) -> None:
    """Make ``folder`` ready for a new ``command`` output: refuse one that holds anything unless ``overwrite``;
    with ``overwrite``, remove pyro-vae's files (and ``rows``, the rows folder the old run's config names) and
    refuse when anything else is there. Call it holding :func:`writer`. Nothing is removed when it refuses."""
    folder = Path(folder)
    names = contents(folder)
    if not names:
        return
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    if not overwrite:
        cont = " pass --resume to continue it," if (command, describe(names)) in CONTINUED_BY_RESUME else ""
        raise FolderError(f"{folder} already holds {describe(names)} ({shown}):{cont} pass --overwrite to replace "
                          f"it, or give another --out.")
    rows_name = rows.relative_to(folder.resolve()).parts[0] if rows is not None else None
    foreign = [n for n in names if not owned(n) and n != rows_name]
    if foreign:
        raise FolderError(f"--overwrite replaces only pyro-vae's own files, and {folder} also holds "
                          f"{', '.join(foreign[:4])}: move them away, or give another --out.")
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def nearest_existing(path) -> Path:
    """``path`` or its nearest ancestor that exists: where a file to be written there would be created."""
    path = Path(path)
    return next(p for p in (path, *path.parents) if p.exists())


def inside(folder, path, what: str) -> Path:
    """``path`` (relative paths are relative to ``folder``) resolved, symlinks followed; a :class:`FolderError`
    naming ``what`` unless it lies inside ``folder``."""
    folder = Path(folder).resolve()
    path = Path(os.path.expanduser(str(path)))
    full = (path if path.is_absolute() else folder / path).resolve()
    if full != folder and folder not in full.parents:
        raise FolderError(f"{what} {path} is outside the run folder {folder}: a run writes only inside its own "
                          f"folder; give a folder inside it (e.g. {folder / 'rows'}).")
    return full


#: the signals that stop a command (Ctrl-C, a scheduler's stop), held back while a file is written
STOPS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM wait: they are delivered when it ends, so that a file being written is
    finished and renamed, not left half-written (an interrupt inside ``torch.save`` turned into torch's own
    "unexpected pos" error). Outside the main thread, where Python runs no handler, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_file(path, write: Callable, mode: str = "wb") -> Path:
    """Write ``path`` through ``write(f)`` into a temp file beside it, then rename it over ``path``: a reader sees
    the old file or the new one, and a symlink planted at ``path`` is replaced, never written through. Ctrl-C and
    SIGTERM wait for the write to end (:func:`signals_held`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_held():
        return _write_file(path, write, mode)


def _write_file(path: Path, write: Callable, mode: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> Path:
    """:func:`write_file` for text."""
    return write_file(path, lambda f: f.write(text), mode="w")


def write_csv(frame, path, **kw) -> Path:
    """:func:`write_file` for a pandas frame (``kw`` to ``DataFrame.to_csv``; ``index=False`` by default)."""
    kw.setdefault("index", False)
    return write_file(path, lambda f: frame.to_csv(f, **kw), mode="w")
