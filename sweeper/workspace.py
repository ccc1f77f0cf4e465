"""Every path under `--out`, in one place, and the names it keeps for itself.

    results/<run_id>/manifest.json      the request, status, and what was written
    results/<run_id>/study.journal      Optuna storage (journal file; study.db with --storage sqlite)
    results/<run_id>/cache/             forecast samples, reused by resumed runs and other workers
    results/<run_id>/finetuned/         fine-tuned weights by key, next to the forecast cache
    results/<run_id>/trials.parquet     every trial of every study
    results/<run_id>/origins.parquet    per-origin metrics of each selected candidate, val and test
    results/<run_id>/report.html        `sweep report`
    results/<run_id>/ray/               Ray Tune's experiment folders (--engine ray)
    results/eval/<timestamp>.json|.md   `sweep eval` reports
    hyperparams/<run_id>/<SYMBOL>.json  the per-symbol config (sweeper/store.py)
    hyperparams/best/<SYMBOL>/<freq>-h<H>.json   the promoted config of a symbol, frequency and horizon
                                                (hyperparams/best/<SYMBOL>.json: the older layout, still read)
    hyperparams/best/history.jsonl      one line per promotion
    models/<backend>/<name>/            weights written by `sweep models`

A run id shares the folders of `best` and `eval`, so those names are reserved: `--run-id best` would
silently replace the promoted configs that `promote` and the CI check rely on.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from sweeper.atomic import exclusive, read_json
from sweeper.errors import SweepError, check_name

BEST, EVAL = "best", "eval"
RESERVED = frozenset({BEST, EVAL})  # folders of hyperparams/ and results/ that are not runs


def check_run_id(run_id: str) -> str:
    """The name rule, plus: a run id never names a folder the workspace keeps for itself."""
    check_name("run id", run_id)
    if run_id.lower() in RESERVED:
        raise SweepError(f"invalid run id {run_id!r}: {', '.join(sorted(RESERVED))} are reserved names under --out")
    return run_id


class RunPaths:
    """The files of one run."""

    def __init__(self, out: Path, run_id: str) -> None:
        self.run_id = check_run_id(run_id)
        self.out = out
        self.results = out / "results" / run_id
        self.hyperparams = out / "hyperparams" / run_id

    manifest = property(lambda self: self.results / "manifest.json")
    cache = property(lambda self: self.results / "cache")
    study_db = property(lambda self: self.results / "study.db")
    study_journal = property(lambda self: self.results / "study.journal")
    report = property(lambda self: self.results / "report.html")
    trials = property(lambda self: self.results / "trials.parquet")
    origins = property(lambda self: self.results / "origins.parquet")
    ray = property(lambda self: self.results / "ray")  # Ray Tune's experiment folders

    def storage_url(self, storage: str | None = None) -> str:
        """The Optuna storage of the run: --storage as given; `journal` or `sqlite`: the run folder's
        journal or SQLite file; none: the store the run folder has (runs made before the journal was the
        default have study.db), else the journal."""
        if storage is None:
            storage = "sqlite" if self.study_db.exists() and not self.study_journal.exists() else "journal"
        if storage == "journal":
            return f"journal:{self.study_journal.resolve()}"
        if storage == "sqlite":
            return f"sqlite:///{self.study_db.resolve()}"
        return storage

    def config(self, symbol: str) -> Path:
        return self.hyperparams / f"{check_name('symbol', symbol)}.json"

    def configs(self) -> dict[str, Path]:
        """The run's per-symbol configs by symbol."""
        return {p.stem: p for p in sorted(self.hyperparams.glob("*.json"))}

    def load_manifest(self) -> dict[str, Any]:
        if not self.manifest.is_file():
            if self.results.is_dir():  # killed before its first manifest write: nothing ran, the id is free
                raise SweepError(
                    f"run {self.run_id} never started (no {self.manifest}): start it again with --run-id {self.run_id}"
                )
            raise SweepError(f"run {self.run_id} not found: no {self.manifest}")
        return read_json(self.manifest)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The run's lock for this host, held while a process works on the run: a second process on the
        same run is refused with one line. The file is per host: machines sharing --out through one
        PostgreSQL --storage work on one run together (their trials carry host:pid, see search.recover)."""
        return exclusive(
            self.results / f".lock-{socket.gethostname()}",
            f"run {self.run_id} is in use by another sweep process (pid {{pid}}); "
            "wait for it to finish, then --resume it if needed",
        )


class Workspace:
    """The folder `--out`: its runs, the promoted configs and the eval reports."""

    def __init__(self, out: Path) -> None:
        self.out = out

    results = property(lambda self: self.out / "results")
    hyperparams = property(lambda self: self.out / "hyperparams")
    best = property(lambda self: self.hyperparams / BEST)
    best_lock = property(lambda self: self.hyperparams / ".best.lock")
    eval_reports = property(lambda self: self.results / EVAL)
    models = property(lambda self: self.out / "models")

    def model(self, backend: str, name: str) -> Path:
        """Where `sweep finetune` and `sweep train` write the checkpoint `name` of `backend`."""
        return self.models / backend / check_name("model name", name)

    def run(self, run_id: str) -> RunPaths:
        return RunPaths(self.out, run_id)

    def runs(self) -> list[RunPaths]:
        """Every run that wrote a manifest (a reserved name written before it was reserved is not a run)."""
        found = sorted(m.parent.name for m in self.results.glob("*/manifest.json"))
        return [self.run(r) for r in found if r.lower() not in RESERVED]

    def best_path(self, symbol: str, freq: str, horizon: int) -> Path:
        """Where the promoted config of a symbol, frequency and horizon lives: BTCUSDT 1h and 1d side by side."""
        return self.best / check_name("symbol", symbol) / f"{check_name('freq', freq)}-h{int(horizon)}.json"

    def legacy_best_path(self, symbol: str) -> Path:
        """The older layout, one promoted config per symbol: read, and replaced when its key is promoted."""
        return self.best / f"{check_name('symbol', symbol)}.json"

    def best_configs(self) -> list[Path]:
        """Every promoted config, both layouts."""
        best = self.best
        return sorted(best.glob("*/*.json")) + sorted(best.glob("*.json")) if best.is_dir() else []


def recorded(value: str | Path) -> str:
    """How a file records a path it names: absolute, so it resolves from any working directory. A value
    that is no local path (a Hugging Face repo id, the lake label "demo") is kept as given."""
    path = Path(value).expanduser()
    return os.path.abspath(path) if path.exists() else str(value)


def resolved(value: str, named_in: Path) -> str:
    """A path recorded in the file `named_in`. Absolute ones are used as they are; a relative one (older
    versions recorded paths relative to the folder the sweep ran in) from the working directory when it
    exists there, else from the nearest folder above `named_in` that holds it."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return value
    found = next((base / path for base in Path(named_in).absolute().parents if (base / path).exists()), None)
    return value if found is None else str(found)
