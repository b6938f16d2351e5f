"""Progress bars that read well both in a terminal and in a log.

Usage::

    for epoch in progress_bar(range(300), "fit", enabled=True):
        ...

In a terminal this is tqdm's live bar. When stderr is not a terminal (CI, ``nohup``,
a notebook's captured output), a live bar would write a carriage-return update many
times a second, and a log turns each into a line; there the bar writes whole lines
instead: one when the phase starts, at most one a minute while it runs, and one when
it ends.
"""

from __future__ import annotations

import re
import sys

from tqdm.auto import tqdm

_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: seconds between lines when stderr is not a terminal
LOG_INTERVAL = 60.0


class _Lines:
    """A file for tqdm that turns its carriage-return updates into whole lines.

    Cursor movements (nested bars) are dropped, and a line equal to the previous one
    (tqdm redraws the final state when a bar closes) is written once.
    """

    def __init__(self, stream):
        self.stream = stream
        self.last = None

    def write(self, text: str) -> None:
        for part in _CURSOR_MOVES.sub("", text).replace("\r", "\n").split("\n"):
            line = part.rstrip()
            if line.strip() and line != self.last:
                self.stream.write(line + "\n")
                self.last = line

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable, desc: str, enabled: bool = True, leave: bool = True, **kwargs):
    """tqdm over ``iterable``: live in a terminal; whole lines, at most one a minute, in a log.

    ``leave=False`` clears a finished bar in a terminal; in a log every phase keeps its last line.
    """
    if not enabled or is_terminal():
        return tqdm(iterable, desc=desc, disable=not enabled, leave=leave, **kwargs)
    return tqdm(iterable, desc=desc, file=_Lines(sys.stderr), mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL,
                ascii=True, ncols=100, leave=True, **kwargs)
