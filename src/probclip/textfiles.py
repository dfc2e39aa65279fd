"""Reading the text files users give probclip (CSV/TSV tables, JSON, plain text) with errors that name the file
and the line: non-UTF-8 bytes, malformed JSON, and CSV that the ``csv`` module would silently misread (an
unterminated quote swallowing the rest of the file, rows with more cells than the header)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import InputError
from .limits import current_limits, read_bounded

__all__ = ["TextFileError", "read_text_file", "read_json_file", "parse_json_text", "read_csv_table"]


class TextFileError(InputError, ValueError):
    """A text file is not UTF-8, or not valid JSON / CSV (the message names the file and the line)."""


def read_text_file(path: str | os.PathLike, max_bytes: int | None = None) -> str:
    """The UTF-8 text of ``path``; raises ``TextFileError`` naming the file and line of the first bad byte
    (a missing file raises ``FileNotFoundError``), and ``LimitExceededError`` for a file over ``max_bytes``
    (default: the ``max_text_file_bytes`` limit; a device or pipe is not read past it)."""
    path = Path(path)
    limit = current_limits().max_text_file_bytes if max_bytes is None else max_bytes
    raw = read_bounded(path, limit, "max_text_file_bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise TextFileError(f"{path} line {line}: byte 0x{raw[err.start]:02x} is not UTF-8 text; save the file as "
                            "UTF-8") from err


def parse_json_text(text: str, name: str) -> Any:
    """Parse JSON text; raises ``TextFileError`` naming ``name``, the line and column when malformed, and when
    nested too deeply for the parser (a crafted ``[[[[...]]]]``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TextFileError(f"{name} line {err.lineno} column {err.colno}: malformed JSON ({err.msg})") from err
    except RecursionError as err:
        raise TextFileError(f"{name}: JSON nested too deeply to parse (over about {sys.getrecursionlimit()} "
                            "levels); expected a flat configuration or listing") from err


def read_json_file(path: str | os.PathLike) -> Any:
    """The parsed JSON of ``path``; raises ``TextFileError`` naming the file, line and column when malformed."""
    return parse_json_text(read_text_file(path), str(path))


def read_csv_table(path: str | os.PathLike, delimiter: str | None = None) -> tuple[list[str], list[dict]]:
    """``(header, rows)`` of a CSV/TSV file with a header line; each row a ``{column: cell}`` dict.

    ``delimiter`` defaults to a tab when the header line holds one, else a comma. Raises ``TextFileError`` naming
    the file and line for non-UTF-8 bytes, an unterminated quote, a row with more cells than the header, or a file
    without a header.
    """
    text = read_text_file(path)
    first_line = text.split("\n", 1)[0]
    if delimiter is None:
        delimiter = "\t" if "\t" in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if not header or not any(cell.strip() for cell in header):
            raise TextFileError(f"{path} has no header line; expected column names separated by {delimiter!r}")
        rows = []
        for cells in reader:
            if not cells:
                continue  # a blank line
            if len(cells) > len(header):
                raise TextFileError(f"{path} line {reader.line_num}: {len(cells)} cells but the header has "
                                    f"{len(header)} columns ({header}); quote cells that contain {delimiter!r}")
            rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True)))
    except csv.Error as err:
        raise TextFileError(f"{path} line {reader.line_num}: malformed CSV ({err}); an unterminated quote "
                            "(\") is the usual cause") from err
    return header, rows
