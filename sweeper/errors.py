"""One exception family for everything a user can get wrong.

The CLI turns a `SweepError` into one line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import re


class SweepError(Exception):
    """A user-facing error: bad input, missing data or weights, a broken rule."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(kind: str, value: str) -> str:
    """Validate a symbol or run name before it becomes part of a path."""
    if not _NAME.match(value) or ".." in value:
        raise SweepError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value
