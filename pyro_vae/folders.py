"""Output folders that cannot be lost or mixed: one writer at a time, nothing replaced unasked, nothing outside.

Usage::

    with folders.writer(out, "train"):                      # an OS lock; a second writer is refused, naming its PID
        folders.claim(out, "train", overwrite=False)        # refuses a folder that holds a run or other output
        folders.write_text(out / "config.json", text)        # atomic (temp file, rename), never through a symlink
    rows = folders.inside(out, "rows", "rows_on_disk")       # a path the run names, refused unless inside ``out``
    with folders.reader(run, "evaluate", writes=True):       # shared; refused while --overwrite replaces the run
        with folders.all_or_none():                          # the files written here go in place together, or none
            folders.write_text(run / "evaluation.csv", text)

The lock is ``fcntl.flock`` on ``OUT/.pyro-vae.lock``: the kernel releases it when the process ends, however
it ends, so a killed run never leaves its folder locked. A lock file that is a symlink is refused. Taking the lock
of a folder pyro-vae wrote before (its lock file is there) removes the temp files (:func:`is_temp`) that a killed
write left in it: while the lock is held, no other writer's can be live.

**Readers and writers.** ``evaluate`` and ``sample`` hold :func:`reader` on each run they read: ``flock``
``LOCK_SH`` on ``RUN/.pyro-vae.readers``. A writer that replaces a folder (:func:`claim` with ``overwrite``:
``train``, ``compare``, ``tune --overwrite``) takes that file ``LOCK_EX`` (and every such file under the folder: a
study's runs) before it removes anything, and keeps it until it lets go of its writer lock: ``--overwrite`` is
refused while a run is read (naming the readers' PIDs), and a reader is refused while its run is replaced (naming
the writer's). Reading a run while it is simply trained (``train``, ``train --resume``) stays allowed: a checkpoint
is replaced by a rename, so a reader gets the last complete one (``evaluate`` records its epoch), and its own copy
of the settings is checked against ``config.json`` (:func:`pyro_vae.runs.load_run`). ``evaluate``, which writes a
set of files into each run, holds ``RUN/.pyro-vae.outputs.lock`` ``LOCK_EX`` too (``reader(..., writes=True)``),
and its ``--out`` under :func:`writer`: two evaluates of one run, or into one ``--out``, never interleave; the
second is refused. Within :func:`all_or_none`, a set of files goes into place together or not at all.

Every file pyro-vae writes into a folder is named in :data:`OUTPUTS` (or is a temp file of the form
``.NAME.*.tmp``, or the rows folder a run's config names): ``--overwrite`` removes exactly those, and refuses a
folder that holds anything else. A file is written into a temp file, created anew (``O_EXCL``, so never through
a planted link) with the mode a plain ``open()`` gives (``0o666`` less the umask), then renamed over its name.

**Nothing outside.** Every path a run names, and everything under a folder it names, is resolved (symlinks
followed) and must lie inside the run folder (:func:`inside`, :func:`inside_all`): a symlink planted to lead out
is refused in one line that names the link, never read or written through. :func:`pyro_vae.runs.check_paths`
applies the rule, for ``train --resume``, ``load_run`` (``evaluate``, ``sample``) and a study continuing or
reading its run, to the files there that are read (:data:`pyro_vae.runs.READS`: ``config.json``, the checkpoints,
``shards/``, ``kept/``, ``selected.pt``; a study's result files), the rows folder ``config.json`` names and the
rows folders and shard files the checkpoint names. The other outputs are only ever replaced by a rename: a link
planted at one is replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

from .errors import InputError

LOCK = ".pyro-vae.lock"
#: the readers' lock: shared by each reader of a run (:func:`reader`), exclusive while a writer replaces the folder
READERS = ".pyro-vae.readers"
#: the lock of the set of files a reader writes into a run (evaluate's), exclusive (``reader(..., writes=True)``)
READ_OUTPUTS = ".pyro-vae.outputs.lock"
#: pyro-vae's lock files: never removed by ``--overwrite`` (they are what it holds), never listed by :func:`contents`
LOCKS = (LOCK, READERS, READ_OUTPUTS)
#: every file a command writes into its folder: train (a run), compare (a study), evaluate and sample (into a run)
OUTPUTS = frozenset({
    "config.json", "checkpoint.pt", "checkpoint.prev.pt", "history.csv", "learning_curves.png",
    "evaluation.csv", "evaluation_per_point.csv", "evaluation_gaps.png", "samples.png", "samples.csv",
    "results.csv", "cost.csv", "per_point.csv", "budget.csv", "budget_comparisons.csv", "encoder_widths.csv",
    "gaps.png", "latents.png", "images.png", "budget.png", "gaps_during_training.png", "encoder_widths.png", *LOCKS,
    "optuna.db", "optuna.db-journal", "trials.csv", "best.json", "trials.png",
    "shards",  # a data-parallel run's folder of shard checkpoints
    "runs", "test_at_budgets.csv", "differences.csv", "differences.png", "selection.csv",  # a study's
    "differences_ais.png",  # a join's, beside a study's
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


#: the files that readers of a run write into it (evaluate's, sample's): a writer taking the run leaves their temp
#: files alone, since a reader may be writing them now
READERS_WRITE = frozenset({"evaluation.csv", "evaluation_per_point.csv", "evaluation_gaps.png", "samples.png",
                           "samples.csv"})


def is_temp(name: str, of=OUTPUTS) -> bool:
    """Whether ``name`` is one of the temp files pyro-vae writes before a rename (``.NAME.*.tmp``, ``NAME*.tmp``) of
    the outputs ``of`` (default: any)."""
    return name.endswith(".tmp") and any(name.lstrip(".").startswith(out) for out in of)


def owned(name: str) -> bool:
    """Whether a file called ``name`` in an output folder is pyro-vae's."""
    return name in OUTPUTS or is_temp(name)


@contextmanager
def writer(folder, command: str, wait: bool = False) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the block (the folder is created); another holder is refused at once, or
    with ``wait`` waited for (for the moments a study's processes write its shared files).

    Once it holds the lock of a folder pyro-vae wrote before (the lock file was there), it removes the temp files
    a killed write left in it (:func:`is_temp`; not in its subfolders, which may be other writers' folders).

    :raises FolderError: when another process holds it (the message names its PID and command), or the lock file
        is a symlink.
    :raises OSError: when the folder cannot be created or written (read-only, not a folder).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{folder} is a file, not a folder: give --out a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FolderError(f"{folder} is not writable: make it writable, or give another --out.")
    lock = _not_a_link(folder / LOCK)
    used = lock.exists()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        if wait:
            fcntl.flock(fd, fcntl.LOCK_EX)
        locked = wait or _try_lock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        raise
    if not locked:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise FolderError(f"{folder} is being written by {holder}: wait for it to finish, or give another --out."
                          ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} (pyro-vae {command})\n".encode(), 0)
        if used:  # (not the temp files of what a reader may be writing now: evaluate's tables, sample's figure)
            for name in os.listdir(folder):
                if is_temp(name) and not is_temp(name, READERS_WRITE) and not (folder / name).is_dir():
                    (folder / name).unlink(missing_ok=True)
        _replacing[_key(folder)] = []  # the readers' locks a claim with overwrite takes, held until the end here
        yield folder
    finally:
        _release(_replacing.pop(_key(folder), []))
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
    """The names in ``folder`` other than its lock files (:data:`LOCKS`; sorted; empty when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in LOCKS)


def describe(names) -> str:
    """What a folder holding ``names`` is, for a message."""
    return next((what for name, what in KINDS if name in names), "files")


def claim(folder, command: str, overwrite: bool = False, rows: Optional[Path] = None) -> None:
    """Make ``folder`` ready for a new ``command`` output: refuse one that holds anything unless ``overwrite``;
    with ``overwrite``, remove pyro-vae's files (and ``rows``, the rows folder the old run's config names) and
    refuse when anything else is there. Call it holding :func:`writer`. Nothing is removed when it refuses.

    Replacing takes the readers' lock of ``folder``, and of every folder under it that has one (a study's runs),
    exclusively, and holds them until the :func:`writer` block ends: a run that :func:`reader` holds is not
    replaced (refused, naming the readers), and no reader starts on the folder while it is replaced."""
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
    held = _replacing.get(_key(folder))
    taken = _exclude_readers(folder, command)
    try:
        for name in names:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    finally:
        if held is None:  # not under writer() here: nothing holds the folder after this call
            _release(taken)
        else:
            held.extend(taken)


def _key(folder) -> str:
    return os.path.realpath(folder)


#: folder (real path) -> the readers' locks that a claim with overwrite holds there, while this process's writer()
#: holds the folder
_replacing: dict = {}


def _release(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):  # (a file opened read-only)
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _try_lock(fd: int, how: int) -> bool:
    """``flock(fd, how | LOCK_NB)``: False when another open file holds a lock that conflicts."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return False


def _not_a_link(lock: Path) -> Path:
    """``lock``, one of :data:`LOCKS`; a :class:`FolderError` when it is a symlink (``O_NOFOLLOW`` would refuse it
    too, as "Too many levels of symbolic links")."""
    if lock.is_symlink():
        raise FolderError(f"{lock} is a symlink (to {os.readlink(lock)}), and pyro-vae's lock files are never one: "
                          f"remove the link, and run the command again.")
    return lock


def _open_lock(path: Path, create: bool = True) -> Optional[int]:
    """A lock file opened for flock: read-write (created with ``create``), or read-only where it cannot be written;
    None when it is not there and cannot be made (a read-only run: nothing can replace it there either)."""
    _not_a_link(path)
    try:
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0) | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _readers_of(fd: int) -> str:
    """Who holds a shared lock on the open file ``fd`` ("process PID", "processes PID, PID"), as the kernel lists
    them in ``/proc/locks`` (Linux); "another process" where it does not (one on another machine sharing the
    folder)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            listed = [line.split() for line in f]
    except OSError:
        listed = []
    pids = list(dict.fromkeys(parts[4] for parts in listed  # "1: FLOCK  ADVISORY  READ 1234 fe:00:5678 0 EOF"
                              if len(parts) >= 6 and parts[1:4] == ["FLOCK", "ADVISORY", "READ"]
                              and parts[5] == inode))
    if not pids:
        return "another process"
    return ("process " if len(pids) == 1 else "processes ") + ", ".join(pids[:4]) + (", ..." if len(pids) > 4 else "")


def _exclude_readers(folder: Path, command: str) -> list:
    """The readers' locks of ``folder`` and of the folders under it that have one, taken exclusively, each naming
    this process as the one that replaces (refused, naming the readers, when one is held); returns their fds."""
    paths = [folder / READERS]
    for top, _, files in os.walk(folder):  # symlinks not followed
        if READERS in files and Path(top) != folder:
            paths.append(Path(top) / READERS)
    taken = []
    try:
        for path in paths:
            fd = _open_lock(path, create=path.parent == folder)
            if fd is None:
                continue
            if not _try_lock(fd, fcntl.LOCK_EX):
                who = _readers_of(fd)
                os.close(fd)
                raise FolderError(f"{path.parent} is being read by {who}: wait for it to finish (--overwrite can "
                                  f"replace it then), or give another --out.")
            taken.append(fd)
            with contextlib.suppress(OSError):  # (opened read-only: a refused reader then names no one)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"process {os.getpid()} (pyro-vae {command} --overwrite)\n".encode(), 0)
    except BaseException:
        _release(taken)
        raise
    return taken


@contextmanager
def reader(folder, command: str, writes: bool = False) -> Iterator[Path]:
    """Hold ``folder``'s readers' lock, shared, for the block: while it is held, ``--overwrite`` does not replace the
    run (refused, naming this process), and a run being replaced is refused here at once, naming the writer. A run
    that is simply being trained can be read (a checkpoint is replaced by a rename: the reader gets the last
    complete one).

    With ``writes`` (``evaluate``, which writes a set of files into the run), the run's outputs lock is held too,
    exclusively: a second such command on the run is refused at once, naming the first.

    A folder that holds no run (no ``config.json``) is not locked, and no lock file is made in it
    (:func:`pyro_vae.runs.load_run` then says what it is); nor is a run in a folder that cannot be written and has
    no lock file (nothing can replace it there).

    :raises FolderError: when a writer replaces the run, or with ``writes`` another command writes into it.
    """
    folder = Path(folder)
    with contextlib.ExitStack() as hold:
        if (folder / "config.json").is_file() or (folder / READERS).is_file():
            fd = _open_lock(folder / READERS)
            if fd is not None:
                hold.callback(os.close, fd)
                if not _try_lock(fd, fcntl.LOCK_SH):
                    who = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise FolderError(f"{folder} is being replaced by {who}: wait for it to finish, then run "
                                      f"{command} again (on the new run).")
            if writes:
                hold.enter_context(_exclusive(folder / READ_OUTPUTS, command))
        yield folder


@contextmanager
def _exclusive(path: Path, command: str) -> Iterator[None]:
    """The lock file ``path`` held exclusively for the block, naming this process in it; refused at once."""
    fd = os.open(_not_a_link(path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        if not _try_lock(fd, fcntl.LOCK_EX):
            who = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FolderError(f"{path.parent} is being written by {who}: wait for it to finish, then run {command} "
                              f"again.")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} (pyro-vae {command})\n".encode(), 0)
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def nearest_existing(path) -> Path:
    """``path`` or its nearest ancestor that exists: where a file to be written there would be created."""
    path = Path(path)
    return next(p for p in (path, *path.parents) if p.exists())


def inside(folder, path, what: str, fix: Optional[str] = None) -> Path:
    """``path`` (relative paths are relative to ``folder``) resolved, symlinks followed; a :class:`FolderError`
    naming ``what`` unless it lies inside ``folder``. A path that lies inside as given, and that a symlink leads
    out, is refused naming the link. ``fix``: what to do about a path given outside (default: give a folder inside,
    e.g. ``FOLDER/rows``)."""
    given_folder = Path(os.path.abspath(folder))
    folder = given_folder.resolve()
    path = Path(os.path.expanduser(str(path)))
    given = path if path.is_absolute() else given_folder / path
    try:
        full = given.resolve()
    except (RuntimeError, OSError) as e:  # a loop of symlinks (RuntimeError up to Python 3.12)
        raise FolderError(f"{what} {path} cannot be resolved ({e}): remove the symlinks that loop.") from None
    if _within(folder, full):
        return full
    link = _link_out(Path(os.path.normpath(given)), given_folder, folder)
    if link is not None:
        raise FolderError(f"{what} {path} leads outside the run folder {folder} (the symlink {link} in it leads to "
                          f"{(folder / link).resolve()}): a run reads and writes only inside its own folder; replace "
                          f"the link by what it leads to, or remove it.")
    fix = fix or f"give a folder inside it (e.g. {folder / 'rows'})"
    raise FolderError(f"{what} {path} is outside the run folder {folder}: a run writes only inside its own folder; "
                      f"{fix}.")


def _link_out(path: Path, *folders) -> Optional[Path]:
    """The first symlink on the way from one of ``folders`` (the same folder, as given and resolved) down to
    ``path`` that leads outside it, relative to the folder; None when ``path`` does not lie under it as written."""
    for top in folders:
        if top != path and top not in path.parents:
            continue
        step = top
        for part in path.relative_to(top).parts:
            step = step / part
            if step.is_symlink() and not _within(folders[-1], step.resolve()):
                return step.relative_to(top)
    return None


def _within(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


def inside_all(folder, path, what: str, fix: Optional[str] = None) -> Path:
    """:func:`inside` for ``path`` and for everything under it (symlinks followed, each folder once): a folder a
    run names (of row files, shards, kept weights) holds no link that leads out of the run."""
    top, root = inside(folder, path, what, fix), Path(folder).resolve()
    todo, seen = [top], set()
    while todo:
        here = todo.pop()
        if here in seen or not here.is_dir():
            continue
        seen.add(here)
        todo += [inside(root, entry.relative_to(root), what, fix) for entry in sorted(here.iterdir())]
    return top


#: the signals that stop a command (Ctrl-C, a scheduler's stop), held back while a file is written
STOPS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM wait: they are delivered when it ends, so that a file being written is
    finished and renamed, not left half-written (an interrupt inside ``torch.save`` turned into torch's own
    "unexpected pos" error). Outside the main thread, where Python runs no handler, nothing changes.

    The signals are held by handlers that note them, and raised again once the previous handlers are back: a
    thread mask (``pthread_sigmask``) would not do, since the kernel hands a process's signal to any of its threads
    that does not block it (torch's), and Python then runs the handler in the main thread all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted = []
    previous = {stop: signal.signal(stop, lambda signum, frame: noted.append(signum)) for stop in STOPS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, signal.SIG_DFL if handler is None else handler)  # None: one set outside Python
        for stop in dict.fromkeys(noted):  # each once, in the order they came
            signal.raise_signal(stop)


def write_file(path, write: Callable, mode: str = "wb") -> Path:
    """Write ``path`` through ``write(f)`` into a temp file beside it, then rename it over ``path``: a reader sees
    the old file or the new one, and a symlink planted at ``path`` is replaced, never written through. Ctrl-C and
    SIGTERM wait for the write to end (:func:`signals_held`). Within :func:`all_or_none` the rename waits for the
    block's end. An ``OSError`` that names no file (a full disk) is raised naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with signals_held():
            staged = getattr(_staged, "files", None)
            if staged is None:
                return _write_file(path, write, mode)
            staged.append((_write_temp(path, write, mode), path))
            return path
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


#: the files :func:`all_or_none` has written and not yet renamed, in this thread
_staged = threading.local()


@contextmanager
def all_or_none() -> Iterator[None]:
    """Within the block, :func:`write_file` (and :func:`write_text`, :func:`write_csv`, ``plots.save``) writes each
    file into a temp file beside it and the renames wait for the block to end; then they are all made at once (Ctrl-C
    and SIGTERM wait for them). When the block raises (a full disk, Ctrl-C), its temp files are removed and no file
    is replaced: the files there before stay as they were, a whole set. Should a rename itself fail, the message
    names the files replaced and those kept. A block within another is part of it."""
    if getattr(_staged, "files", None) is not None:
        yield
        return
    files = _staged.files = []
    try:
        yield
    except BaseException:
        _discard(files)
        raise
    finally:
        _staged.files = None
    with signals_held():
        for i, (tmp, path) in enumerate(files):
            try:
                os.replace(tmp, path)
            except OSError as e:
                _discard(files[i:])
                done = ", ".join(str(p) for _, p in files[:i])
                raise FolderError(f"{path} could not be put in place ({e.strerror or e}): "
                                  + (f"{done} were replaced, " if done else "")
                                  + f"{path} and the others keep what they held: run the command again.") from None


def _discard(files) -> None:
    for tmp, _ in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_temp(path: Path, write: Callable, mode: str) -> str:
    """``write(f)`` into a new temp file beside ``path``, flushed to the disk; its name (removed when it fails)."""
    fd, tmp = temp_file(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def temp_file(folder, prefix: str, suffix: str = ".tmp") -> Tuple[int, str]:
    """A new file ``FOLDER/PREFIX<random>SUFFIX``, opened for writing: ``(fd, path)``, as ``tempfile.mkstemp``
    gives, but with the mode a plain ``open()`` gives it (``0o666`` less the umask), not mkstemp's ``0o600``.
    Created with ``O_EXCL``: a name that exists, a planted symlink included, is never opened."""
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", os.path.join(folder, f"{prefix}*{suffix}"))


def _write_file(path: Path, write: Callable, mode: str) -> Path:
    tmp = _write_temp(path, write, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _discard([(tmp, path)])
        raise
    return path


def write_text(path, text: str) -> Path:
    """:func:`write_file` for text."""
    return write_file(path, lambda f: f.write(text), mode="w")


def write_csv(frame, path, **kw) -> Path:
    """:func:`write_file` for a pandas frame (``kw`` to ``DataFrame.to_csv``; ``index=False`` by default)."""
    kw.setdefault("index", False)
    return write_file(path, lambda f: frame.to_csv(f, **kw), mode="w")
