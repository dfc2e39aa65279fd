"""Text that probclip prints to a terminal: captions, file names and messages with their control characters escaped.

A caption or a file name may hold terminal escape sequences (``ESC ]0;title BEL`` sets the window title,
``ESC [2J`` clears the screen) or bytes that are not UTF-8. Printed raw, they act on the user's terminal, or make
``print`` fail. :func:`printable` writes every control character (Unicode category ``Cc``: C0, DEL and C1), every
bidirectional override and every lone surrogate (a non-UTF-8 byte of a file name, as Python decodes it) as a
visible escape (``\\x1b``, ``\\n``, ``\\u202e``, ``\\udcff``), so that what is printed is what is stored, made
visible.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

#: Control characters (C0, DEL, C1), bidirectional embeddings, overrides and isolates, line and paragraph
#: separators, and lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, keep_newlines: bool = False) -> str:
    """``str(text)`` with every control character, bidirectional control and lone surrogate escaped (see the
    module docstring); backslashes are left as they are. ``printable("a\\x1b[2Jb") == "a\\\\x1b[2Jb"``.

    ``keep_newlines``: leave ``\\n`` as it is (for a multi-line block such as a table)."""
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in str(text).split("\n"))
    return _UNSAFE.sub(_escape, str(text))
