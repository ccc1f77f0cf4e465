"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Also the two primitives around them: `check_writable` (an output folder is usable, tested before anything
is written) and `clean_temporaries` (what a killed writer left behind, removed when the next one starts).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from sweeper.errors import SweepError

_UMASK = os.umask(0)
os.umask(_UMASK)


TMP_SUFFIX = ".tmp"


def check_writable(path: Path, what: str) -> None:
    """`path` is a folder, or can be made one, and this process can write there; else one SweepError.

    Probes with a temporary file in the nearest existing folder (removed at once), so a read-only
    filesystem is caught too, which permission bits alone do not show (root can write anywhere else)."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            raise SweepError(f"{what} {path}: {probe} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise SweepError(f"{what} {path}: {probe} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise SweepError(f"{what} {path}: cannot write in {probe} ({exc.strerror})") from None


def clean_temporaries(folder: Path) -> int:
    """Remove what killed writers left in `folder` and below: `atomic_path`'s hidden `.NAME.XXXX.tmp`
    files. Call it while holding the folder's lock, so no live writer's file is taken. Returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.rglob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomic write through any library that writes to a path (Parquet, NumPy, matplotlib)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def read_json(path: Path) -> Any:
    return orjson.loads(Path(path).read_bytes())
