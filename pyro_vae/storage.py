"""Where a tuning's Optuna study lives: storage URLs (a relative SQLite path is relative to the study folder; a
password is never shown), the checks made before any work (a URL Optuna can open, its driver installed, an SQLite
file that is not a link out of the folder, not damaged, and there when resumed), and the storage itself, with
Optuna's heartbeat. :mod:`pyro_vae.tune` decides which study in it is a tuning's.

Usage::

    storage.check_storage(s)                  # before any work: one line naming the problem and the fix
    url = storage.storage_url(s)              # s.storage, relative SQLite resolved against s.out, or OUT/optuna.db
    storage.shown_url("postgresql://me:pw@host/db")   # 'postgresql://me:***@host/db'
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Optional

from . import settings
from .errors import InputError
from .settings import TuneSettings

#: the default storage: SQLite in the study folder
DATABASE = "optuna.db"
#: Optuna's heartbeat (seconds): a running trial records one every HEARTBEAT; one whose last is older than GRACE is
#: stale (its process died: SIGKILL, a lost machine) and is marked failed by the next process that starts a trial
HEARTBEAT, GRACE = 60, 600


def parse_url(text: str):
    """``text`` parsed as a database URL (``sqlalchemy.engine.make_url``), or None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(text)
    except (ArgumentError, ValueError, TypeError):
        return None


def password_of(text: str) -> Optional[str]:
    url = parse_url(text)
    return url.password if url is not None else None


def shown_url(text: str) -> str:
    """A storage URL as a message may show it: its password, if any, as ``***`` (also when it does not parse)."""
    url = parse_url(text)
    if url is None:
        return settings.shown(re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", text))
    return url.render_as_string(hide_password=True)


def sqlite_file(url) -> Optional[Path]:
    """The database file of a parsed SQLite URL, None for another database; relative paths as they are written."""
    if url.get_backend_name() != "sqlite":
        return None
    return Path(os.path.expanduser(url.database)) if url.database and url.database != ":memory:" else Path()


def storage_url(s: TuneSettings) -> str:
    """The study's storage: ``s.storage``, or SQLite in ``s.out`` (``optuna.db``). A relative SQLite path is
    relative to the study folder ``s.out``, not to the working directory, so that the URL ``config.json`` keeps and
    ``--resume`` is given again names one database from wherever it is run."""
    if not s.storage:
        return f"sqlite:///{Path(s.out).resolve() / DATABASE}"
    url = parse_url(s.storage)
    path = sqlite_file(url) if url is not None else None
    if not path or path.is_absolute():
        return s.storage
    return url.set(database=str(Path(s.out).resolve() / path)).render_as_string(hide_password=False)


def check_storage(s: TuneSettings) -> None:
    """A one-line :class:`InputError` before any work when ``s.storage`` is not a URL, names a database whose
    driver is not installed, or an SQLite file that cannot be made (in memory, in a folder that does not exist)."""
    if not s.storage:
        return
    url, shown = parse_url(s.storage), shown_url(s.storage)
    if url is None:
        raise InputError(f"tune --storage {shown} is not a database URL: give one Optuna takes, such as "
                         f"sqlite:////abs/path/optuna.db or postgresql://user@host/db.")
    from sqlalchemy.exc import NoSuchModuleError

    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise InputError(f"tune --storage {shown}: no database {url.drivername!r} is known to SQLAlchemy: give a "
                         f"URL such as sqlite:////abs/path/optuna.db or postgresql://user@host/db.") from None
    except ImportError as e:
        raise InputError(f"tune --storage {shown} needs the database driver {getattr(e, 'name', None) or e}, which "
                         f"is not installed: install it, or give another storage.") from None
    path = sqlite_file(url)
    if path is None:
        return
    if path == Path() or url.query.get("uri") or str(path).startswith("file:"):
        raise InputError(f"tune --storage {shown}: give an SQLite file as sqlite:///PATH (an in-memory database keeps "
                         f"no study, and URI filenames are not taken).")
    full = Path(storage_url(s).split("///", 1)[1]) if not path.is_absolute() else path
    if full.is_dir():
        raise InputError(f"tune --storage {shown}: {full} is a folder: name the database file in it.")
    if not full.parent.is_dir() and full.parent != Path(s.out).resolve():
        raise InputError(f"tune --storage {shown}: the folder {full.parent} does not exist: create it, or give a "
                         f"database in a folder that does"
                         f"{' (a relative path is relative to --out)' if not path.is_absolute() else ''}.")


def check_database(s: TuneSettings, url: str, resume: bool) -> None:
    """The SQLite file of the study, before Optuna opens it: not a link out of the folder (the default
    ``optuna.db``), there when ``resume`` (Optuna would make an empty one), and not damaged."""
    import sqlite3

    path = sqlite_file(parse_url(url))
    if not path:
        return
    shown = shown_url(s.storage) if s.storage else str(path)
    if not s.storage:  # OUT/optuna.db: the folder's own, written nowhere else
        for name in (path.name, *(path.name + end for end in ("-journal", "-wal", "-shm"))):
            link = path.with_name(name)
            if link.is_symlink():
                raise InputError(f"tune: {link} is a symbolic link (to {os.readlink(link)}), and a study's database "
                                 f"lives in its own folder: put the database itself there, or give --storage URL "
                                 f"for one elsewhere.")
        if path.is_file() and path.stat().st_nlink > 1:
            raise InputError(f"tune: {path} has other hard links, and a study's database lives in its own folder: "
                             f"put a copy of the database there, or give --storage URL for the shared one.")
    if not path.exists():
        if resume:
            where = f"--storage {shown}" if s.storage else "the folder's own"
            raise InputError(f"tune --resume: there is no database at {path} ({where}; --resume never makes one): "
                             f"give the --storage its study was made in, or start one without --resume.")
        return
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in con.execute("PRAGMA quick_check").fetchall()]
        finally:
            con.close()
    except sqlite3.Error as e:
        problems = [str(e)]
    if problems != ["ok"]:
        fix = "give another --storage" if s.storage else "start the study again with --overwrite"
        raise InputError(f"tune: the study's database {path} is damaged ({problems[0]}); nothing was changed: put "
                         f"back a good copy, or {fix}.")


def open_storage(s: TuneSettings, url: str, create: bool):
    """Optuna's ``RDBStorage`` of ``url``, with the heartbeat; its tables are made only with ``create``."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT, grace_period=GRACE,
                                          skip_table_creation=not create)


def problem(e: BaseException, url: str) -> str:
    """What went wrong in the storage, on one line, never with its password."""
    cause = e.__cause__ or e.__context__ or e
    text = (str(getattr(cause, "orig", None) or cause) or type(cause).__name__).splitlines()[0][:200]
    password = password_of(url)
    return text.replace(password, "***") if password else text
