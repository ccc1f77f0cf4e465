"""Promotion: a run's winner replaces `hyperparams/best/<SYMBOL>/<freq>-h<H>.json` only when it is truly better.

Both the candidate and the current best are scored on the same origins and data (the current best is
re-scored there with its own knobs, checkpoint and seed, so differing protocols do not matter). Which
origins is the decision's first half (`arena`): neither config was selected on them, and a series of
promotions must not keep choosing on the same ones (that would make them a validation set):

- when the lake has grown since the candidate's run (the recorded bars unchanged, new bars after them),
  the origins after both configs' test windows: never seen by either;
- otherwise the candidate's test origins, with the number of earlier promotions decided on exactly these
  origins counted from `history.jsonl` and shown; once that reaches `max_reuse`, promotion is refused.

The second half (`decide`): the candidate is promoted when it beats the current best beyond noise on the
selection metric (the Diebold-Mariano test of `compare.py`); `--force` overrides both halves. Each
promotion appends a line, with the origins it was decided on, to `hyperparams/best/history.jsonl`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sweeper.atomic import (
    check_writable,
    clean_temporaries,
    commit,
    exclusive,
    finish_commit,
    json_bytes,
    read_committed,
)
from sweeper.compare import Comparison, paired_bootstrap
from sweeper.data import Series, load, resolve_lake
from sweeper.errors import SweepError, check_name
from sweeper.evaluate import task_on
from sweeper.metric import get
from sweeper.plan import MIN_TEST_ORIGINS, Plan, make_plan
from sweeper.record import Config
from sweeper.workspace import RunPaths, Workspace

MAX_REUSE = 3  # promotions one set of origins may decide before it is refused as worn out


@dataclass
class Decision:
    symbol: str
    promote: bool
    reason: str
    comparison: Comparison | None = None
    arena: dict[str, Any] | None = None  # the origins decided on (written to history.jsonl)


@dataclass(frozen=True)
class Arena:
    """The origins a promotion is decided on, the data they are read from, and how often they decided before."""

    series: Series
    plan: Plan  # `test` holds the deciding origins; `val` the candidate's (its MASE/MSIS scale)
    fresh: bool  # True: after both configs' test windows (the lake grew); False: the candidate's test origins
    reuses: int  # earlier promotions decided on exactly these origins

    def key(self) -> str:
        s, o = self.series, self.plan.test
        return f"{s.symbol}|{s.freq}|H={self.plan.protocol.horizon}|{s.ts[o[0]]}|{s.ts[o[-1]]}|{o.size}"

    def describe(self) -> dict[str, Any]:
        o = self.plan.test
        return {
            "origins": "fresh" if self.fresh else "candidate test",
            "key": self.key(),
            "count": int(o.size),
            "first_ts": str(self.series.ts[o[0]]),
            "last_ts": str(self.series.ts[o[-1]]),
            "earlier_decisions": self.reuses,
        }

    def said(self, max_reuse: int) -> str:
        d = self.describe()
        where = f"{d['count']} origins {d['first_ts'][:19]} .. {d['last_ts'][:19]}"
        if self.fresh:
            return f"on {where}, after both test windows"
        used = f"used by {self.reuses} earlier promotions (limit {max_reuse})"
        return f"on the candidate's test origins ({where}), {used}"


def _head(series: Series, rows: int) -> Series:
    return Series(series.symbol, series.freq, series.asset_class, series.ts[:rows], series.ohlcv[:rows], series.source)


def _series_now(candidate: Config, lake: str | None) -> tuple[Series, bool]:
    """The candidate's series as the lake holds it now, and whether it has grown: bars after the recorded
    ones, the recorded ones unchanged (anything else is changed data, an error)."""
    root = resolve_lake(lake or candidate.data.lake)
    now = load(root, [candidate.symbol], candidate.freq)[0]
    rows = candidate.data.rows
    head = _head(now, rows).fingerprint if len(now) >= rows else now.fingerprint
    if head != candidate.data.fingerprint:
        raise SweepError(
            f"data changed: the first {rows} bars of {now.symbol} {now.freq} in {root} are not the ones the "
            f"candidate recorded (fingerprint {head}, recorded {candidate.data.fingerprint})"
        )
    return now, len(now) > rows


def reuse_count(past: list[dict[str, Any]], key: str) -> int:
    """Promotions in `history.jsonl` decided on the origins named `key`."""
    return sum(1 for e in past if (e.get("arena") or {}).get("key") == key)


def arena(candidate: Config, current: Config, lake: str | None, past: list[dict[str, Any]]) -> Arena:
    """The origins neither config was selected on (module docstring)."""
    protocol = candidate.protocol_record()
    series, grown = _series_now(candidate, lake)
    plan = make_plan(_head(series, candidate.data.rows), protocol)  # the candidate's own origins
    fresh = np.zeros(0, dtype=np.int64)
    if grown:
        seen = max(np.datetime64(c.last_test_ts) for c in (candidate, current))
        start = int(np.searchsorted(series.ts, seen, side="right")) + protocol.horizon - 1  # targets all after
        fresh = np.arange(start, len(series) - protocol.horizon + 1, protocol.stride, dtype=np.int64)
    if fresh.size >= MIN_TEST_ORIGINS:
        plan = Plan(protocol, plan.val, fresh)
    where = Arena(series, plan, fresh.size >= MIN_TEST_ORIGINS, 0)
    return replace(where, reuses=reuse_count(past, where.key()))


def _arena_scores(candidate: Config, current: Config, where: Arena) -> Comparison:
    metric = candidate.selection_metric
    protocol = where.plan.protocol

    def scores(config: Config) -> np.ndarray:
        task = task_on(where.series, protocol, config, plan=where.plan)
        return task.scores(config.chosen_candidate(), "test")[metric]

    return paired_bootstrap(scores(candidate), scores(current), metric, protocol.horizon, seed=candidate.seed)


def decide(
    candidate: Config,
    current: Config | None,
    force: bool,
    lake: str | None,
    past: list[dict[str, Any]] | None = None,
    max_reuse: int = MAX_REUSE,
) -> Decision:
    symbol = candidate.symbol
    if candidate.chosen is None:
        return Decision(symbol, False, "the run selected nothing for this symbol")
    if current is None:
        return Decision(symbol, True, "no current best")
    for key in ("freq", "horizon"):
        now, new = getattr(current, key), getattr(candidate, key)
        if now != new and not force:
            return Decision(symbol, False, f"current best has {key} {now}, candidate {new}")
    where = arena(candidate, current, lake, past or [])
    worn = not where.fresh and where.reuses >= max_reuse
    if worn and not force:
        return Decision(
            symbol,
            False,
            f"refused: the candidate's test origins already decided {where.reuses} promotions (limit {max_reuse}); "
            "let the lake grow for fresh origins, or run with a later test window",
            arena=where.describe(),
        )
    cmp = _arena_scores(candidate, current, where)
    m = get(cmp.metric)
    detail = (
        f"{cmp.metric} {cmp.mean_a:.6g} vs {cmp.mean_b:.6g}, DM p = {cmp.p_value:.3g}, "
        f"diff 95% CI [{cmp.low:.4g}, {cmp.high:.4g}], {where.said(max_reuse)}"
    )
    if m.beats(cmp) and not worn:
        return Decision(symbol, True, f"better beyond noise: {detail}", cmp, where.describe())
    verdict = "worn-out origins" if worn else "within noise" if cmp.within_noise else "worse"
    if force:
        return Decision(symbol, True, f"forced ({verdict}): {detail}", cmp, where.describe())
    return Decision(symbol, False, f"not better beyond noise ({verdict}): {detail}", cmp, where.describe())


def promote(
    out: Path,
    run_id: str,
    symbols: list[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    lake: str | None = None,
    max_reuse: int = MAX_REUSE,
) -> list[Decision]:
    if max_reuse < 1:
        raise SweepError(f"--max-reuse must be >= 1, got {max_reuse}")
    run = RunPaths(out, run_id)
    if not run.hyperparams.is_dir():
        raise SweepError(f"run {run_id} has no configs: {run.hyperparams} not found")
    available = run.configs()
    wanted = symbols or list(available)
    for s in wanted:
        if check_name("symbol", s) not in available:
            raise SweepError(f"run {run_id} has no config for {s} (it has: {', '.join(available) or 'none'})")
    ws = Workspace(out)
    best = ws.best
    check_writable(best, "--out")
    with exclusive(ws.best_lock, "hyperparams/best is being promoted to by pid {pid}"):
        finish_commit(best)  # a promote killed after its commit point is completed first
        clean_temporaries(best)
        return _promote_each(out, run_id, available, wanted, force, dry_run, lake, max_reuse)


def _promote_each(
    out: Path,
    run_id: str,
    available: dict[str, Path],
    wanted: list[str],
    force: bool,
    dry_run: bool,
    lake: str | None,
    max_reuse: int,
) -> list[Decision]:
    ws = Workspace(out)
    best = ws.best
    decisions = []
    for s in wanted:
        candidate = Config.from_json(available[s])
        current_path, current = current_best(out, candidate)
        d = decide(candidate, current, force, lake, history(out), max_reuse)
        decisions.append(d)
        if d.promote and not dry_run:
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            entry = {
                "symbol": s,
                "run_id": run_id,
                "promoted_at": now,
                "previous_run_id": current.run_id if current else None,
                "reason": d.reason,
                "forced": force,
                "comparison": d.comparison.to_dict() if d.comparison else None,
                "arena": d.arena,
            }
            target = ws.best_path(*candidate.key)
            old = read_committed(best, HISTORY) or b""
            # the config and its history line in one step: a crash never leaves one without the other
            changes: dict[str, bytes | None] = {
                str(target.relative_to(best)): json_bytes(replace(candidate, promotion=entry).to_dict()),
                HISTORY: old + orjson.dumps(entry) + b"\n",
            }
            if current_path != target:  # a config of the older layout, now replaced under its new name
                changes[str(current_path.relative_to(best))] = None
            commit(best, changes)
    return decisions


HISTORY = "history.jsonl"


def current_best(out: Path, candidate: Config) -> tuple[Path, Config | None]:
    """The promoted config a candidate competes with: same symbol, frequency and horizon (in the older
    one-per-symbol layout too)."""
    ws = Workspace(out)
    path = ws.best_path(*candidate.key)
    legacy = ws.legacy_best_path(candidate.symbol)
    if not path.is_file() and legacy.is_file():
        old = Config.from_json(legacy)
        if old.key == candidate.key:
            return legacy, old
    return path, Config.from_json(path) if path.is_file() else None


def history(out: Path) -> list[dict[str, Any]]:
    data = read_committed(Workspace(out).best, HISTORY)
    return [orjson.loads(line) for line in data.splitlines()] if data else []
