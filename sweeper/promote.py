"""Promotion: a run's winner replaces `hyperparams/best/<SYMBOL>.json` only when it is truly better.

Both the candidate and the current best are scored on the candidate's test origins and data (the current
best is re-scored there with its own knobs, checkpoint and seed, so differing protocols do not matter);
neither was selected on those origins. The candidate is promoted when the block-bootstrap interval of the
difference lies entirely on the better side of zero; `--force` overrides. Each promotion appends a line to
`hyperparams/best/history.jsonl`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sweeper.atomic import write_bytes, write_json
from sweeper.compare import Comparison, paired_bootstrap
from sweeper.errors import SweepError, check_name
from sweeper.evaluate import chosen_candidate, load_recorded, protocol_of, read_config, task_on
from sweeper.metrics import HIGHER_IS_BETTER


@dataclass
class Decision:
    symbol: str
    promote: bool
    reason: str
    comparison: Comparison | None = None


def _arena_scores(candidate: dict[str, Any], current: dict[str, Any], lake: str | None) -> Comparison:
    metric = candidate["selection_metric"]
    series = load_recorded(candidate, lake)
    protocol = protocol_of(candidate)
    new = task_on(series, protocol, candidate).scores(chosen_candidate(candidate), "test")[metric]
    old = task_on(series, protocol, current).scores(chosen_candidate(current), "test")[metric]
    return paired_bootstrap(new, old, metric, protocol.horizon, seed=candidate["seed"])


def decide(candidate: dict[str, Any], current: dict[str, Any] | None, force: bool, lake: str | None) -> Decision:
    symbol = candidate["symbol"]
    if not candidate.get("chosen"):
        return Decision(symbol, False, "the run selected nothing for this symbol")
    if current is None:
        return Decision(symbol, True, "no current best")
    for key in ("freq", "horizon"):
        if current[key] != candidate[key] and not force:
            return Decision(symbol, False, f"current best has {key} {current[key]}, candidate {candidate[key]}")
    cmp = _arena_scores(candidate, current, lake)
    better = cmp.low > 0 if cmp.metric in HIGHER_IS_BETTER else cmp.high < 0
    detail = f"{cmp.metric} {cmp.mean_a:.6g} vs {cmp.mean_b:.6g}, diff 95% CI [{cmp.low:.4g}, {cmp.high:.4g}]"
    if better:
        return Decision(symbol, True, f"better beyond noise: {detail}", cmp)
    verdict = "within noise" if cmp.within_noise else "worse"
    if force:
        return Decision(symbol, True, f"forced ({verdict}): {detail}", cmp)
    return Decision(symbol, False, f"not better beyond noise ({verdict}): {detail}", cmp)


def promote(
    out: Path,
    run_id: str,
    symbols: list[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    lake: str | None = None,
) -> list[Decision]:
    run_dir = out / "hyperparams" / check_name("run id", run_id)
    if not run_dir.is_dir():
        raise SweepError(f"run {run_id} has no configs: {run_dir} not found")
    available = {p.stem: p for p in sorted(run_dir.glob("*.json"))}
    wanted = symbols or list(available)
    for s in wanted:
        if check_name("symbol", s) not in available:
            raise SweepError(f"run {run_id} has no config for {s} (it has: {', '.join(available) or 'none'})")
    best = out / "hyperparams" / "best"
    decisions = []
    for s in wanted:
        candidate = read_config(available[s])
        current_path = best / f"{s}.json"
        current = read_config(current_path) if current_path.is_file() else None
        d = decide(candidate, current, force, lake)
        decisions.append(d)
        if d.promote and not dry_run:
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            entry = {
                "symbol": s,
                "run_id": run_id,
                "promoted_at": now,
                "previous_run_id": current["run_id"] if current else None,
                "reason": d.reason,
                "forced": force,
                "comparison": d.comparison.to_dict() if d.comparison else None,
            }
            write_json(current_path, {**candidate, "promotion": entry})
            _append_history(best / "history.jsonl", entry)
    return decisions


def _append_history(path: Path, entry: dict[str, Any]) -> None:
    """Append one line; the whole file is rewritten atomically so a crash never leaves half a line."""
    old = path.read_bytes() if path.is_file() else b""
    write_bytes(path, old + orjson.dumps(entry) + b"\n")


def history(out: Path) -> list[dict[str, Any]]:
    path = out / "hyperparams" / "best" / "history.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.is_file() else []
