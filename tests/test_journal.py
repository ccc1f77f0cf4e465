"""The run folder's journal file: appends are whole lines or nothing, a torn tail is dropped on open, and a
killed holder never leaves the lock behind (sweeper/journal.py)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from sweeper.journal import JournalFile
from sweeper.workspace import RunPaths


def study_on(path: Path, trials: int) -> dict[int, float]:
    """`trials` more finished trials of the journal's study; the values of all its trials by number."""
    study = optuna.create_study(
        study_name="s", storage=optuna.storages.JournalStorage(JournalFile(path)), load_if_exists=True
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=trials)
    return {t.number: t.value for t in study.trials}


def reread(path: Path) -> dict[int, float]:
    study = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFile(path)))
    return {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}


def test_an_append_the_disk_cuts_short_leaves_the_journal_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "study.journal"
    values = study_on(path, 3)
    size = path.stat().st_size
    real_write = os.write
    calls = []

    def half_then_full(fd: int, data: memoryview) -> int:  # the disk takes half a line, then no more
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    storage = optuna.storages.JournalStorage(JournalFile(path))
    study = optuna.load_study(study_name="s", storage=storage)
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        study.ask()
    monkeypatch.undo()
    assert len(calls) == 2 and path.stat().st_size == size  # half a line went in, and came out again
    assert reread(path) == values
    study_on_more = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFile(path)))
    study_on_more.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)  # appends go on after it
    assert len(reread(path)) == 5


def test_a_torn_last_line_is_dropped_when_the_journal_opens(tmp_path: Path) -> None:
    path = tmp_path / "study.journal"
    values = study_on(path, 4)
    with open(path, "ab") as fh:
        fh.write(b'{"op_code":5,"worker_id":"w","trial_id":4,"st')  # a process killed inside write()
    plain = tmp_path / "plain.journal"
    shutil.copy(path, plain)
    backend = optuna.storages.journal.JournalFileBackend(str(plain))
    for name in ("t", "u"):  # the first joins the torn line (and is lost with it), the second follows
        backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": name, "directions": [1]}])
    with pytest.raises(ValueError):  # Optuna's own backend cannot read past it any more
        list(backend.read_logs(0))
    assert reread(path) == values and path.read_bytes().endswith(b"\n")
    study_on_more = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFile(path)))
    study_on_more.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(reread(path)) == 5


def test_a_killed_holder_never_leaves_the_lock_behind(tmp_path: Path) -> None:
    path = tmp_path / "study.journal"
    study_on(path, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from sweeper.journal import JournalFile; JournalFile({str(path)!r}).lock.acquire(); "
         "print('held', flush=True); import time; time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    start = time.monotonic()
    assert len(study_on(path, 2)) == 3  # appends again at once: Optuna's symlink lock would wait 30 s
    assert time.monotonic() - start < 10


def test_a_run_folder_keeps_its_sqlite_store_and_new_runs_use_the_journal(tmp_path: Path) -> None:
    old, new = RunPaths(tmp_path, "old"), RunPaths(tmp_path, "new")
    old.results.mkdir(parents=True)
    old.study_db.touch()  # a run made while SQLite was the default
    assert old.storage_url() == f"sqlite:///{old.study_db.resolve()}"
    assert new.storage_url() == f"journal:{new.study_journal.resolve()}"
    assert new.storage_url("sqlite") == f"sqlite:///{new.study_db.resolve()}"
