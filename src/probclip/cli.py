"""The ``probclip`` command: a thin dispatcher to the subcommands' own modules, and the one place that turns
errors into an exit status.

Each subcommand lives in the module that owns its work and exposes ``main(argv) -> int``; the
dispatcher imports it only when it is asked for, so ``probclip --help`` stays fast.

Error policy (:func:`run_command`): a user error (:class:`~probclip.errors.ProbclipError`, an argparse error,
an ``OSError`` such as a missing file, a full disk or a denied permission) ends the command with ONE line on
stderr, ``probclip <command>: <message>`` (control characters escaped), and exit status 2 (usage, configuration)
or 1 (data, runtime); warnings are printed in one line too.
Anything else is a bug in probclip: reported as an internal error with its traceback, exit status 70.
``--debug`` (anywhere on the command line) or ``PROBCLIP_DEBUG=1`` prints the traceback of every error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence

from .errors import ProbclipError, UsageError
from .terminal import printable

__all__ = ["SUBCOMMANDS", "INTERNAL_ERROR", "main", "run_command", "debug_requested"]

from . import __version__

SUBCOMMANDS = {
    "quickstart": ("probclip.quickstart", "train ProLIP and a SigLIP baseline on the synthetic world, write a report"),
    "train": ("probclip.train.cli", "train or fine-tune a model from a YAML config"),
    "eval": ("probclip.eval.cli", "evaluate a model on a task (zero-shot, retrieval, ...)"),
    "synth": ("probclip.synthetic.cli", "generate the synthetic world or write it as webdataset shards"),
    "models": ("probclip.models.cli", "list the registered model configurations"),
    "embed": ("probclip.search.embed_cli", "embed a collection's images and captions into shards (torchrun-ready)"),
    "index": ("probclip.search.index_cli", "build the search indexes of an embedded collection (FAISS or Milvus)"),
    "search": ("probclip.search.search_cli", "search an indexed collection by CSD, cosine or inclusion"),
    "curate": ("probclip.curate.cli", "score image-text shards with uncertainty, filter them (DataComp-ready)"),
    "serve": ("probclip.serve.cli", "serve indexed collections over HTTP: search API, metrics and a web page"),
}

#: Exit status of an internal error (a bug in probclip; BSD's EX_SOFTWARE).
INTERNAL_ERROR = 70
DEBUG_FLAG = "--debug"
DEBUG_ENV = "PROBCLIP_DEBUG"


def _usage() -> str:
    lines = ["usage: probclip [--debug] <command> [options]", "", "commands:"]
    width = max(len(k) for k in SUBCOMMANDS)
    for name, (_, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("Run `probclip <command> --help` for the options of a command.")
    lines.append(f"Errors print one line; {DEBUG_FLAG} or {DEBUG_ENV}=1 also prints the traceback.")
    return "\n".join(lines)


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """True when ``--debug`` is in ``argv`` or ``PROBCLIP_DEBUG`` is set to something other than 0/empty."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _raise_usage_error(parser: argparse.ArgumentParser, message: str):
    raise UsageError(f"{message} (see `{parser.prog} --help`)")


@contextlib.contextmanager
def _one_line_reports(prefix: str) -> Iterator[None]:
    """While a command runs: every argparse parser raises ``UsageError`` instead of printing its usage block and
    exiting (subcommands build plain argparse parsers), and every warning is printed as one line
    ``<prefix>: warning: <Category>: <message>`` (Python's default adds the source line)."""
    original_error, original_show = argparse.ArgumentParser.error, warnings.showwarning

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {category.__name__}: {_one_line(str(message))}", file=file or sys.stderr)

    argparse.ArgumentParser.error = _raise_usage_error  # type: ignore[assignment]
    warnings.showwarning = show_warning
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original_error  # type: ignore[assignment]
        warnings.showwarning = original_show


def _one_line(text: str) -> str:
    """The message on one line, its control characters escaped (a file name or caption can hold any)."""
    return printable(" ".join(str(text).split())) or "(no message)"


_GENERIC = ("ProbclipError", "UsageError", "InputError")


def _describe(err: BaseException) -> str:
    """``"ShardError: shard not found: x.tar"``; the generic classes are not named."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        message = err.args[0]  # KeyError's str() would add quotes
    else:
        message = str(err)
    name = type(err).__name__
    return _one_line(message if name in _GENERIC else f"{name}: {message}")


def run_command(name: str, command: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run ``command(argv)`` under the error policy of the module docstring; returns the exit status.

    ``--debug`` is removed from ``argv`` before the command sees it.
    """
    debug = debug_requested(argv)
    args = [a for a in argv if a != DEBUG_FLAG]
    prefix = f"probclip {name}" if name else "probclip"
    previous_env = os.environ.get(DEBUG_ENV)
    if DEBUG_FLAG in argv:
        os.environ[DEBUG_ENV] = "1"  # seen by a nested run_command (a subcommand's main wraps itself too)
    try:
        with _one_line_reports(prefix):
            return int(command(args) or 0)
    except SystemExit as stop:  # --help and sys.exit() inside a command
        code = stop.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(_one_line(str(code)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except ProbclipError as err:
        if debug:
            traceback.print_exc()
        print(f"{prefix}: {_describe(err)}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file that is missing or unreadable, a full disk, a denied permission
        if debug:
            traceback.print_exc()
        print(f"{prefix}: {_describe(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: say so, with the traceback
        traceback.print_exc()
        print(f"{prefix}: internal error (a bug in probclip, please report it with the traceback above): "
              f"{type(err).__name__}: {_one_line(str(err))}", file=sys.stderr)
        return INTERNAL_ERROR
    finally:
        if DEBUG_FLAG in argv:
            if previous_env is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = previous_env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    global_debug = DEBUG_FLAG in argv[:1]
    if global_debug:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"probclip {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"probclip: unknown command {name!r}; expected one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return run_command(name, module.main, rest + ([DEBUG_FLAG] if global_debug else []))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
