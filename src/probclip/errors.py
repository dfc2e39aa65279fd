"""The errors a user can cause, and how the command line reports them.

A :class:`ProbclipError` is a mistake in what the user gave (an option, a config value, a file), not a bug
in probclip. The ``probclip`` command prints it as one line on stderr and exits with its ``exit_code``:
2 for usage and configuration errors (:class:`UsageError`), 1 for data and runtime errors
(:class:`InputError`). A traceback is printed only with ``--debug`` or ``PROBCLIP_DEBUG=1``.
"""

from __future__ import annotations

__all__ = ["ProbclipError", "UsageError", "InputError"]


class ProbclipError(Exception):
    """A user error: the message names the bad value and what would be accepted."""

    exit_code = 1


class UsageError(ProbclipError, ValueError):
    """A bad option or configuration value (exit status 2)."""

    exit_code = 2


class InputError(ProbclipError):
    """Bad or unreadable data: a file, a record, a collection (exit status 1)."""

    exit_code = 1
