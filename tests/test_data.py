"""The lake reader on the shared candles, and every rule a bad series can break."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweeper.data import COLUMNS, Series, available, freq_seconds, import_csv, load, locate
from sweeper.errors import SweepError
from tests.helpers import SHARED_LAKE, shared_series


def test_reads_shared_series_as_documented() -> None:
    # figures from shared/data/README.md
    btc = shared_series("BTCUSD", "1d")
    assert len(btc) == 1770
    assert str(btc.ts[0]) == "2014-12-01T00:00:00.000000"
    assert str(btc.ts[-1]) == "2019-10-17T00:00:00.000000"
    gaps = btc.gaps()
    assert (gaps.count, gaps.missing_bars, gaps.longest_seconds) == (1, 12, 13 * 86400)
    eth = shared_series("BTCUSDT", "1h")
    assert len(eth) == 58419
    assert eth.gaps().count == 28 and eth.gaps().missing_bars == 128
    assert np.all(np.diff(eth.ts.astype(np.int64)) > 0)
    assert eth.ohlcv.shape == (58419, 5)


def test_all_32_shared_series_pass_the_checks() -> None:
    refs = available(SHARED_LAKE)
    assert len(refs) == 32
    for ref in refs:
        s = load(SHARED_LAKE, [ref.symbol], ref.freq)[0]
        assert len(s) > 700


def test_default_frequency_is_the_finest_common_one() -> None:
    assert {r.freq for r in locate(SHARED_LAKE, ["BTCUSDT", "ETHUSDT"], None)} == {"1min"}
    assert {r.freq for r in locate(SHARED_LAKE, ["BTCUSDT", "SOLUSDT"], None)} == {"1h"}
    assert {r.freq for r in locate(SHARED_LAKE, ["BTCUSD", "ETHUSD"], None)} == {"1d"}


def test_fingerprint_changes_with_one_price() -> None:
    a = shared_series("ETHUSD", "1d")
    b = shared_series("ETHUSD", "1d")
    assert a.fingerprint == b.fingerprint
    b.ohlcv[100, 3] += 0.01
    b.__post_init__()
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize("freq,seconds", [("1min", 60), ("5min", 300), ("1h", 3600), ("1d", 86400)])
def test_freq_seconds(freq: str, seconds: int) -> None:
    assert freq_seconds(freq) == seconds


def test_import_csv_common_spellings_round_trip(tmp_path: Path) -> None:
    real = shared_series("ETHUSD", "1d")
    frame = pl.DataFrame(
        {
            "Date": [str(t)[:10] for t in real.ts],
            "Open": real.ohlcv[:, 0],
            "HIGH": real.ohlcv[:, 1],
            "low": real.ohlcv[:, 2],
            "Close": real.ohlcv[:, 3],
            "Volume": real.ohlcv[:, 4],
        }
    )
    csv = tmp_path / "eth.csv"
    frame.write_csv(csv)
    rows, files = import_csv(csv, tmp_path / "lake", "ETHX", "1d", "crypto")
    assert rows == len(real) and files == 27
    back = load(tmp_path / "lake", ["ETHX"], "1d")[0]
    np.testing.assert_array_equal(back.ohlcv, real.ohlcv)
    np.testing.assert_array_equal(back.ts, real.ts)


def test_import_rejects_bad_csv_and_writes_nothing(tmp_path: Path) -> None:
    real = shared_series("ETHUSD", "1d")
    close = real.ohlcv[:, 3].copy()
    close[5] = -1.0
    pl.DataFrame(
        {
            "ts": [str(t) for t in real.ts],
            "open": real.ohlcv[:, 0],
            "high": real.ohlcv[:, 1],
            "low": real.ohlcv[:, 2],
            "close": close,
            "volume": real.ohlcv[:, 4],
        }
    ).write_csv(tmp_path / "x.csv")
    with pytest.raises(SweepError, match=r"row 6 .*close is not positive"):
        import_csv(tmp_path / "x.csv", tmp_path / "lake", "ETHX", "1d", "crypto", "UTC")
    assert not (tmp_path / "lake").exists()


def test_cli_data_check_and_import(tmp_path: Path, sweep) -> None:
    r = sweep("data", "check", "--symbols", "BTCUSDT", "XAUUSD", "--lake", SHARED_LAKE, "--freq", "1h")
    assert r.exit_code == 0, r.output
    assert "58,419" in r.stdout and "28 (128 bars)" in r.stdout and "1d 10h00m" in r.stdout
    real = shared_series("LTCUSD", "1d")
    csv = tmp_path / "ltc.csv"
    pl.DataFrame(
        {
            "timestamp": [str(t) for t in real.ts],
            "open": real.ohlcv[:, 0],
            "high": real.ohlcv[:, 1],
            "low": real.ohlcv[:, 2],
            "close": real.ohlcv[:, 3],
            "volume": real.ohlcv[:, 4],
        }
    ).write_csv(csv)
    lake = tmp_path / "lake"
    ltc = (
        "data",
        "import",
        csv,
        "--symbol",
        "LTC",
        "--freq",
        "1d",
        "--asset-class",
        "crypto",
        "--lake",
        lake,
        "--tz",
        "UTC",
    )
    r = sweep(*ltc)
    assert r.exit_code == 0 and "imported 925 bars" in r.stdout
    r = sweep("data", "check", "--symbols", "LTC", "--lake", lake)
    assert r.exit_code == 0 and "925" in r.stdout
    # importing again refuses and leaves the lake as it was
    r = sweep(*ltc)
    assert r.exit_code == 2 and "already exists" in r.stderr
    assert not [p for p in (lake / "asset_class=crypto" / "freq=1d").iterdir() if p.name.startswith(".")]


def test_cli_data_check_reports_a_broken_series(small_lake: Path, sweep) -> None:
    path = small_lake / "asset_class=crypto/freq=1d/symbol=ETHUSD/year=2019/month=05/part.parquet"
    df = pl.read_parquet(path)
    df.with_columns((pl.col("low") * 0 + 1e9).alias("low")).write_parquet(path)
    r = sweep("data", "check", "--symbols", "BTCUSD", "ETHUSD", "--lake", small_lake)
    assert r.exit_code == 1
    assert "1,770" in r.stdout and "high is below low" in r.stdout


def test_import_csv_with_an_unnamed_date_index(tmp_path: Path) -> None:
    real = shared_series("GOOG", "1d")
    csv = tmp_path / "goog.csv"
    header = ",Open,High,Low,Close,Volume\n"  # as pandas' DataFrame.to_csv writes a DatetimeIndex
    rows = "".join(
        f"{str(t)[:10]},{o},{h},{lo},{c},{v}\n" for t, (o, h, lo, c, v) in zip(real.ts, real.ohlcv, strict=True)
    )
    csv.write_text(header + rows)
    rows_in, _ = import_csv(csv, tmp_path / "lake", "GOOGX", "1d", "equity")
    back = load(tmp_path / "lake", ["GOOGX"], "1d")[0]
    assert rows_in == len(real) and back.fingerprint == real.fingerprint


def _hourly_csv(tmp_path: Path, rows: int = 200, stamp: str = "%Y-%m-%d %H:%M:%S") -> tuple[Path, Series]:
    """Real BTCUSDT hourly bars as a CSV whose timestamps carry no zone."""
    real = shared_series("BTCUSDT", "1h", last=rows)
    csv = tmp_path / "btc.csv"
    frame = pl.DataFrame({"timestamp": real.ts, **{c: real.ohlcv[:, i] for i, c in enumerate(COLUMNS[1:])}})
    frame.with_columns(pl.col("timestamp").dt.strftime(stamp)).write_csv(csv)
    return csv, real


def test_import_refuses_bars_spaced_unlike_freq(tmp_path: Path, sweep) -> None:
    csv, _ = _hourly_csv(tmp_path)
    lake = tmp_path / "lake"
    args = ("data", "import", csv, "--symbol", "BTCX", "--asset-class", "crypto", "--lake", lake, "--tz", "UTC")
    r = sweep(*args, "--freq", "1d")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "bars are 1h apart (median step) but --freq 1d means 1d bars: pass --freq 1h" in r.stderr
    assert not lake.exists()
    assert sweep(*args, "--freq", "1h").exit_code == 0


def test_import_refuses_a_bar_closer_than_half_a_bar(tmp_path: Path) -> None:
    csv, real = _hourly_csv(tmp_path)
    lines = csv.read_text().splitlines()
    stamp = str(real.ts[50] + np.timedelta64(10, "m")).replace("T", " ")[:19]
    lines.insert(52, stamp + "," + lines[51].split(",", 1)[1])  # a stray bar 10 minutes after row 50
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(SweepError, match=r"row 52 .*only 10min after the previous bar"):
        import_csv(csv, tmp_path / "lake", "BTCX", "1h", "crypto", "UTC")


def test_import_asks_for_tz_when_timestamps_have_none(tmp_path: Path, sweep) -> None:
    csv, real = _hourly_csv(tmp_path, rows=48)
    lake = tmp_path / "lake"
    args = ("data", "import", csv, "--symbol", "BTCX", "--freq", "1h", "--asset-class", "crypto", "--lake", lake)
    r = sweep(*args)
    assert r.exit_code == 2 and "timestamps have no time zone" in r.stderr and "--tz" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not lake.exists()
    assert sweep(*args, "--tz", "Mars/Olympus").exit_code == 2
    # the same wall-clock stamps read as New York time land 5 hours later in UTC (4 in summer time)
    assert sweep(*args, "--tz", "America/New_York").exit_code == 0, r.output
    back = load(lake, ["BTCX"], "1h")[0]
    shift = (back.ts - real.ts).astype("timedelta64[h]").astype(int)
    assert set(shift) <= {4, 5} and len(back) == len(real)
    np.testing.assert_array_equal(back.ohlcv, real.ohlcv)
