"""Faults survived (issue 13): kills at random and at exact moments, a second process on a running run, a
full disk, a killed --jobs parent, an interrupted promote; and a resumed run equals the run it continues.

Exact moments come from a real `sweep` process that kills itself with SIGKILL at the n-th atomic rename
of a chosen file (before or after it): the same death a power-cut-free crash gives, at a chosen point.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest

from sweeper.atomic import COMMIT, read_committed
from sweeper.engines.local import run_study
from sweeper.objective import Candidate
from sweeper.promote import history
from sweeper.search import (
    INTERRUPTED,
    INTERRUPTS,
    OWNER,
    Budget,
    StudySettings,
    best_params,
    knobs_of,
    open_study,
    optuna_report,
    owner_id,
    recover,
    storage_for,
)
from sweeper.sweep import RunRequest, prepare
from sweeper.workspace import Workspace
from tests.helpers import (
    SHARED_LAKE,
    SWEEP_BIN,
    count_trials,
    shared_series,
    signal_mid_sweep,
    start_sweep,
    storage_of,
    sweep_command,
    wait_for_trials,
)

# A `sweep` that SIGKILLs itself at the n-th os.replace onto a path containing SWEEP_KILL_MATCH,
# just before it (SWEEP_KILL_WHEN=before: the temporary file is written, the rename not done) or after it.
KILL_AT = """
import os, signal
real, seen = os.replace, [0]
def replace(src, dst, **kw):
    hit = os.environ["SWEEP_KILL_MATCH"] in str(dst)
    seen[0] += hit
    at = hit and seen[0] == int(os.environ["SWEEP_KILL_NTH"])
    if at and os.environ["SWEEP_KILL_WHEN"] == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, **kw)
    if at:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from sweeper.cli import main
main()
"""


def killed_at(args: list[str], match: str, nth: int, when: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWEEP_KILL_MATCH": match, "SWEEP_KILL_NTH": str(nth), "SWEEP_KILL_WHEN": when}
    done = subprocess.run([sys.executable, "-c", KILL_AT, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, f"the kill point was never reached: {done.stderr}"
    return done


def sweep_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEP_BIN, *map(str, args)], capture_output=True, text=True, timeout=300)


def leftovers(out: Path) -> list[Path]:
    """Temporary files of interrupted writers, anywhere under `out`."""
    return [p for p in out.rglob(".*.tmp")] + list(out.rglob(COMMIT))


def study_of(db: Path, backend: str = "naive") -> optuna.Study:
    return optuna.load_study(study_name=f"ETHUSD--{backend}", storage=storage_of(db))


def kept(study: optuna.Study) -> list[tuple[dict, str, float | None, dict[int, float]]]:
    """The trials that count, in order: knobs, state, value and the running means reported at each chunk
    (interrupted ones are re-run under a new number)."""
    return [
        (t.params, t.state.name, t.value, t.intermediate_values)
        for t in study.trials
        if not t.user_attrs.get(INTERRUPTED)
    ]


def finished_trials(study: optuna.Study) -> dict[int, tuple]:
    """Trials that finished (COMPLETE or PRUNED) by number: knobs, state, value, running means."""
    return {
        t.number: (t.params, t.state.name, t.value, t.intermediate_values)
        for t in study.trials
        if t.state.name in ("COMPLETE", "PRUNED")
    }


def has_study(db: Path, backend: str) -> bool:
    return db.exists() and f"ETHUSD--{backend}" in optuna.get_all_study_names(storage_of(db))


def assert_complete(db: Path, trials: int, backend: str = "naive") -> None:
    """The whole budget finished (a trial ends COMPLETE, or PRUNED by the multi-fidelity search), nothing left
    running or queued, at least one trial complete, and the only failures the trials a kill cut short."""
    study = study_of(db, backend)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == trials and "COMPLETE" in states, states
    assert set(states) <= {"COMPLETE", "PRUNED", "FAIL"}, states
    assert all(t.user_attrs.get(INTERRUPTED) for t in study.trials if t.state.name == "FAIL")


# --- kills at exact points of a run ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "match,nth,when",
    [
        ("manifest.json", 1, "before"),  # before the first manifest write: nothing ran
        ("ETHUSD.json", 1, "before"),  # the config half written
    ],
)
def test_a_run_killed_at_any_write_resumes_or_starts_again(match: str, nth: int, when: str, tmp_path: Path) -> None:
    cmd = sweep_command(tmp_path, "x", ["naive"], 8)
    killed_at(cmd[len(SWEEP_BIN) :], match, nth, when)
    started = (tmp_path / "results" / "x" / "manifest.json").is_file()
    if started:
        done = sweep_cli("run", "--resume", "x", "--out", tmp_path)
    else:  # the id is free again, and --resume says so in one line
        refused = sweep_cli("run", "--resume", "x", "--out", tmp_path)
        assert refused.returncode == 2 and "never started" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "results" / "x" / "manifest.json").read_text())["status"] == "complete"
    naive = json.loads((tmp_path / "hyperparams" / "x" / "ETHUSD.json").read_text())["backends"]["naive"]
    assert naive["trials"] + naive["pruned_trials"] == 8 and naive["trials"] > 0
    assert_complete(tmp_path / "results" / "x" / "study.journal", 8)
    assert leftovers(tmp_path) == []  # the killed writer's temporary file was cleaned on start


# --- kills at random moments, and determinism ----------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run never stopped: what every resumed run must equal."""
    out = tmp_path_factory.mktemp("uninterrupted")
    done = subprocess.run(sweep_command(out, "u", ["naive", "drift"], 40), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("seed", [1])
def test_a_run_killed_at_random_resumes_to_the_uninterrupted_run(
    seed: int, uninterrupted: Path, tmp_path: Path
) -> None:
    proc = start_sweep(sweep_command(tmp_path, "u", ["naive", "drift"], 40))
    db = tmp_path / "results" / "u" / "study.journal"
    wait_for_trials(db, random.Random(seed).randint(1, 70))
    time.sleep(random.Random(seed).random() * 0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    before = {b: finished_trials(study_of(db, b)) for b in ("naive", "drift") if has_study(db, b)}
    done = sweep_cli("run", "--resume", "u", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    for backend in ("naive", "drift"):
        reference = study_of(uninterrupted / "results" / "u" / "study.journal", backend)
        assert "PRUNED" in {t.state.name for t in reference.trials}  # the run prunes, and resumes alike
        assert kept(study_of(db, backend)) == kept(reference)
        # no finished trial lost: each one finished before the kill is still there, as it was
        after = finished_trials(study_of(db, backend))
        assert {n: after[n] for n in before.get(backend, {})} == before.get(backend, {})
    resumed = json.loads((tmp_path / "hyperparams" / "u" / "ETHUSD.json").read_text())
    reference = json.loads((uninterrupted / "hyperparams" / "u" / "ETHUSD.json").read_text())
    assert resumed["chosen"] == reference["chosen"]
    for backend, ref in reference["backends"].items():  # every score but wall time (latency_s)
        got = resumed["backends"][backend]
        assert got["params"] == ref["params"]
        for split in ("validation", "test"):
            assert {k: v for k, v in got[split].items() if k != "latency_s"} == {
                k: v for k, v in ref[split].items() if k != "latency_s"
            }
    assert leftovers(tmp_path) == []


def task_for_determinism():
    req = RunRequest(
        symbols=["ETHUSD"], lake=str(SHARED_LAKE), backends=["naive"], trials=3, val_origins=60, test_origins=20
    )
    return prepare(req).tasks[0]


@pytest.fixture(scope="module")
def small_task():
    return task_for_determinism()


@pytest.fixture(scope="module")
def references(small_task, tmp_path_factory: pytest.TempPathFactory) -> dict[int, optuna.Study]:
    """Uninterrupted 25-trial studies by seed (journal storage: the cheapest that resumes)."""
    root = tmp_path_factory.mktemp("references")
    return {
        seed: run_study(
            small_task, "naive", StudySettings(f"journal:{root / f'{seed}.journal'}", ("crps",), Budget(25), seed)
        )
        for seed in (0, 7)
    }


@pytest.mark.parametrize("kill_after", [0, 11])
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("dies", ["before-its-knobs", "mid-trial", "after-a-rung"])
def test_resumed_run_equals_the_uninterrupted_one(
    kill_after: int, seed: int, dies: str, small_task, references, tmp_path: Path
) -> None:
    """Same trials (knobs, states, values, running means), same choice as a run with the same seed that was
    never stopped, also when the dying trial had already forecast, cached and reported a chunk of origins
    (its rung must not count when the later trials are ranked, and its cached chunk must change nothing)."""
    states = [t.state.name for t in references[seed].trials]
    assert "PRUNED" in states and "COMPLETE" in states  # the reference prunes: the resume must prune alike
    url = f"journal:{tmp_path / 'b.journal'}"
    run_study(
        small_task, "naive", StudySettings(url, ("crps",), Budget(kill_after), seed)
    )  # 0: only the defaults queued
    dying = open_study(StudySettings(url, ("crps",), Budget(25), seed), "ETHUSD", "naive").ask()  # dies in it
    space = small_task.spaces["naive"]
    if dies != "before-its-knobs":
        space.suggest(dying)
    if dies == "after-a-rung":
        cand = Candidate("naive", space.values(dying.params))
        _, scores = next(small_task.rungs(cand, space.aggregations, "crps"))
        optuna_report(dying)(1, float(np.mean(scores["crps"])))
        assert dying.study._storage.get_trial(dying._trial_id).system_attrs  # the pruner recorded its rung
    resumed = run_study(small_task, "naive", StudySettings(url, ("crps",), Budget(25), seed))
    assert kept(resumed) == kept(references[seed])
    assert best_params(resumed, space, "crps") == best_params(references[seed], space, "crps")


# --- what recovery takes from Optuna: public storage calls, and one convention of enqueue_trial --------------


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_interrupted_trials_are_failed_and_requeued_through_optuna_storage(
    storage: str, small_task, tmp_path: Path
) -> None:
    """`recover` finds a dead process's trial by number through the storage's public lookups and fails it
    there; its knobs are queued again, and only live owners' trials are left RUNNING."""
    url = f"sqlite:///{tmp_path / 's.db'}" if storage == "sqlite" else f"journal:{tmp_path / 's.journal'}"
    settings = StudySettings(url, ("crps",), Budget(3), 0)
    study = open_study(settings, "ETHUSD", "naive")
    space = small_task.spaces["naive"]
    dead = study.ask()
    knobs = space.suggest(dead)
    alive = study.ask()
    alive.set_user_attr(OWNER, owner_id())  # this process: alive
    assert recover(study, storage_for(url)) == 1
    trials = study.get_trials(deepcopy=False)
    assert trials[dead.number].state.name == "FAIL" and trials[dead.number].user_attrs[INTERRUPTED] is True
    assert trials[alive.number].state.name == "RUNNING"
    assert trials[-1].state.name == "WAITING" and space.values(knobs_of(trials[-1])) == knobs


def test_a_queued_trial_killed_before_its_first_suggestion_is_queued_again(small_task, tmp_path: Path) -> None:
    """Optuna keeps a queued trial's knobs in its system attribute "fixed_params" (no public accessor):
    `knobs_of` reads them there, so a trial killed before it suggested anything is queued again as it was."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_study(StudySettings(url, ("crps",), Budget(3), 0), "ETHUSD", "naive")
    space = small_task.spaces["naive"]
    queued = space.optuna_params(space.defaults())
    study.enqueue_trial(queued)
    dying = study.ask()  # popped from the queue, then killed: no params yet
    assert dying.params == {} and knobs_of(study.trials[dying.number]) == queued
    recover(study, storage_for(url))
    assert study.trials[-1].state.name == "WAITING" and study.trials[-1].system_attrs["fixed_params"] == queued


# --- machine interruptions: re-queued, never counted ------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        MemoryError(),
        OSError(errno.ENOSPC, "No space left on device"),
        sqlite3.OperationalError("database or disk is full"),
        KeyboardInterrupt(signal.SIGTERM),
    ],
    ids=["out of memory", "disk full", "storage full", "SIGTERM"],
)
def test_a_trial_the_machine_cut_short_is_requeued_not_counted(
    fault: BaseException, small_task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    real, calls = type(small_task).rungs, [0]

    def rungs(self, cand, *args, **kwargs):  # the fourth trial meets the fault
        calls[0] += 1
        if calls[0] == 4:
            raise fault
        return real(self, cand, *args, **kwargs)

    monkeypatch.setattr(type(small_task), "rungs", rungs)
    with pytest.raises(type(fault)):
        run_study(small_task, "naive", StudySettings(url, ("crps",), Budget(10), 0))
    study = open_study(StudySettings(url, ("crps",), Budget(10), 0), "ETHUSD", "naive")
    cut = study.trials[3]
    assert cut.state.name == "FAIL" and cut.user_attrs[INTERRUPTED] is True
    queued = study.trials[4]
    assert queued.state.name == "WAITING" and queued.system_attrs["fixed_params"] == cut.params  # queued again
    study = run_study(small_task, "naive", StudySettings(url, ("crps",), Budget(10), 0))
    assert_states = [t.state.name for t in study.trials]
    assert assert_states.count("COMPLETE") + assert_states.count("PRUNED") == 10 and assert_states.count("FAIL") == 1


def test_a_signal_in_optunas_bookkeeping_waits_for_the_next_trial() -> None:
    INTERRUPTS.in_optimize, INTERRUPTS.in_trial = True, False
    try:
        INTERRUPTS.signal(signal.SIGTERM)  # between trials: held, nothing raised
        assert INTERRUPTS.pending == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt) as caught:
            INTERRUPTS.check()
        assert caught.value.args == (signal.SIGTERM,) and INTERRUPTS.pending is None
        INTERRUPTS.in_trial = True
        with pytest.raises(KeyboardInterrupt):  # inside a trial: at once
            INTERRUPTS.signal(signal.SIGINT)
    finally:
        INTERRUPTS.in_optimize = INTERRUPTS.in_trial = False
        INTERRUPTS.pending = None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing is the point
def test_a_signal_python_swallows_in_a_finalizer_stops_the_next_trial() -> None:
    class Finalized:  # SQLAlchemy closes connections in finalizers like this one
        def __del__(self) -> None:
            INTERRUPTS.signal(signal.SIGINT)

    INTERRUPTS.in_optimize = INTERRUPTS.in_trial = True
    try:
        Finalized()  # the KeyboardInterrupt raised inside __del__ is printed and dropped by Python
        assert INTERRUPTS.pending == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # the next trial's first check
            INTERRUPTS.check()
    finally:
        INTERRUPTS.in_optimize = INTERRUPTS.in_trial = False
        INTERRUPTS.pending = None


def test_sigterm_exits_143_and_resume_redoes_the_cut_trial(tmp_path: Path) -> None:
    proc, stderr, db = signal_mid_sweep(tmp_path, "t", ["naive"], 60, 10, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "sweep run --resume t" in stderr and "Traceback" not in stderr
    kept_before = finished_trials(study_of(db))
    done = sweep_cli("run", "--resume", "t", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    after = finished_trials(study_of(db))
    assert len(kept_before) >= 10 and {n: after[n] for n in kept_before} == kept_before  # none lost or changed
    assert_complete(db, 60)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 MiB tmpfs (needs root); the test is skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte. Unbuffered: a buffered file keeps the bytes the full disk refused and
    raises ENOSPC again when it is closed."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
    return filler


def test_a_full_disk_stops_the_run_in_one_line_and_resume_loses_nothing(small_disk: Path) -> None:
    proc = start_sweep(sweep_command(small_disk, "d", ["naive"], 400))
    db = small_disk / "results" / "d" / "study.journal"
    wait_for_trials(db, 20)
    filler = fill(small_disk)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sweep run --resume d" in lines[0], stderr
    assert "No space left" in lines[0] or "disk is full" in lines[0], stderr
    before = count_trials(db)
    kept_before = finished_trials(study_of(db))
    filler.unlink()
    done = sweep_cli("run", "--resume", "d", "--out", small_disk)
    assert done.returncode == 0, done.stderr
    assert 20 <= before < 400
    after = finished_trials(study_of(db))
    assert {n: after[n] for n in kept_before} == kept_before  # no finished trial lost or changed
    assert_complete(db, 400)  # the trial the disk cut short did not use up the budget


# --- concurrency ---------------------------------------------------------------------------------------


def test_a_second_process_on_a_running_run_is_refused_in_one_line(tmp_path: Path) -> None:
    _, _, db = signal_mid_sweep(tmp_path, "c", ["naive"], 5000, 10, signal.SIGKILL)
    resume = [*SWEEP_BIN, "run", "--resume", "c", "--out", str(tmp_path)]
    first = start_sweep(resume)
    wait_for_trials(db, count_trials(db) + 3)  # the first resume holds the run and is at work
    second = subprocess.run(resume, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first resume must still be at work"
    assert second.returncode == 2, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "is in use by another sweep process (pid" in second.stderr
    # the refused one recovered nothing: the first one's running trial was not failed under it
    failed = [t for t in study_of(db).trials if t.state.name == "FAIL"]
    assert len(failed) <= 1 and all(t.user_attrs.get(INTERRUPTED) for t in failed)  # only the first kill's
    os.killpg(first.pid, signal.SIGINT)
    assert first.wait(timeout=60) == 130
    assert count_trials(db) > 13 and all(
        t.user_attrs.get(INTERRUPTED) for t in study_of(db).trials if t.state.name == "FAIL"
    )


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with_children = (task / "children").read_text().split() if (task / "children").exists() else []
            for c in map(int, with_children):
                if c not in found:
                    found.add(c)
                    todo.append(c)
    return found


def test_jobs_workers_die_with_their_killed_parent(tmp_path: Path) -> None:
    proc = start_sweep(sweep_command(tmp_path, "j", ["naive"], 3000, "--jobs", "2"))
    db = tmp_path / "results" / "j" / "study.journal"
    wait_for_trials(db, 10, timeout=120)
    workers = descendants(proc.pid)
    assert len(workers) >= 2, "the workers never started"
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone: nobody stops its pool
    proc.wait(timeout=30)
    deadline = time.time() + 15
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)
    done_before = count_trials(db)
    time.sleep(1)
    assert count_trials(db) == done_before  # nothing works on the run any more


# --- promote: one atomic step -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs; the first one promoted."""
    out = tmp_path_factory.mktemp("promote")
    for run_id, trials in (("first", 3), ("second", 6)):
        done = subprocess.run(sweep_command(out, run_id, ["naive", "drift"], trials), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert sweep_cli("promote", "first", "--out", out).returncode == 0
    return out


def assert_best_consistent(out: Path, expected_runs: list[str] | None = None) -> list[str]:
    """The config and history.jsonl agree: the config's promotion is the history's last line."""
    lines = history(out)
    config = json.loads(
        read_committed(
            Workspace(out).best, str(Workspace(out).best_path("ETHUSD", "1d", 1).relative_to(Workspace(out).best))
        )
    )
    assert config["promotion"] == lines[-1] and config["run_id"] == lines[-1]["run_id"]
    runs = [h["run_id"] for h in lines]
    if expected_runs is not None:
        assert runs == expected_runs
    return runs


@pytest.mark.parametrize(
    "nth,when",
    [(1, "before"), (1, "after"), (2, "after")],
    ids=["before the commit", "at the commit", "config written"],
)
def test_promote_killed_at_any_point_is_all_or_nothing(nth: int, when: str, promoted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(promoted, out, symlinks=True)
    killed_at(["promote", "second", "--force", "--out", str(out)], "hyperparams/best/", nth, when)
    runs = assert_best_consistent(out)  # what any reader sees right after the kill
    assert runs in (["first"], ["first", "second"]) and (runs == ["first"]) == (nth == 1 and when == "before")
    again = sweep_cli("promote", "second", "--dry-run", "--out", out)  # the next start completes it
    assert again.returncode == 0, again.stderr
    assert_best_consistent(out, runs)
    best = out / "hyperparams" / "best"
    on_disk = json.loads(Workspace(out).best_path("ETHUSD", "1d", 1).read_text())
    assert on_disk["promotion"] == json.loads((best / "history.jsonl").read_text().splitlines()[-1])
    assert leftovers(out) == []


def test_promote_killed_at_random_moments_stays_consistent(promoted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(promoted, out, symlinks=True)
    rng = random.Random(13)
    for _ in range(2):
        proc = start_sweep([*SWEEP_BIN, "promote", "second", "--force", "--out", str(out)])
        time.sleep(rng.uniform(0.5, 3.0))
        proc.kill()
        proc.communicate(timeout=60)
        assert_best_consistent(out)
    assert sweep_cli("promote", "second", "--force", "--out", out).returncode == 0
    runs = assert_best_consistent(out)
    assert runs[0] == "first" and runs[-1] == "second" and set(runs) == {"first", "second"}
    assert leftovers(out) == []


# A `sweep` that SIGKILLs itself as an import writes its second month: the staging folder is half full.
KILL_IN_IMPORT = """
import os, signal
import polars as pl
real, seen = pl.DataFrame.write_parquet, [0]
def write(self, *args, **kw):
    seen[0] += 1
    if seen[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kw)
pl.DataFrame.write_parquet = write
from sweeper.cli import main
main()
"""


def test_a_killed_import_leaves_nothing_the_next_import_keeps(tmp_path: Path) -> None:
    real = shared_series("LTCUSD", "1d")
    csv = tmp_path / "ltc.csv"
    columns = dict(zip(("open", "high", "low", "close", "volume"), real.ohlcv.T, strict=True))
    pl.DataFrame({"timestamp": [str(t) for t in real.ts], **columns}).write_csv(csv)
    lake = tmp_path / "lake"
    args = ["data", "import", str(csv), "--symbol", "LTC", "--freq", "1d", "--asset-class", "crypto"]
    args += ["--lake", str(lake), "--tz", "UTC"]
    killed = subprocess.run([sys.executable, "-c", KILL_IN_IMPORT, *args], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = lake / "asset_class=crypto" / "freq=1d"
    assert [p.name for p in folder.iterdir()] and all(p.name.startswith(".") for p in folder.iterdir())
    again = sweep_cli(*args)
    assert again.returncode == 0 and f"imported {len(real.ts)} bars" in again.stdout, again.stderr
    assert [p.name for p in folder.iterdir()] == ["symbol=LTC"]  # the killed import's staging folder is gone
