"""The promises at the edges (issue 13): every bad input is one line, exit code 2 and nothing written;
valid input in every stored form is read as what it is; nothing a user controls expands without bound.

Each class holds many variants of one rule, so a fix at the root passes them all and a fix of one
example does not. The faults (kills, full disks, concurrent runs) are in test_faults.py.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweeper.data import load
from tests.helpers import FILE, assert_clean_failure, corrupt, set_cell

ETH = "asset_class=crypto/freq=1d/symbol=ETHUSD"


def run_args(lake: Path, out: Path, *extra: object) -> list[object]:
    return ["run", "--lake", lake, "--out", out, "--trials", 2, "--val-origins", 60, "--test-origins", 20, *extra]


# --- the lake: column types, timestamp types and units ----------------------------------------------------


def epoch(unit: str):
    return lambda df: df.with_columns(pl.col("ts").dt.epoch(unit))


def text_ts(fmt: str):
    return lambda df: df.with_columns(pl.col("ts").dt.strftime(fmt))


BAD_TYPES = {
    "close as text": (lambda df: df.with_columns(pl.col("close").cast(pl.String)), r"column close is String"),
    "open as text": (lambda df: df.with_columns(pl.col("open").cast(pl.String)), r"column open is String"),
    "high as text": (lambda df: df.with_columns(pl.col("high").cast(pl.String)), r"column high is String"),
    "low as text": (lambda df: df.with_columns(pl.col("low").cast(pl.String)), r"column low is String"),
    "volume as text": (lambda df: df.with_columns(pl.col("volume").cast(pl.String)), r"column volume is String"),
    "close as boolean": (lambda df: df.with_columns(pl.col("close") > 0), r"column close is Boolean"),
    "volume as dates": (lambda df: df.with_columns(pl.col("ts").dt.date().alias("volume")), r"column volume is Date"),
    "ts as epoch seconds": (epoch("s"), r"column ts is Int64, integers have no time unit"),
    "ts as epoch milliseconds": (epoch("ms"), r"column ts is Int64, integers have no time unit"),
    "ts as epoch microseconds": (epoch("us"), r"column ts is Int64, integers have no time unit"),
    "ts as epoch days": (epoch("d"), r"column ts is Int32, integers have no time unit"),
    "ts as float seconds": (
        lambda df: df.with_columns(pl.col("ts").dt.epoch("s").cast(pl.Float64)),
        r"column ts is Float64, expected a datetime",
    ),
    "ts as boolean": (lambda df: df.with_columns((pl.col("close") > 0).alias("ts")), r"column ts is Boolean"),
    "ts month-first text": (text_ts("%m/%d/%Y %H:%M"), r"row 1: cannot parse timestamp '03/01/2018 00:00'"),
    "ts day-first text": (text_ts("%d.%m.%Y"), r"row 1: cannot parse timestamp '01.03.2018'"),
    "ts words": (lambda df: df.with_columns(pl.lit("yesterday").alias("ts")), r"cannot parse timestamp 'yesterday'"),
    "ts empty text": (lambda df: df.with_columns(pl.lit("").alias("ts")), r"cannot parse timestamp ''"),
    "ts one garbage row": (
        lambda df: text_ts("%Y-%m-%d")(df).with_columns(
            pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("2018-03-05 garbage")).otherwise(pl.col("ts")).alias("ts")
        ),
        r"row 5: cannot parse timestamp '2018-03-05 garbage'",
    ),
    "ts missing": (set_cell("ts", 2, None), r"row 3 .*timestamp is missing"),
    "null volume": (set_cell("volume", 5, None), r"row 6 .*volume is NaN or missing"),
    "nan volume": (set_cell("volume", 1, float("nan")), r"row 2 .*volume is NaN or missing"),
    "inf volume": (set_cell("volume", 1, float("inf")), r"row 2 .*volume is negative or not finite"),
    "negative volume": (set_cell("volume", 9, -1.0), r"row 10 .*volume is negative"),
    "null close": (set_cell("close", 0, None), r"row 1 .*close is NaN or missing"),
}


@pytest.mark.parametrize("case", BAD_TYPES)
def test_lake_values_of_the_wrong_type_are_one_line(case: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    change, pattern = BAD_TYPES[case]
    path = corrupt(small_lake, change)
    out = tmp_path / "out"
    result = sweep(*run_args(small_lake, out, "--symbols", "ETHUSD"))
    assert_clean_failure(result, out, pattern)
    assert str(path) in result.stderr.replace("\n", "")


GOOD_TS = {
    "ISO text": text_ts("%Y-%m-%dT%H:%M:%S"),
    "ISO text with Z": text_ts("%Y-%m-%dT%H:%M:%SZ"),
    "ISO text with offset": text_ts("%Y-%m-%d %H:%M:%S+00:00"),
    "ISO date text": text_ts("%Y-%m-%d"),
    "dates": lambda df: df.with_columns(pl.col("ts").dt.date()),
    "milliseconds": lambda df: df.with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC"))),
    "nanoseconds": lambda df: df.with_columns(pl.col("ts").cast(pl.Datetime("ns", "UTC"))),
    "naive (read as UTC)": lambda df: df.with_columns(pl.col("ts").dt.replace_time_zone(None)),
    "New York time": lambda df: df.with_columns(pl.col("ts").dt.convert_time_zone("America/New_York")),
    "Tokyo time in ms": lambda df: df.with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC")).dt.convert_time_zone("Asia/Tokyo")
    ),
}


@pytest.mark.parametrize("case", GOOD_TS)
def test_every_timestamp_type_reads_as_the_same_instants(case: str, small_lake: Path) -> None:
    before = load(small_lake, ["ETHUSD"], "1d")[0]
    corrupt(small_lake, GOOD_TS[case])
    after = load(small_lake, ["ETHUSD"], "1d")[0]
    np.testing.assert_array_equal(after.ts, before.ts)
    np.testing.assert_array_equal(after.ohlcv, before.ohlcv)


@pytest.mark.parametrize("dtype", [pl.Float32, pl.Int64, pl.UInt32])
def test_numeric_volume_of_any_width_is_read(dtype: pl.DataType, small_lake: Path) -> None:
    corrupt(small_lake, lambda df: df.with_columns(pl.col("volume").round().cast(dtype)))
    s = load(small_lake, ["ETHUSD"], "1d")[0]
    assert s.ohlcv.dtype == np.float64 and np.isfinite(s.ohlcv[:, 4]).all()


# --- the lake: partition folders ---------------------------------------------------------------------------


def move_file(lake: Path, rel: str) -> Path:
    src = lake / FILE
    dst = lake / ETH / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(src, dst)
    return dst


BAD_PLACES = {
    "year with a letter": "year=20x4/month=03/part.parquet",
    "three-digit year": "year=218/month=03/part.parquet",
    "five-digit year": "year=20184/month=03/part.parquet",
    "month 13": "year=2018/month=13/part.parquet",
    "month 0": "year=2018/month=00/part.parquet",
    "month word": "year=2018/month=march/part.parquet",
    "three-digit month": "year=2018/month=003/part.parquet",
    "misspelled key": "year=2018/monht=03/part.parquet",
    "no month folder": "year=2018/part.parquet",
    "no year folder": "month=03/part.parquet",
    "at the symbol root": "part.parquet",
    "one level too deep": "year=2018/month=03/extra/part.parquet",
    "year and month swapped": "month=03/year=2018/part.parquet",
}


@pytest.mark.parametrize("case", BAD_PLACES)
def test_files_outside_the_partition_layout_are_refused(case: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    path = move_file(small_lake, BAD_PLACES[case])
    out = tmp_path / "out"
    result = sweep(*run_args(small_lake, out, "--symbols", "ETHUSD"))
    assert_clean_failure(result, out, r"not under year=YYYY/month=M/")
    assert str(path) in result.stderr.replace("\n", "")


def unpad_months(lake: Path) -> None:
    for month in sorted((lake / ETH).glob("year=*/month=0*")):
        month.rename(month.with_name(f"month={int(month.name.split('=')[1])}"))


@pytest.mark.parametrize("layout", ["month=1 as pyarrow writes it", "hidden and underscore files beside"])
def test_valid_partition_layouts_read_in_calendar_order(layout: str, small_lake: Path) -> None:
    before = load(small_lake, ["ETHUSD"], "1d")[0]
    if layout.startswith("month=1"):
        unpad_months(small_lake)
        assert (small_lake / ETH / "year=2018" / "month=3").is_dir()
    else:
        shutil.copy(small_lake / FILE, small_lake / ETH / "year=2018" / "month=03" / ".part.parquet.tmp.parquet")
        shutil.copy(small_lake / FILE, small_lake / ETH / "_metadata.parquet")
    after = load(small_lake, ["ETHUSD"], "1d")[0]
    np.testing.assert_array_equal(after.ts, before.ts)


def test_unpadded_months_pass_data_check(small_lake: Path, sweep) -> None:
    unpad_months(small_lake)
    result = sweep("data", "check", "--symbols", "ETHUSD", "--lake", small_lake)
    assert result.exit_code == 0, result.output
    assert "788" in result.stdout


# --- the lake: empty series -----------------------------------------------------------------------------


def empty_every_file(lake: Path) -> None:
    for f in (lake / ETH).rglob("*.parquet"):
        pl.read_parquet(f).head(0).write_parquet(f)


@pytest.mark.parametrize("command", ["run", "data check"])
def test_an_empty_series_is_one_line(command: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    empty_every_file(small_lake)
    out = tmp_path / "out"
    if command == "run":
        assert_clean_failure(sweep(*run_args(small_lake, out, "--symbols", "ETHUSD")), out, r"no bars for ETHUSD 1d")
        return
    result = sweep("data", "check", "--symbols", "ETHUSD", "--lake", small_lake)
    assert result.exit_code == 1 and "no bars for ETHUSD 1d" in result.stdout.replace("\n", "")
    assert "Traceback" not in result.output


def test_a_symbol_folder_without_files_is_one_line(small_lake: Path, tmp_path: Path, sweep) -> None:
    shutil.rmtree(small_lake / ETH)
    (small_lake / ETH).mkdir()
    out = tmp_path / "out"
    assert_clean_failure(sweep(*run_args(small_lake, out, "--symbols", "ETHUSD")), out, r"no Parquet files for ETHUSD")


# --- options and names -----------------------------------------------------------------------------------

BAD_OPTIONS = {
    "no --symbols": ([], r"no symbols given"),
    "empty --symbols": (["--symbols", ""], r"no symbols given"),
    "--symbols of commas": (["--symbols", ",,"], r"no symbols given"),
    "--trials abc": (["--symbols", "ETHUSD", "--trials", "abc"], r"^error: sweep run: Invalid value for '--trials'"),
    "--trials 1.5": (["--symbols", "ETHUSD", "--trials", "1.5"], r"Invalid value for '--trials'"),
    "--horizon x": (["--symbols", "ETHUSD", "--horizon", "x"], r"Invalid value for '--horizon'"),
    "--seed empty": (["--symbols", "ETHUSD", "--seed", ""], r"Invalid value for '--seed'"),
    "--val-origins abc": (["--symbols", "ETHUSD", "--val-origins", "abc"], r"Invalid value for '--val-origins'"),
    "--timeout soon": (["--symbols", "ETHUSD", "--timeout", "soon"], r"Invalid value for '--timeout'"),
    "--stride 2x": (["--symbols", "ETHUSD", "--stride", "2x"], r"Invalid value for '--stride'"),
    "--jobs two": (["--symbols", "ETHUSD", "--jobs", "two"], r"Invalid value for '--jobs'"),
    "--latency-budget fast": (["--symbols", "ETHUSD", "--latency-budget", "fast"], r"'--latency-budget'"),
    "--trials without a value": (["--symbols", "ETHUSD", "--trials"], r"Option '--trials' requires an argument"),
    "misspelled option": (["--symbols", "ETHUSD", "--trails", "3"], r"No such option: --trails"),
    "stray argument": (["extra", "--symbols", "ETHUSD"], r"Got unexpected extra argument"),
    "--trials 0": (["--symbols", "ETHUSD", "--trials", "0"], r"--trials must be >= 1, got 0"),
    "--trials -3": (["--symbols", "ETHUSD", "--trials", "-3"], r"--trials must be >= 1, got -3"),
    "--jobs 0": (["--symbols", "ETHUSD", "--jobs", "0"], r"--jobs must be >= 1"),
    "--timeout 0": (["--symbols", "ETHUSD", "--timeout", "0"], r"--timeout must be > 0"),
    "--latency-budget -1": (["--symbols", "ETHUSD", "--latency-budget", "-1"], r"--latency-budget must be > 0"),
    "--freq 0h": (["--symbols", "ETHUSD", "--freq", "0h"], r"invalid frequency '0h'"),
    "--freq with newline": (["--symbols", "ETHUSD", "--freq", "1d\n"], r"invalid frequency '1d\\n'"),
    "--freq with space": (["--symbols", "ETHUSD", "--freq", "1 d"], r"invalid frequency '1 d'"),
    "--engine spark": (["--symbols", "ETHUSD", "--engine", "spark"], r"unknown --engine 'spark'"),
    "--workers without ray": (["--symbols", "ETHUSD", "--workers", "2"], r"need --engine ray"),
    "--metric with newline": (["--symbols", "ETHUSD", "--metric", "crps\n"], r"unknown metric 'crps\\n'"),
    "--backends with newline": (["--symbols", "ETHUSD", "--backends", "naive\n"], r"unknown backend 'naive\\n'"),
    "duplicate symbols": (["--symbols", "ETHUSD", "ETHUSD"], r"duplicate symbols"),
    "--resume with --freq": (["--resume", "r1", "--freq", "1d"], r"--resume repeats the recorded settings"),
    "--resume with --no-prune": (["--resume", "r1", "--no-prune"], r"--resume repeats .* \(got prune\)"),
    "--resume with --seed 0": (["--resume", "r1", "--seed", "0"], r"--resume repeats .* \(got seed\)"),
    "--resume of nothing": (["--resume", "nothing-here"], r"run nothing-here not found"),
    "--checkpoint without =": (["--symbols", "ETHUSD", "--checkpoint", "naive"], r"invalid --checkpoint 'naive'"),
    "--checkpoint of another backend": (
        ["--symbols", "ETHUSD", "--checkpoint", "toto=/x"],
        r"--checkpoint names backend 'toto', which is not in --backends",
    ),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_options_are_one_line(
    case: str, small_lake: Path, tmp_path: Path, sweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra, pattern = BAD_OPTIONS[case]
    monkeypatch.setenv("SWEEP_LAKE", str(small_lake))  # --resume refuses --lake
    out = tmp_path / "out"
    result = sweep("run", "--out", out, *extra)
    assert_clean_failure(result, out, pattern)
    assert "╭" not in result.output and "Usage:" not in result.output  # no usage box


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["data", "check"], r"^error: sweep data check: Missing option '--symbols'"),
        (["data", "import"], r"^error: sweep data import: Missing argument 'file'"),
        (["promote"], r"^error: sweep promote: Missing argument 'run_id'"),
        (["eval", "--tolerance", "lots"], r"Invalid value for '--tolerance'"),
        (["models", "init", "toto", "--preset"], r"requires an argument"),
        (["runz"], r"No such command 'runz'"),
        (["--debgu", "run"], r"No such option: --debgu"),
    ],
)
def test_usage_errors_of_every_command_are_one_line(args: list[str], pattern: str, tmp_path: Path, sweep) -> None:
    result = sweep(*args)
    assert_clean_failure(result, tmp_path, pattern)
    assert "╭" not in result.output


NAMES = ["ETHUSD\n", "\nETHUSD", " ETHUSD", "ETHUSD ", "ETH/USD", "..", ".ETHUSD", "ETH..USD", "E" * 65, "ETH\tUSD"]


@pytest.mark.parametrize("name", NAMES)
def test_one_name_rule_for_symbols(name: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    out = tmp_path / "out"
    assert_clean_failure(sweep(*run_args(small_lake, out, "--symbols", name)), out, r"invalid symbol")


@pytest.mark.parametrize("name", ["run\n", "run/x", "..", "r r", "\u00e9t\u00e9", "-"])
def test_one_name_rule_for_run_ids(name: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    out = tmp_path / "out"
    result = sweep(*run_args(small_lake, out, "--symbols", "ETHUSD", "--run-id", name))
    assert_clean_failure(result, out, r"invalid run id")


@pytest.mark.parametrize("name", ["best", "eval", "Best"])
def test_reserved_run_ids_never_replace_promoted_configs(name: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    out = tmp_path / "out"
    promoted = out / "hyperparams" / "best" / "ETHUSD" / "1d-h1.json"
    promoted.parent.mkdir(parents=True)
    promoted.write_text('{"run_id": "earlier"}')
    result = sweep(*run_args(small_lake, out, "--symbols", "ETHUSD", "--run-id", name))
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(rf"invalid run id '{name}'.*reserved", lines[0]), result.stderr
    assert promoted.read_text() == '{"run_id": "earlier"}' and not (out / "results").exists()
    assert sorted(p.name for p in (out / "hyperparams").iterdir()) == ["best"]


@pytest.mark.parametrize("command", ["promote", "show", "report"])
def test_one_name_rule_for_run_ids_of_every_command(command: str, tmp_path: Path, sweep) -> None:
    (tmp_path / "hyperparams" / "x").mkdir(parents=True)
    result = sweep(command, "x\n", "--out", tmp_path)
    assert result.exit_code == 2 and "invalid run id 'x\\n'" in result.stderr


def test_names_with_a_newline_never_reach_a_path() -> None:
    from sweeper.errors import SweepError, check_name

    for name in ("ok", "BTC-USD.v2", "a" * 64):
        assert check_name("symbol", name) == name
    for name in ("ok\n", "ok\r\n", "ok\x00"):
        with pytest.raises(SweepError):
            check_name("symbol", name)


# --- --out and --storage: checked before anything is written ----------------------------------------------


def out_target(kind: str, tmp_path: Path) -> Path:
    if kind == "a file":
        (tmp_path / "f").write_text("x")
        return tmp_path / "f"
    if kind == "under a file":
        (tmp_path / "f").write_text("x")
        return tmp_path / "f" / "deeper"
    if kind == "results/ is a file":
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "results").write_text("x")
        return tmp_path / "o"
    if kind == "hyperparams/ is a file":
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "hyperparams").write_text("x")
        return tmp_path / "o"
    if kind == "a broken link":
        (tmp_path / "link").symlink_to(tmp_path / "nowhere")
        return tmp_path / "link" / "out"
    return Path("/proc/sweep-out")  # a filesystem nobody can write to, not even root


@pytest.mark.parametrize(
    "kind", ["a file", "under a file", "results/ is a file", "hyperparams/ is a file", "a broken link", "/proc"]
)
def test_an_unusable_out_is_one_line_and_writes_nothing(kind: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    out = out_target(kind, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = sweep(*run_args(small_lake, out, "--symbols", "ETHUSD"))
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--out" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "storage,pattern",
    [
        ("foo", r"invalid --storage"),
        ("foo://bar", r"invalid --storage"),
        ("http://example.com/db", r"invalid --storage"),
        ("mysql://u@localhost/db", r"invalid --storage"),
        ("sqlite://", r"invalid --storage"),
        ("sqlite:////nonexistent-folder/x/study.db", r"cannot be opened: OperationalError"),
        ("postgresql://u:secret@127.0.0.1:1/db", r"postgresql://u:\*\*\*@127.0.0.1:1/db cannot be opened"),
        ("journal:/tmp/x", r"invalid --storage"),
    ],
)
def test_a_bad_storage_url_is_one_line_and_leaves_no_run(
    storage: str, pattern: str, small_lake: Path, tmp_path: Path, sweep
) -> None:
    out = tmp_path / "out"
    result = sweep(*run_args(small_lake, out, "--symbols", "ETHUSD", "--storage", storage, "--run-id", "s"))
    assert_clean_failure(result, out, pattern)
    assert "secret" not in result.output


# --- search spaces: bounded ------------------------------------------------------------------------------

BASE_SPACE = (
    "backend: naive\nparams:\n  num_samples: {type: int, low: 8, high: 64}\n"
    "  context_length: {type: categorical, choices: [32]}\n  aggregation: {type: categorical, choices: [mean]}\n"
)
LAUGHS = "".join(  # nine levels of nine aliases: 9**9 strings once expanded
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(9)
)
SPACE_CASES = {
    "negative int step": ("  x: {type: int, low: 1, high: 9, step: -2}\n", r"key params.x.step: must be > 0, got -2"),
    "zero int step": ("  x: {type: int, low: 1, high: 9, step: 0}\n", r"key params.x.step: must be > 0, got 0"),
    "negative float step": ("  x: {type: float, low: 0.1, high: 0.9, step: -0.1}\n", r"params.x.step: must be > 0"),
    "nan low": ("  x: {type: float, low: .nan, high: 0.9}\n", r"key params.x.low: must be finite"),
    "infinite high": ("  x: {type: float, low: 0.1, high: .inf}\n", r"key params.x.high: must be finite"),
    "a billion samples": (None, r"key params.num_samples: at most 65536 draws per origin, got 1000000000"),
    "65537 samples": (None, r"at most 65536 draws per origin, got 65537"),
    "samples as a huge choice": (None, r"at most 65536 draws per origin"),
    "aggregation with a newline": (None, r"unknown aggregation 'trimmed_mean_10\\n'"),
    "alias bomb in a value": (LAUGHS + "  x: {type: categorical, choices: *l8}\n", r"expands to \d+ YAML nodes"),
    "alias bomb in a default": (LAUGHS + "  x: {type: categorical, choices: [a], default: *l8}\n", r"YAML nodes"),
    "alias bomb in keys": (LAUGHS + "  ? *l8\n  : {type: int, low: 1, high: 2}\n", r"expands to \d+ YAML nodes"),
    "deep nesting": ("  x: " + "[" * 3000 + "]" * 3000 + "\n", r"nested too deeply|not valid YAML"),
    "not UTF-8": (b"\xff\xfe\x00", r"not UTF-8 text"),
    "larger than 1 MiB": ("# " + "x" * (1 << 20) + "\n", r"larger than 1048576 bytes"),
}


def space_text(case: str) -> str | bytes:
    body, _ = SPACE_CASES[case]
    if isinstance(body, bytes):
        return body
    samples = {
        "a billion samples": "{type: int, low: 8, high: 1000000000}",
        "65537 samples": "{type: int, low: 8, high: 65537}",
        "samples as a huge choice": "{type: categorical, choices: [8, 4000000]}",
    }
    text = BASE_SPACE
    if case in samples:
        text = text.replace("{type: int, low: 8, high: 64}", samples[case])
    if case == "aggregation with a newline":
        text = text.replace("choices: [mean]", 'choices: ["trimmed_mean_10\\n"]')
    return text + (body or "")


@pytest.mark.parametrize("case", SPACE_CASES)
def test_search_spaces_are_bounded_and_one_line(case: str, small_lake: Path, tmp_path: Path, sweep) -> None:
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    text = space_text(case)
    (spaces / "naive.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    start = time.perf_counter()
    result = sweep(*run_args(small_lake, out, "--symbols", "ETHUSD", "--backends", "naive", "--spaces", spaces))
    assert time.perf_counter() - start < 10  # a bomb is refused, not expanded
    assert_clean_failure(result, out, SPACE_CASES[case][1])
    assert "naive.yaml" in result.stderr.replace("\n", "")


def test_draws_that_would_not_fit_in_memory_are_refused(small_lake: Path, tmp_path: Path, sweep) -> None:
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "naive.yaml").write_text(BASE_SPACE.replace("high: 64}", "high: 60000}"))
    out = tmp_path / "out"
    result = sweep(
        "run", "--lake", small_lake, "--out", out, "--symbols", "ETHUSD", "--backends", "naive", "--spaces", spaces,
        "--val-origins", 400, "--test-origins", 100, "--horizon", 30,
    )  # fmt: skip
    assert_clean_failure(result, out, r"60000 draws x 400 origins x horizon 30 of ETHUSD need 2.7 GiB")


# --- checkpoints the user named -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kronos_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sweeper.backends import backend_class

    return backend_class("kronos").init_checkpoint("tiny", tmp_path_factory.mktemp("kronos") / "ckpt")


def break_checkpoint(how: str, good: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(good, ckpt)
    weights, config = ckpt / "model" / "model.safetensors", ckpt / "model" / "config.json"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "empty weights":
        weights.write_bytes(b"")
    elif how == "weights of noise":
        weights.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "config not JSON":
        config.write_text("{not json")
    elif how == "config of another model":
        config.write_text('{"format": "other"}')
    elif how == "no weights":
        weights.unlink()
    elif how == "a file, not a folder":
        return weights
    elif how == "missing":
        return tmp_path / "nowhere"
    return ckpt


@pytest.mark.parametrize(
    "how",
    [
        "truncated weights",
        "empty weights",
        "weights of noise",
        "config not JSON",
        "config of another model",
        "no weights",
        "a file, not a folder",
        "missing",
    ],
)
def test_a_named_checkpoint_that_cannot_load_stops_the_run(
    how: str, kronos_checkpoint: Path, small_lake: Path, tmp_path: Path, sweep
) -> None:
    ckpt = break_checkpoint(how, kronos_checkpoint, tmp_path)
    out = tmp_path / "out"
    result = sweep(
        *run_args(small_lake, out, "--symbols", "ETHUSD", "--backends", "naive", "kronos"),
        "--checkpoint", f"kronos={ckpt}",
    )  # fmt: skip
    assert_clean_failure(result, out, r"kronos checkpoint")


def test_a_named_hub_checkpoint_not_in_the_cache_stops_the_run(
    small_lake: Path, tmp_path: Path, sweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only default weights may be skipped; a hub id the user named must be there."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "naive.yaml").write_text(BASE_SPACE)
    (spaces / "moirai2.yaml").write_text(BASE_SPACE.replace("backend: naive", "backend: moirai2"))
    out = tmp_path / "out"
    result = sweep(
        "--offline", *run_args(small_lake, out, "--symbols", "ETHUSD", "--backends", "naive", "moirai2"),
        "--spaces", spaces, "--checkpoint", "moirai2=Salesforce/moirai-2.0-R-small",
    )  # fmt: skip
    assert_clean_failure(result, out, r"no moirai2 weights for Salesforce/moirai-2.0-R-small")


# --- CSV import ----------------------------------------------------------------------------------------

HEADER = "date,open,high,low,close,volume\n"
ROWS = "2018-03-01,100,110,90,105,5\n2018-03-02,105,112,101,110,6\n"
CSV_CASES = {
    "close and Close": ("date,open,high,low,close,Close,volume\n2018-03-01,1,2,1,1,1,5\n", r"'close' and 'Close'"),
    "Open and open": ("date,Open,open,high,low,close,volume\n2018-03-01,1,1,2,1,1,5\n", r"'Open' and 'open'"),
    "Date and date": ("Date,date,open,high,low,close,volume\n2018-03-01,2018-03-01,1,2,1,1,5\n", r"'Date' and 'date'"),
    "volume and Volume ": ("date,open,high,low,close,volume,Volume \n2018-03-01,1,2,1,1,5,5\n", r"'volume' and"),
    "header only": (HEADER, r"no rows after the header"),
    "header only, no newline": ("date,open,high,low,close,volume", r"no rows after the header"),
    "empty file": ("", r"cannot read CSV|no rows"),
    "words for dates": (HEADER + "yesterday,1,2,1,1,5\n", r"cannot parse timestamp 'yesterday'"),
    "booleans for dates": (HEADER + "true,1,2,1,1,5\n", r"timestamp column is Boolean"),
    "null volume": (HEADER + ROWS.replace(",5\n", ",\n"), r"row 1 .*volume is NaN or missing"),
    "text volume": (HEADER + ROWS.replace(",5\n", ",many\n"), r"volume is NaN or missing"),
    "no close": ("date,open,high,low,volume\n2018-03-01,1,2,1,5\n", r"no close column"),
}


def lake_tree(lake: Path) -> list[str]:
    return sorted(str(p.relative_to(lake)) for p in lake.rglob("*")) if lake.exists() else []


@pytest.mark.parametrize("case", CSV_CASES)
def test_bad_csv_is_one_line_and_adds_nothing_to_the_lake(case: str, tmp_path: Path, sweep) -> None:
    text, pattern = CSV_CASES[case]
    csv = tmp_path / "bars.csv"
    csv.write_text(text)
    lake = tmp_path / "lake"
    lake.mkdir()
    result = sweep("data", "import", csv, "--symbol", "NEW", "--freq", "1d", "--asset-class", "crypto", "--lake", lake)
    assert_clean_failure(result, tmp_path, pattern)
    assert lake_tree(lake) == []  # no empty symbol folder, no staging folder


@pytest.mark.parametrize(
    "option,value,pattern",
    [
        ("--symbol", "NEW\n", r"invalid symbol 'NEW\\n'"),
        ("--symbol", "../NEW", r"invalid symbol"),
        ("--asset-class", "crypto\n", r"invalid asset class 'crypto\\n'"),
        ("--freq", "1d\n", r"invalid frequency '1d\\n'"),
        ("--freq", "0d", r"invalid frequency '0d'"),
    ],
)
def test_import_names_follow_the_one_rule(option: str, value: str, pattern: str, tmp_path: Path, sweep) -> None:
    csv = tmp_path / "bars.csv"
    csv.write_text(HEADER + ROWS)
    lake = tmp_path / "lake"
    lake.mkdir()
    opts = {"--symbol": "NEW", "--freq": "1d", "--asset-class": "crypto", option: value}
    result = sweep("data", "import", csv, *[x for kv in opts.items() for x in kv], "--lake", lake)
    assert_clean_failure(result, tmp_path, pattern)
    assert lake_tree(lake) == []


@pytest.mark.parametrize("unit,scale", [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_csv_epoch_numbers_are_read_in_their_unit(unit: str, scale: int, tmp_path: Path, sweep) -> None:
    first = 1519862400  # 2018-03-01T00:00:00Z
    lines = [f"{(first + i * 86400) * scale},100,110,90,105,5" for i in range(3)]
    csv = tmp_path / "bars.csv"
    csv.write_text("unix,open,high,low,close,volume\n" + "\n".join(lines) + "\n")
    lake = tmp_path / "lake"
    result = sweep("data", "import", csv, "--symbol", "NEW", "--freq", "1d", "--asset-class", "crypto", "--lake", lake)
    assert result.exit_code == 0, result.output
    s = load(lake, ["NEW"], "1d")[0]
    assert str(s.ts[0]) == "2018-03-01T00:00:00.000000" and len(s) == 3


def test_promote_into_an_unusable_best_folder_is_one_line(tmp_path: Path, sweep) -> None:
    (tmp_path / "hyperparams" / "r").mkdir(parents=True)
    (tmp_path / "hyperparams" / "r" / "ETHUSD.json").write_text("{}")
    (tmp_path / "hyperparams" / "best").write_text("not a folder")
    result = sweep("promote", "r", "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "best is a file, not a directory" in result.stderr
