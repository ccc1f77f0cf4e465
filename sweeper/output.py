"""What the command line prints: one formatter for tables and JSON, and one progress bar.

Every command that lists things builds a `Listing` (the records, and the columns a person reads) and
prints it once: as a Rich table, or with `--json` as the records themselves on stdout. The table is a
view of the JSON, never a separate computation, so a script reading `--json` sees what a person sees,
and more. (The shape follows Optuna's `optuna/cli.py`, where one `_format_output` serves table, JSON
and YAML.) Progress goes to stderr when stdout carries JSON, so the JSON stays parseable.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

Record = Mapping[str, Any]
Step = Callable[[str, int, int], None]  # (label, done, total): one bar per label


def fmt(x: Any, digits: int = 4) -> str:
    """A cell: numbers to `digits` significant digits, None and NaN as '-'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


@dataclass(frozen=True)
class Column:
    """A table column: its header and how to read its cell from a record (a key, or a function)."""

    header: str
    cell: str | Callable[[Record], Any]
    numeric: bool = False
    digits: int = 4

    def text(self, record: Record) -> str:
        value = record.get(self.cell) if isinstance(self.cell, str) else self.cell(record)
        return value if isinstance(value, str) else fmt(value, self.digits)


def dumps(doc: Any) -> str:
    """JSON as the CLI prints it: indented, NumPy values as numbers, NaN as null."""
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


@dataclass
class Listing:
    """Records and how to show them: `--json` prints `{**meta, key: records}`, else a table and notes."""

    title: str
    columns: Sequence[Column]
    records: Sequence[Record]
    key: str = "rows"
    meta: Mapping[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()  # lines printed under the table; what they say is in the records too

    def document(self) -> dict[str, Any]:
        return {**self.meta, self.key: list(self.records)}

    def table(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        for col in self.columns:
            table.add_column(col.header, justify="right" if col.numeric else "left")
        for record in self.records:
            table.add_row(*(col.text(record) for col in self.columns))
        return table

    def emit(self, as_json: bool) -> None:
        if as_json:
            sys.stdout.write(dumps(self.document()) + "\n")
            return
        con = stdout_console()
        con.print(self.table())
        for note in self.notes:
            con.print(note, highlight=False)


def stdout_console() -> Console:
    """Stdout console; wide when piped, so tables in logs are not wrapped at 80 columns."""
    con = Console()
    return con if con.is_terminal else Console(width=160)


def stderr_console() -> Console:
    return Console(stderr=True)


@contextmanager
def progress(as_json: bool = False, label_width: int = 28, enabled: bool = True) -> Iterator[Step]:
    """A Rich progress display with elapsed time and ETA; yields `step(label, done, total)`.

    `total` 0 means unknown (a pulsing bar, no ETA). With `as_json` it draws on stderr, and only
    on a terminal, so stdout keeps nothing but the JSON.
    """
    console = stderr_console() if as_json else stdout_console()
    bar = Progress(
        TextColumn(f"{{task.description:<{label_width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled or (as_json and not console.is_terminal),
    )
    tasks: dict[str, Any] = {}

    def step(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total or None)
        bar.update(tasks[label], completed=done, total=total or None)

    with bar:
        yield step
