"""One exception family for everything a user can get wrong, and the faults the machine causes.

The CLI turns a `SweepError` into one line on stderr and exit code 2. A fault of the machine (disk full,
out of memory, a storage that stopped answering) is not a bug either: `machine_fault` recognises it, and
the CLI prints it as one line with exit code 1 (a run says how to resume). Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import re


class SweepError(Exception):
    """A user-facing error: bad input, missing data or weights, a broken rule."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(kind: str, value: str) -> str:
    """Validate a symbol, run, asset-class or model name before it becomes part of a path.

    The one name rule: a full match (`re.match` with `$` would let a trailing newline through)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise SweepError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def machine_fault(exc: BaseException) -> BaseException | None:
    """The OS-level cause of an exception (OSError, MemoryError, SQLite's "disk is full"), or None.

    Library wrappers (SQLAlchemy around sqlite3, Optuna around both) are looked through by following
    `__cause__` and `__context__`."""
    import sqlite3

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and not isinstance(cur, SweepError):  # bad input stays so
        seen.add(id(cur))
        if isinstance(cur, OSError | MemoryError | sqlite3.OperationalError):
            return cur
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return None


def out_of_memory(exc: BaseException) -> bool:
    """Whether torch (or Python) ran out of memory: CUDA raises `torch.OutOfMemoryError`, a RuntimeError
    saying "out of memory"; the CPU allocator a RuntimeError saying "can't allocate memory"."""
    text = str(exc)
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text
