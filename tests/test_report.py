"""`sweep report`: one self-contained HTML page from small real sweeps on the shared candles."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna

from sweeper.record import Config, Source
from sweeper.report import MIN_TRIALS, QUANTILES, coverage, header, importance, quantiles
from tests.helpers import SHARED_LAKE, V1_CONFIG

SMALL = ["--val-origins", "100", "--test-origins", "40"]


def _images(page: str) -> int:
    return len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page))


def _report(tmp_path: Path, sweep, run_id: str, *run_args: object) -> str:
    ran = sweep("run", "--lake", SHARED_LAKE, *SMALL, "--out", tmp_path, "--run-id", run_id, *run_args)
    assert ran.exit_code == 0, ran.output
    made = sweep("report", run_id, "--out", tmp_path)
    assert made.exit_code == 0, made.output
    page = (tmp_path / "results" / run_id / "report.html").read_text()
    # self-contained: every image is inline, nothing is fetched
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:|#)', page)
    return page


def test_daily_report_shows_every_part(tmp_path: Path, sweep) -> None:
    # every trial complete (no pruning): importances need MIN_TRIALS completed trials
    page = _report(
        tmp_path, sweep, "daily", "--symbols", "ETHUSD", "--freq", "1d", "--trials", MIN_TRIALS, "--no-prune"
    )
    cfg = json.loads((tmp_path / "hyperparams" / "daily" / "ETHUSD.json").read_text())
    # fans, cumulative and mean paired differences, ensemble weights, history, importances (enough trials)
    assert _images(page) == 6
    assert 'alt="cumulative CRPS difference against naive"' in page and "inside 90% band" in page
    assert "fANOVA (Hutter et al. 2014" in page and "PED-ANOVA" in page  # the importance method is named
    trading = cfg["backends"]["drift"]["trading"]["test"]
    assert "Trading read-out" in page and f">{trading['sharpe']:.5g}<" in page
    assert "ETHUSD" in page and all(f"<td>{b}" in page for b in ("naive", "drift", "seasonal_naive"))
    assert cfg["ensemble"]["weights"] and all(f">{w:.5g}<" in page for w in cfg["ensemble"]["weights"].values())
    first_test = cfg["protocol"]["test_origins"]["first_ts"].replace("T", " ")[:16]
    assert cfg["data"]["fingerprint"] in page and first_test in page
    names = {"chosen_vs_naive": "chosen vs naive", "ensemble_vs_chosen": "ensemble vs chosen"}
    assert all(names[c] in page for c in cfg["comparisons"] if c in names) and "within noise" in page
    assert "randomly initialised" not in page  # baselines only: no checkpoint to warn about


def test_multi_step_report_for_two_symbols(tmp_path: Path, sweep) -> None:
    args = ("--symbols", "BTCUSDT", "ETHUSDT", "--freq", "1h", "--horizon", 6, "--backends", "naive", "drift")
    page = _report(tmp_path, sweep, "hourly", *args, "--trials", 3)
    # per symbol: fans, two paired-difference plots, ensemble weights, history; too few trials for importances
    assert _images(page) == 2 * 5
    assert all(f'id="{s}"' in page for s in ("BTCUSDT", "ETHUSDT"))
    assert page.count(f"importances need at least {MIN_TRIALS}") == 2 * 2
    assert "6-bar fans" in page


def test_missing_run_is_one_line_and_exit_2(tmp_path: Path, sweep) -> None:
    for run_id in ("nope", "../escape"):
        result = sweep("report", run_id, "--out", tmp_path)
        assert result.exit_code == 2
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_header_warns_about_checkpoints_only_when_a_model_used_one() -> None:
    request = {"symbols": ["BTCUSDT"], "backends": ["naive", "marketgpt"], "trials": 5, "metric": "crps", "seed": 0}
    manifest = {"run_id": "r", "status": "complete", "created": "now", "request": request}
    config = Config.from_json(V1_CONFIG)  # one naive backend, no checkpoint
    naive = config.backends["naive"]

    def with_models(**sources: Source) -> list[Config]:
        models = {b: replace(naive, source=src) for b, src in sources.items()}
        return [replace(config, backends={"naive": naive, **models})]

    assert "randomly initialised" in header(manifest, with_models(marketgpt=Source("models/marketgpt/tiny", 8)))
    assert "randomly initialised" not in header(manifest, with_models())
    random = with_models(toto=Source("ck/toto", 8, random_init=True))  # written by `sweep models init`
    assert "Random weights</b>" in header(manifest, random)


def test_coverage_counts_actuals_inside_each_band() -> None:
    # quantiles 5/25/50/75/95% of four origins, one step: the actuals fall inside 90% only, both, neither, 90%
    q = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])[:, None, :].repeat(4, axis=1)
    actual = np.array([[0.5], [2.0], [5.0], [3.5]])
    assert coverage(q, actual) == {"50%": 0.25, "90%": 0.75}


def test_importance_says_why_it_is_missing() -> None:
    few = optuna.create_study()
    few.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=MIN_TRIALS - 1)
    assert "need at least" in importance(few)
    single = optuna.create_study()
    single.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=MIN_TRIALS)
    assert "single parameter" in importance(single)


def test_quantiles_of_weighted_draws() -> None:
    draws = np.random.default_rng(0).normal(size=(5, 101, 2))
    plain = quantiles(draws, np.full(101, 1 / 101))
    np.testing.assert_allclose(plain, np.quantile(draws, QUANTILES, axis=1), rtol=1e-12)  # numpy's linear
    # a 70/30 mixture of 4 draws at 0 and 2 at 1: the sorted draws sit at probabilities (W_k - w_k) / (1 - w_k),
    # 0, .212, .424, .636 (the zeros) and .824, 1 (the ones); the 75% quantile is (.75 - .636) / (.824 - .636)
    mix = np.array([0.0, 0, 0, 0, 1, 1])[None, :, None]
    q = quantiles(mix, np.array([0.175] * 4 + [0.15] * 2))[:, 0, 0]
    np.testing.assert_allclose(q, [0, 0, 0, (0.75 - 0.525 / 0.825) / (0.7 / 0.85 - 0.525 / 0.825), 1])
