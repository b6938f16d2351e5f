"""The errors that are about the user's input: the command line shows them as one line, exit status 2.

Usage::

    raise InputError("z_dim must be a positive integer, got 0; pass e.g. z_dim=8.")

Every check of a setting, a shape, a file or a run raises one of these, with a message that names the
problem and the fix. Anything else that escapes is a bug of ours, and ``pyro-vae`` shows its traceback.
``InputError`` is a ``ValueError`` (and ``InputTypeError`` also a ``TypeError``), so ``except ValueError``
in a script keeps working.

Raised inside ``svi.step`` (in a model or guide that Pyro traces), the error stays one line: Pyro re-raises a
``ValueError`` from a trace with the trace's shape table appended to its message (``"...\\nTrace Shapes: ..."``);
an ``InputError`` keeps its own line as its message and the table in :attr:`InputError.trace_shapes`.
"""

#: how the shape table that Pyro's trace appends to an error's message begins
TRACE_TABLE = "\nTrace Shapes:"


class InputError(ValueError):
    """A setting, argument, data set, file or run that cannot be used as given; the message says how to fix it."""

    def __init__(self, message: str = "", *args):
        message, table, shapes = str(message).partition(TRACE_TABLE)
        super().__init__(message, *args)
        #: the shape table of the Pyro trace the error was raised in ("" outside one)
        self.trace_shapes = (table + shapes).strip("\n")


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type."""
