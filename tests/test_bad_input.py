"""Every bad input: one clear line naming what and where, exit code 2, and no files written."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from sweeper.space import SPACES_DIR
from tests.helpers import assert_clean_failure, corrupt, set_cell

CASES = {
    "nan close": (set_cell("close", 3, float("nan")), r"row 4 .*close is NaN"),
    "inf high": (set_cell("high", 2, float("inf")), r"row 3 .*high is infinite"),
    "zero open": (set_cell("open", 0, 0.0), r"row 1 .*open is not positive"),
    "negative low": (set_cell("low", 7, -3.0), r"row 8 .*low is not positive"),
    "high below low": (set_cell("high", 4, 1.0), r"row 5 .*high is below low"),
    "duplicate ts": (
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 6).then(pl.col("ts").shift(1)).otherwise(pl.col("ts")).alias("ts")
        ),
        r"row 7 .*duplicate timestamp",
    ),
    "unsorted ts": (lambda df: df.reverse(), r"row 2 .*timestamps not sorted ascending"),
    "misspelled column": (lambda df: df.rename({"close": "clsoe"}), r"missing column\(s\) close"),
    "missing column": (lambda df: df.drop("volume"), r"missing column\(s\) volume"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_data(case: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    change, pattern = CASES[case]
    path = corrupt(small_lake, change)
    out = tmp_path / "out"
    result = sweep("run", "--symbols", "BTCUSD", "ETHUSD", "--lake", small_lake, "--out", out, "--trials", 2)
    assert_clean_failure(result, out, pattern)
    assert str(path) in result.stderr.replace("\n", "")


def args(lake: Path, out: Path, *extra: object) -> list[object]:
    return ["run", "--lake", lake, "--out", out, "--trials", 2, *extra]


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--symbols", "DOGEUSD"], r"symbol DOGEUSD not found in lake"),
        (["--symbols", "ETHUSD", "--freq", "1h"], r"symbol ETHUSD has no 1h bars"),
        (["--symbols", "ETHUSD", "--backends", "prophet"], r"unknown backend 'prophet'"),
        (["--symbols", "ETHUSD", "--metric", "rmse"], r"unknown metric 'rmse'"),
        (["--symbols", "../etc"], r"invalid symbol '\.\./etc'"),
        (["--symbols", "ETHUSD", "--run-id", "a/b"], r"invalid run id 'a/b'"),
        (["--symbols", "ETHUSD", "--val-origins", 700], r"series too short: ETHUSD 1d has 788 bars"),
        (["--symbols", "ETHUSD", "--val-origins", 10], r"^error: --val-origins 10: at least 30 are needed \(selection"),
        (["--symbols", "ETHUSD", "--test-origins", 5], r"^error: --test-origins 5: at least 10 are needed"),
        (["--symbols", "ETHUSD", "--horizon", 400], r"series too short"),
        (["--symbols", "ETHUSD", "--checkpoint", "toto"], r"invalid --checkpoint 'toto'"),
    ],
)
def test_bad_request(extra: list, pattern: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    out = tmp_path / "out"
    assert_clean_failure(sweep(*args(small_lake, out, *extra)), out, pattern)


def test_missing_lake(tmp_path: Path, sweep) -> None:
    out = tmp_path / "out"
    result = sweep(*args(tmp_path / "nowhere", out, "--symbols", "ETHUSD"))
    assert_clean_failure(result, out, r"lake not found: .*nowhere is not a directory")


SPACE_CASES = {
    "bad aggregation": (
        "aggregation: {type: categorical, choices: [mean, trimmed_mean_60]}",
        r"key params.aggregation.choices: invalid aggregation 'trimmed_mean_60'",
    ),
    "unknown aggregation": ("aggregation: {type: categorical, choices: [mode]}", r"unknown aggregation 'mode'"),
    "bad type": ("aggregation: {type: text, choices: [mean]}", r"key params.aggregation.type: must be one of"),
    "low above high": (
        "aggregation: {type: categorical, choices: [mean]}\n  num_samples: {type: int, low: 9, high: 3}",
        r"key params.num_samples: low 9 is above high 3",
    ),
    "not yaml": ("aggregation: [mean", r"not valid YAML"),
}


@pytest.mark.parametrize("case", SPACE_CASES)
def test_malformed_search_space(case: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    body, pattern = SPACE_CASES[case]
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "naive.yaml").write_text(
        "backend: naive\nparams:\n  num_samples: {type: int, low: 8, high: 64}\n"
        f"  context_length: {{type: categorical, choices: [32]}}\n  {body}\n"
    )
    out = tmp_path / "out"
    result = sweep(*args(small_lake, out, "--symbols", "ETHUSD", "--backends", "naive", "--spaces", spaces))
    assert_clean_failure(result, out, pattern)
    assert "naive.yaml" in result.stderr.replace("\n", "")


def test_bad_aggregation_name_is_clear() -> None:
    from sweeper.aggregate import parse
    from sweeper.errors import SweepError

    for name, msg in [
        ("trimmed_mean_0", "0 < P < 50"),
        ("winsorized_mean_50", "0 < P < 50"),
        ("quantile_1.5", "0 < Q < 1"),
        ("trim", "unknown aggregation"),
    ]:
        with pytest.raises(SweepError, match=msg):
            parse(name)


KNOB_CASES = {  # backend, the knob's line, what the error says
    "misspelt knob": (
        "kronos",
        "temprature: {type: float, low: 0.5, high: 1.0}",
        r"no such knob: did you mean temperature\?",
    ),
    "above its range": ("kronos", "top_p: {type: float, low: 0.5, high: 1.2}", r"1\.2 is not allowed .*: must be <= 1"),
    "at an open bound": ("marketgpt", "temperature: {type: float, low: 0.0, high: 1.0}", r"0\.0 .*: must be > 0"),
    "not a choice": ("marketgpt", "mode: {type: categorical, choices: [sample, beam]}", r"'beam' is not allowed"),
    "below its range": ("seasonal_naive", "season: {type: categorical, choices: [0, 7]}", r"0 .*: must be >= 1"),
    "another backend's knob": ("naive", "top_k: {type: int, low: 0, high: 5}", r"naive has no such knob"),
    "wrong type": ("toto", "use_covariates: {type: categorical, choices: [false, 'on']}", r"must be true or false"),
}


@pytest.mark.parametrize("case", KNOB_CASES)
def test_a_knob_its_backend_does_not_allow_is_refused_before_anything_runs(
    case: str, small_lake: Path, tmp_path: Path, sweep
) -> None:
    backend, body, pattern = KNOB_CASES[case]
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    shutil.copy(SPACES_DIR / "naive.yaml", spaces)  # the baseline every sweep runs
    (spaces / f"{backend}.yaml").write_text(
        f"backend: {backend}\nparams:\n  num_samples: {{type: int, low: 8, high: 64}}\n"
        "  aggregation: {type: categorical, choices: [mean]}\n"
        f"  context_length: {{type: categorical, choices: [32]}}\n  {body}\n"
    )
    out = tmp_path / "out"
    # no checkpoint exists for the model backends: the space is refused before any model would load
    result = sweep(*args(small_lake, out, "--symbols", "ETHUSD", "--backends", backend, "--spaces", spaces))
    assert_clean_failure(result, out, pattern)
    assert f"{backend}.yaml" in result.stderr.replace("\n", "") and f"key params.{body.split(':')[0]}" in result.stderr


def test_a_backend_fills_defaults_and_refuses_bad_knobs_given_outside_a_space() -> None:
    """A JSON config or a direct call never went through load_space: `Backend.knob_values` is the same rule."""
    from sweeper.backends import backend_class
    from sweeper.errors import SweepError

    kronos = backend_class("kronos")
    assert kronos.knob_values({"top_k": 5}) == {"temperature": 1.0, "top_p": 0.9, "top_k": 5, "clip": 5.0}
    with pytest.raises(SweepError, match="kronos has no knob 'temprature'"):
        kronos.knob_values({"temprature": 0.5})
    with pytest.raises(SweepError, match=r"marketgpt knob top_p must be <= 1, got 1\.5"):
        backend_class("marketgpt").knob_values({"top_p": 1.5})
    with pytest.raises(SweepError, match="moirai knob patch_size must be one of"):
        backend_class("moirai").knob_values({"patch_size": 12})
