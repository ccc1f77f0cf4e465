"""The run folder's study storage by default: Optuna's journal file, safe against what a sweep meets.

Optuna's `JournalFileBackend` appends one JSON line per storage operation and fsyncs it: less than half
the per-trial cost of SQLite in WAL mode (README, Benchmark: the published-shape moirai2 sweep, 100
trials, 5.8 s with SQLite and 2.9 s with the journal), resumable, and read by the Optuna CLI
(`--storage-class JournalFileBackend`) and optuna-dashboard. Two faults it does not survive alone:

- a write cut short (the disk fills mid-line): the torn line and every line appended after it make the
  whole journal unreadable. Here a failed append truncates the file back to where it began, and a torn
  last line (a process killed inside `write`) is dropped when the journal is opened, so what was written
  before stays readable and the run resumes from it.
- a process killed while it holds the lock: Optuna's symlink lock is then broken only after a 30 s grace
  period. Here the lock is an flock on a file beside the journal, which the kernel drops when its holder dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from optuna.storages.journal import JournalFileBackend


class _Flock:
    """An exclusive flock on `path`, per thread (each holder opens its own file description); the
    acquire/release pair Optuna's journal locks have."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._held = threading.local()

    def __reduce__(self) -> tuple[type[_Flock], tuple[Path]]:  # Ray ships the storage to its workers
        return type(self), (self._path,)

    def acquire(self) -> bool:
        fh: IO[str] = open(self._path, "a")  # noqa: SIM115 - closed in release
        fcntl.flock(fh, fcntl.LOCK_EX)
        self._held.fh = fh
        return True

    def release(self) -> None:
        fh = self._held.fh
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


class JournalFile(JournalFileBackend):
    """Optuna's journal file whose appends are whole lines or nothing, under a lock a dead process drops."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = _Flock(Path(f"{self.path}.lock"))
        super().__init__(str(self.path), lock_obj=self.lock)  # type: ignore[arg-type]  # only our appends lock
        self.lock.acquire()
        try:
            drop_torn_tail(self.path)
        finally:
            self.lock.release()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        self.lock.acquire()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    rest = memoryview(lines)
                    while rest:
                        rest = rest[os.write(fd, rest) :]
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, start)  # never leave a torn line for later appends to follow
                    raise
            finally:
                os.close(fd)
        finally:
            self.lock.release()


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (its write never finished) off the file at `path`."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        end, block = size, 65536
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            cut = fh.read(end - start).rfind(b"\n")
            if cut >= 0:
                fh.truncate(start + cut + 1)
                return
            end = start
        fh.truncate(0)
