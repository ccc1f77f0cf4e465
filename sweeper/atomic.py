"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Around them: `commit` (several files of one folder replaced as one step, completed by `finish_commit` if
the writer died half way), `exclusive` (one writer at a time, a lock the kernel drops when its process
dies), `check_writable` (an output folder is usable, tested before anything is written) and
`clean_temporaries` (what a killed writer left behind, removed when the next one starts).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
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
        fd, name = tempfile.mkstemp(prefix=".sweep-probe.", dir=probe)
        os.close(fd)
        os.unlink(name)
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


def json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, json_bytes(obj))


COMMIT = ".commit.pending"  # hidden and not *.json: readers that glob a folder's configs never see it


def commit(folder: Path, files: Mapping[str, bytes | None]) -> None:
    """Replace (or, for None, remove) several files under `folder` as one step: after a crash at any
    moment, either none or all of them change (once `finish_commit` has run, which every writer of the
    folder calls first).

    The commit point is one atomic write of an intent file holding every new content; the files are then
    replaced one by one and the intent removed. Replaying an intent is idempotent (whole contents, not
    edits). Names are relative paths inside `folder`. Call it holding the folder's `exclusive` lock."""
    for name in files:
        parts = Path(name).parts
        if Path(name).is_absolute() or not parts or any(p == ".." or p.startswith(".") for p in parts):
            raise ValueError(f"commit writes plain relative paths inside its folder, got {name!r}")
    encoded = {name: None if data is None else base64.b64encode(data).decode() for name, data in files.items()}
    write_json(Path(folder) / COMMIT, encoded)
    finish_commit(folder)


def finish_commit(folder: Path) -> bool:
    """Complete a `commit` whose writer died after its commit point; True when there was one."""
    intent = Path(folder) / COMMIT
    if not intent.is_file():
        return False
    for name, data in read_json(intent).items():
        if data is None:
            (Path(folder) / name).unlink(missing_ok=True)
        else:
            write_bytes(Path(folder) / name, base64.b64decode(data))
    intent.unlink()
    return True


def read_committed(folder: Path, name: str) -> bytes | None:
    """A file of `folder` as the last commit left it: from a pending intent when its writer died before
    finishing, so a reader sees all of that commit or none of it without writing anything itself."""
    intent = Path(folder) / COMMIT
    if intent.is_file():
        pending = read_json(intent)
        if name in pending:
            return None if pending[name] is None else base64.b64decode(pending[name])
    path = Path(folder) / name
    return path.read_bytes() if path.is_file() else None


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` while the block runs, waiting for another process that
    holds it (the kernel drops it when its holder dies, so a killed process never leaves it stale)."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive(lock: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` while the block runs, or raise SweepError(`busy`, with
    "{pid}" filled in) at once when another process holds it. The kernel drops the lock when the holding
    process dies, however it dies, so a killed writer never leaves a stale lock."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise SweepError(busy.format(pid=fh.read().strip() or "unknown")) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomic write through any library that writes to a path (Parquet, NumPy, matplotlib)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def read_json(path: Path) -> Any:
    return orjson.loads(Path(path).read_bytes())
