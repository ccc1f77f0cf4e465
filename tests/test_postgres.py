"""Two Optuna worker processes (`--jobs 2`) on one study in a real PostgreSQL server, started on loopback
for these tests: every trial exactly once, the budget exact, and a killed run resumed."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import polars as pl
import pytest

from sweeper.search import INTERRUPTED, OWNER, storage_for
from tests.helpers import SHARED_LAKE

pytestmark = pytest.mark.xdist_group("postgres")
TRIALS = 40
RUN = ["run", "--symbols", "ETHUSD", "--lake", str(SHARED_LAKE), "--backends", "naive", "--jobs", "2"]
ORIGINS = ["--val-origins", "250", "--test-origins", "20"]


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.fail(f"PostgreSQL server binary {name} not found: run `make postgres` (scripts/ensure_postgres.sh)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server in a temp dir on 127.0.0.1, stopped and removed afterwards. As root,
    the server runs as the `postgres` system user (PostgreSQL refuses to run as root)."""
    root = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs a `postgres` system user for the server: run `make postgres`")
        for path in (root, sock):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    opts = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run([*as_user, pg_bin("initdb"), "-D", str(data), "-U", "sweep", "--auth=trust", "--no-sync"], **run)
    subprocess.run(
        [*as_user, pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "start"], **run
    )
    try:
        yield f"postgresql://sweep@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(root, ignore_errors=True)


def check_every_trial_once(study: optuna.Study, budget: int) -> list[optuna.trial.FrozenTrial]:
    """Unique, gap-free trial numbers; exactly `budget` trials finish, complete or pruned (interrupted ones
    are redone)."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))
    interrupted = [t for t in trials if t.user_attrs.get(INTERRUPTED)]
    complete = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(complete) == budget and len(trials) == budget + len(interrupted)
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    return complete


def test_two_workers_share_one_postgres_study(postgres_url: str, tmp_path: Path, sweep) -> None:
    result = sweep(
        *RUN, "--trials", TRIALS, *ORIGINS, "--storage", postgres_url, "--run-id", "pg", "--out", tmp_path, "--json"
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pg:ETHUSD--naive", storage=storage_for(postgres_url))  # named after the run
    complete = check_every_trial_once(study, TRIALS)
    owners = Counter(t.user_attrs[OWNER] for t in complete)
    assert len(owners) == 2, owners  # both workers took trials
    # and did not propose the same knobs: while TPE still explores (its later trials converge on a few of
    # the 42 points of naive's space), nearly every trial tries new sampled knobs (aggregation is not sampled)
    early = [t for t in complete if t.number < TRIALS // 2]
    sampled = {tuple(v for k, v in sorted(t.params.items()) if k != "aggregation") for t in early}
    assert len(sampled) > len(early) // 2, sampled
    assert pl.read_parquet(tmp_path / "results" / "pg" / "trials.parquet").height == TRIALS
    assert (tmp_path / "hyperparams" / "pg" / "ETHUSD.json").is_file()


def test_killed_parallel_run_resumes(postgres_url: str, tmp_path: Path) -> None:
    budget = 100
    sweep_bin = [sys.executable, "-c", "from sweeper.cli import main; main()"]
    args = [*RUN, "--trials", str(budget), *ORIGINS, "--storage", postgres_url, "--run-id", "k", "--out", str(tmp_path)]
    proc = subprocess.Popen(
        [*sweep_bin, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    name = "k:ETHUSD--naive"
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline and done < 10:
        time.sleep(0.1)
        try:
            done = len(
                optuna.load_study(study_name=name, storage=storage_for(postgres_url)).get_trials(
                    states=[optuna.trial.TrialState.COMPLETE]
                )
            )
        except KeyError:  # the study is not created yet
            continue
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and both workers, mid-trial
    proc.wait()
    study = optuna.load_study(study_name=name, storage=storage_for(postgres_url))
    before = {t.number: t.params for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")}
    assert 10 <= len(before) < budget, "the kill must land mid-sweep"
    out = subprocess.run([*sweep_bin, "run", "--resume", "k", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name=name, storage=storage_for(postgres_url))
    check_every_trial_once(study, budget)
    after = {t.number: t.params for t in study.trials}
    assert all(after[n] == p for n, p in before.items())  # finished trials kept, not redone
