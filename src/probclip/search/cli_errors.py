"""Running a search subcommand so that a user error is printed as one line with its exit status."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..errors import ProbclipError

__all__ = ["run_reporting_errors"]


def run_reporting_errors(command: str, body: Callable[[], int]) -> int:
    """Run ``body``; a ``ProbclipError`` becomes ``probclip <command>: <message>`` on stderr and its exit code."""
    try:
        return int(body() or 0)
    except ProbclipError as err:
        message = " ".join(str(err).split())
        print(f"probclip {command}: {message}", file=sys.stderr)
        return err.exit_code
