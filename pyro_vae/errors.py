"""The errors that are about the user's input: the command line shows them as one line, exit status 2.

Usage::

    raise InputError("z_dim must be a positive integer, got 0; pass e.g. z_dim=8.")

Every check of a setting, a shape, a file or a run raises one of these, with a message that names the
problem and the fix. Anything else that escapes is a bug of ours, and ``pyro-vae`` shows its traceback.
``InputError`` is a ``ValueError`` (and ``InputTypeError`` also a ``TypeError``), so ``except ValueError``
in a script keeps working.
"""


class InputError(ValueError):
    """A setting, argument, data set, file or run that cannot be used as given; the message says how to fix it."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type."""
