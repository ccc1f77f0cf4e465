"""The candle lake: find, read and check OHLCV series; import CSV files into it.

Layout (hive partitions, one Parquet file per calendar month):
`asset_class=A/freq=F/symbol=S/year=YYYY/month=MM/part.parquet` with columns
ts (UTC bar open time), open, high, low, close, volume.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sweeper.atomic import check_writable, locked
from sweeper.errors import SweepError, check_name

COLUMNS = ("ts", "open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close")
DEMO_LAKE = Path(__file__).parent / "demo_lake"
IMPORT_LOCK = ".import.lock"  # at the lake root: hidden, so the lake's readers never see it
STAGING_PREFIX = ".symbol="  # an import's hidden folder before it is renamed into place
_FREQ = re.compile(r"(\d+)(min|h|d|w)")
_UNIT_SECONDS = {"min": 60, "h": 3600, "d": 86400, "w": 604800}


def freq_seconds(freq: str) -> int:
    """Bar length in seconds of a frequency label such as 1min, 1h, 1d."""
    m = _FREQ.fullmatch(freq)
    if not m or int(m.group(1)) == 0:
        raise SweepError(f"invalid frequency {freq!r}: expected a number and a unit (min, h, d, w), e.g. 1h")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


DEMO_LABEL = "demo"


def resolve_lake(lake: str | Path | None) -> Path:
    """--lake, else $SWEEP_LAKE, else the demo lake shipped with the package ("demo" names it too)."""
    chosen = lake or os.environ.get("SWEEP_LAKE") or DEMO_LAKE
    path = DEMO_LAKE if str(chosen) == DEMO_LABEL else Path(chosen).expanduser()
    if not path.is_dir():
        raise SweepError(f"lake not found: {path} is not a directory (set --lake or $SWEEP_LAKE)")
    return path


def lake_label(path: Path) -> str:
    """How a config records its lake: "demo" for the shipped lake (valid in any checkout), else the path."""
    return DEMO_LABEL if path.resolve() == DEMO_LAKE.resolve() else str(path.resolve())


@dataclass(frozen=True)
class SeriesRef:
    """Where one symbol at one frequency lives in the lake."""

    symbol: str
    freq: str
    asset_class: str
    path: Path


def available(lake: Path) -> list[SeriesRef]:
    """Every (symbol, freq) partition in the lake."""
    refs = []
    for sym_dir in sorted(lake.glob("asset_class=*/freq=*/symbol=*")):
        asset = sym_dir.parent.parent.name.split("=", 1)[1]
        freq = sym_dir.parent.name.split("=", 1)[1]
        refs.append(SeriesRef(sym_dir.name.split("=", 1)[1], freq, asset, sym_dir))
    return refs


def locate(lake: Path, symbols: list[str], freq: str | None) -> list[SeriesRef]:
    """Find each symbol; with no freq, take the finest frequency every symbol has."""
    for s in symbols:
        check_name("symbol", s)
    refs = available(lake)
    by_symbol: dict[str, list[SeriesRef]] = {}
    for r in refs:
        by_symbol.setdefault(r.symbol, []).append(r)
    for s in symbols:
        if s not in by_symbol:
            known = ", ".join(sorted(by_symbol)) or "none"
            raise SweepError(f"symbol {s} not found in lake {lake} (symbols there: {known})")
    if freq is None:
        common = set.intersection(*({r.freq for r in by_symbol[s]} for s in symbols))
        if not common:
            raise SweepError(f"no frequency is available for all of {', '.join(symbols)} in lake {lake}")
        freq = min(common, key=freq_seconds)
    freq_seconds(freq)
    out = []
    for s in symbols:
        matches = [r for r in by_symbol[s] if r.freq == freq]
        if not matches:
            have = ", ".join(sorted({r.freq for r in by_symbol[s]}))
            raise SweepError(f"symbol {s} has no {freq} bars in lake {lake} (it has: {have})")
        if len(matches) > 1:
            classes = ", ".join(r.asset_class for r in matches)
            raise SweepError(f"symbol {s} at {freq} is ambiguous in lake {lake}: asset classes {classes}")
        out.append(matches[0])
    return out


@dataclass(frozen=True)
class Gaps:
    count: int
    missing_bars: int
    longest_seconds: int


@dataclass
class Series:
    """One checked OHLCV series, as NumPy arrays (rows in time order)."""

    symbol: str
    freq: str
    asset_class: str
    ts: np.ndarray  # datetime64[us], UTC bar open times
    ohlcv: np.ndarray  # (T, 5) float64: open, high, low, close, volume
    source: str
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        h.update(self.ts.astype("datetime64[us]").view(np.int64).tobytes())
        h.update(np.ascontiguousarray(self.ohlcv, dtype=np.float64).tobytes())
        self.fingerprint = h.hexdigest()[:16]

    @property
    def close(self) -> np.ndarray:
        return self.ohlcv[:, 3]

    def __len__(self) -> int:
        return len(self.ts)

    def gaps(self) -> Gaps:
        """Steps longer than one bar. Markets that close (weekends, holidays) show up here too."""
        step = freq_seconds(self.freq)
        diffs = np.diff(self.ts.astype("datetime64[s]").view(np.int64))
        big = diffs[diffs > step]
        return Gaps(int(big.size), int((big // step - 1).sum()), int(big.max()) if big.size else 0)


def _frame_problem(df: pl.DataFrame, where: str) -> str | None:
    """The first broken rule in a frame of typed bars (`_typed`), as '<where> row N (ts): rule', or None."""
    checks: list[tuple[pl.Expr, str]] = [
        (pl.col("ts").is_null(), "timestamp is missing"),
        *[(pl.col(c).is_null() | pl.col(c).is_nan(), f"{c} is NaN or missing") for c in PRICES],
        *[(pl.col(c).is_infinite(), f"{c} is infinite") for c in PRICES],
        *[(pl.col(c) <= 0, f"{c} is not positive") for c in PRICES],
        (pl.col("high") < pl.col("low"), "high is below low"),
        (pl.col("high") < pl.max_horizontal("open", "close"), "high is below open or close"),
        (pl.col("low") > pl.min_horizontal("open", "close"), "low is above open or close"),
        (pl.col("volume").is_null() | pl.col("volume").is_nan(), "volume is NaN or missing"),
        (~pl.col("volume").is_finite() | (pl.col("volume") < 0), "volume is negative or not finite"),
        (pl.col("ts") == pl.col("ts").shift(1), "duplicate timestamp"),
        (pl.col("ts") < pl.col("ts").shift(1), "timestamps not sorted ascending"),
    ]
    flags = df.select(
        [pl.col("ts").cast(pl.String).alias("_ts")]
        + [e.fill_null(False).alias(f"c{i}") for i, (e, _) in enumerate(checks)]
    )
    for i, (_, rule) in enumerate(checks):
        hits = flags.get_column(f"c{i}").arg_true()
        if hits.len():
            row = int(hits[0])
            return f"{where} row {row + 1} (ts {flags['_ts'][row]}): {rule}"
    return None


def _to_frame(path: Path) -> pl.DataFrame:
    try:
        df = pl.read_parquet(path, hive_partitioning=False)
    except Exception as exc:  # corrupt or non-Parquet file
        raise SweepError(f"data error: {path}: cannot read Parquet ({exc.__class__.__name__})") from exc
    return df


def _typed(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """The canonical columns with the lake's type rules applied: ts to UTC microseconds, the rest to float64.

    ts must be a datetime (naive means UTC; an aware one is converted), a date, or ISO 8601 text. Plain
    integers are refused: a Parquet integer has no unit, and reading epoch seconds as microseconds would
    put the series in 1970 without a word (`sweep data import` reads epoch numbers from CSV by magnitude).
    Prices and volume must be numbers; text, booleans and other types are refused, never coerced."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SweepError(f"{where}: missing column(s) {', '.join(missing)} (have: {', '.join(df.columns)})")
    for c in COLUMNS[1:]:
        if not df.schema[c].is_numeric():
            raise SweepError(f"{where}: column {c} is {df.schema[c]}, expected a number")
    kind = df.schema["ts"]
    ts = pl.col("ts")
    if kind == pl.String:
        text = df.get_column("ts")
        parsed = _parse_text_ts(text, "UTC")
        # ISO 8601 only: a guessed day-first or month-first order would move bars without a word
        bad = ((parsed.is_null() | ~text.str.contains(_ISO_8601)) & text.is_not_null()).arg_true()
        if bad.len():
            row = int(bad[0])
            raise SweepError(f"{where} row {row + 1}: cannot parse timestamp {df['ts'][row]!r} (expected ISO 8601)")
        df = df.with_columns(parsed.alias("ts"))
    elif kind == pl.Date:
        ts = ts.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    elif isinstance(kind, pl.Datetime):
        ts = ts.dt.replace_time_zone("UTC") if kind.time_zone is None else ts.dt.convert_time_zone("UTC")
    elif kind.is_integer():
        raise SweepError(
            f"{where}: column ts is {kind}, integers have no time unit; store a Datetime (timestamp) column "
            "or import the CSV with `sweep data import`"
        )
    else:
        raise SweepError(f"{where}: column ts is {kind}, expected a datetime, a date or ISO 8601 text")
    return df.select(ts.cast(pl.Datetime("us", "UTC")).alias("ts"), *[pl.col(c).cast(pl.Float64) for c in COLUMNS[1:]])


_ISO_8601 = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$"
_YEAR = re.compile(r"year=(\d{4})")
_MONTH = re.compile(r"month=(\d{1,2})")


def _hidden(part: str) -> bool:
    """Names the Parquet tools skip: writers' temporary and metadata files."""
    return part.startswith((".", "_"))


def series_files(ref: SeriesRef) -> list[Path]:
    """The series' Parquet files in calendar order (month=1 and month=01 alike, sorted as numbers).

    Every file must sit at year=YYYY/month=M/ (M 1-12); one anywhere else, or under a malformed partition
    folder such as year=20x4, is an error rather than silently read or silently skipped."""
    keyed = []
    for f in ref.path.rglob("*.parquet"):
        rel = f.relative_to(ref.path).parts
        if any(_hidden(p) for p in rel):
            continue
        year = _YEAR.fullmatch(rel[0]) if len(rel) == 3 else None
        month = _MONTH.fullmatch(rel[1]) if len(rel) == 3 else None
        if year is None or month is None or not 1 <= int(month.group(1)) <= 12:
            raise SweepError(f"data error: {f}: not under year=YYYY/month=M/ (M 1-12) in {ref.path}; move or remove it")
        keyed.append(((int(year.group(1)), int(month.group(1)), rel[2]), f))
    return [f for _, f in sorted(keyed)]


def read_series(ref: SeriesRef) -> Series:
    """Read and check one series; a broken rule raises with file, row and rule."""
    files = series_files(ref)
    if not files:
        raise SweepError(f"data error: {ref.path}: no Parquet files for {ref.symbol} {ref.freq}")
    frames = []
    for f in files:
        where = f"data error: {f}"
        df = _typed(_to_frame(f), where)
        problem = _frame_problem(df, where)
        if problem:
            raise SweepError(problem)
        frames.append(df.with_columns(pl.lit(str(f)).alias("_file")))
    df = pl.concat(frames)
    if df.height == 0:
        raise SweepError(f"data error: {ref.path}: no bars for {ref.symbol} {ref.freq} (every file is empty)")
    # order across files: the same rules, now naming the file where the break happens
    step = df.select(
        (pl.col("ts") == pl.col("ts").shift(1)).fill_null(False).alias("dup"),
        (pl.col("ts") < pl.col("ts").shift(1)).fill_null(False).alias("back"),
    )
    for col, rule in (("dup", "duplicate timestamp"), ("back", "timestamps not sorted ascending")):
        hits = step.get_column(col).arg_true()
        if hits.len():
            row = int(hits[0])
            raise SweepError(f"data error: {df['_file'][row]} (ts {df['ts'][row]}): {rule} across files")
    return _series(df, ref.symbol, ref.freq, ref.asset_class, str(ref.path))


def _series(df: pl.DataFrame, symbol: str, freq: str, asset_class: str, source: str) -> Series:
    ts = df.get_column("ts").dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    ohlcv = df.select(COLUMNS[1:]).to_numpy().astype(np.float64)
    return Series(symbol, freq, asset_class, ts, ohlcv, source)


def bars_series(df: pl.DataFrame, symbol: str, freq: str, asset_class: str, where: str) -> Series:
    """Bars from outside the lake (a live feed, `sweeper.api`), checked by the lake's rules; naive
    timestamps are UTC, as in the lake."""
    typed = _typed(df, f"data error: {where}")  # the lake's type rules too
    problem = _frame_problem(typed, f"data error: {where}")
    if problem:
        raise SweepError(problem)
    return _series(typed, symbol, freq, asset_class, where)


def load(lake: Path, symbols: list[str], freq: str | None) -> list[Series]:
    return [read_series(r) for r in locate(lake, symbols, freq)]


def check_record(ref: SeriesRef) -> dict[str, Any]:
    """What `sweep data check` reports of one series: size, span, gaps, zero-volume bars, the broken rule."""
    empty = dict.fromkeys(("rows", "first_ts", "last_ts", "gaps", "missing_bars", "longest_gap_s", "zero_volume"))
    try:
        s = read_series(ref)
    except SweepError as exc:
        return {"symbol": ref.symbol, "freq": ref.freq, **empty, "problem": str(exc)}
    g = s.gaps()
    return {
        "symbol": s.symbol,
        "freq": s.freq,
        "rows": len(s),
        "first_ts": str(s.ts[0]),
        "last_ts": str(s.ts[-1]),
        "gaps": g.count,
        "missing_bars": g.missing_bars,
        "longest_gap_s": g.longest_seconds,
        "zero_volume": int((s.ohlcv[:, 4] == 0).sum()),
        "problem": None,
    }


# --- CSV import -----------------------------------------------------------------------------------

_SPELLINGS = {
    "ts": ("ts", "timestamp", "date", "datetime", "time", "open_time", "unix", "date_time"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c", "price", "last"),
    "volume": ("volume", "vol", "v", "volume_base", "base_volume"),
}


def _canonical_columns(columns: list[str], where: str) -> dict[str, str]:
    lower: dict[str, str] = {}
    for c in columns:
        key = c.strip().lower().replace(" ", "_")
        if key in lower:
            raise SweepError(f"{where}: columns {lower[key]!r} and {c!r} are the same name; keep one")
        lower[key] = c
    mapping = {}
    for name, spellings in _SPELLINGS.items():
        found = next((lower[s] for s in spellings if s in lower), None)
        if found is None and name == "ts" and columns and columns[0].strip() == "":
            found = columns[0]  # an unnamed first column: a date index written by pandas
        if found is None:
            raise SweepError(
                f"{where}: no {name} column (accepted spellings: {', '.join(spellings)}; have: {', '.join(columns)})"
            )
        mapping[found] = name
    return mapping


# CSV epoch numbers, by magnitude of the largest: below 1e11 seconds (until the year 5138), below 1e14
# milliseconds, below 1e17 microseconds, else nanoseconds. Each unit covers 1973-5138 of the next.
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))


def _parse_text_ts(text: pl.Series, time_zone: str | None) -> pl.Series:
    """Text to datetimes (in `time_zone` when the text has no offset), null where a value does not parse,
    also when no format fits any value."""
    try:
        return text.str.to_datetime(time_unit="us", time_zone=time_zone, strict=False)
    except pl.exceptions.ComputeError:
        return pl.Series(text.name, [None] * len(text), dtype=pl.Datetime("us", time_zone))


def _parse_ts(col: pl.Series, tz: str | None) -> pl.Series:
    """Timestamps in UTC. Epoch numbers are UTC by definition and dates are calendar days (the lake's
    daily bars open at 00:00 UTC); a clock time without a zone needs `tz`, never a silent guess."""
    if col.dtype.is_numeric():
        biggest = float(col.abs().max() or 0)
        unit = next((u for limit, u in _EPOCH_UNITS if biggest < limit), "ns")
        return pl.from_epoch(col.cast(pl.Int64), time_unit=unit).dt.replace_time_zone("UTC")
    if col.dtype == pl.String:
        parsed = _parse_text_ts(col, None)
        if parsed.null_count() > col.null_count():
            bad = col.filter(parsed.is_null() & col.is_not_null())[0]
            raise SweepError(f"cannot parse timestamp {bad!r}")
        col = parsed
    if isinstance(col.dtype, pl.Date):
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if not isinstance(col.dtype, pl.Datetime):
        raise SweepError(f"timestamp column is {col.dtype}: expected dates, datetimes or epoch numbers")
    if col.dtype.time_zone is None:  # type: ignore[union-attr]
        if tz is None:
            raise SweepError(
                f"timestamps have no time zone (first: {col[0]}): say which with --tz, e.g. --tz UTC or "
                "--tz America/New_York"
            )
        try:
            col = col.dt.replace_time_zone(tz, ambiguous="raise", non_existent="raise")
        except pl.exceptions.PolarsError as exc:
            raise SweepError(f"--tz {tz}: {str(exc).splitlines()[0]}") from None
    return col.dt.convert_time_zone("UTC")


def freq_label(seconds: float) -> str:
    """The frequency label of a bar length: 3600 -> 1h, 86400 -> 1d, 90 -> 90s."""
    for unit, size in sorted(_UNIT_SECONDS.items(), key=lambda kv: -kv[1]):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _spacing_problem(ts: pl.Series, freq: str, where: str) -> str | None:
    """Bars whose typical step is not `freq` (hourly rows imported as 1d), or two bars closer than half a bar.

    The median step is used, not every step: markets close (weekends, holidays) and a day in a local
    time zone can be 23 or 25 hours long in UTC."""
    bar = freq_seconds(freq)
    steps = ts.diff().dt.total_seconds().drop_nulls()
    if steps.is_empty():
        return None
    typical = float(steps.median())  # type: ignore[arg-type]
    if typical != bar:
        return (
            f"{where}: bars are {freq_label(typical)} apart (median step) but --freq {freq} means "
            f"{freq_label(bar)} bars: pass --freq {freq_label(typical)} or resample the file"
        )
    close = (steps < bar / 2).arg_true()
    if close.len():
        row = int(close[0]) + 1
        return f"{where} row {row + 1} (ts {ts[row]}): only {freq_label(steps[row - 1])} after the previous bar"
    return None


def import_csv(
    csv: Path, lake: Path, symbol: str, freq: str, asset_class: str, tz: str | None = None
) -> tuple[int, int]:
    """Write a CSV of bars into the lake layout; returns (rows, files). Checks everything first, the bar
    spacing against `freq` included; `tz` is the zone of timestamps that carry none."""
    check_name("symbol", symbol)
    check_name("asset class", asset_class)
    freq_seconds(freq)
    if not csv.is_file():
        raise SweepError(f"import error: {csv}: file not found")
    where = f"import error: {csv}"
    try:
        raw = pl.read_csv(csv, infer_schema_length=10000, try_parse_dates=True)
    except Exception as exc:
        raise SweepError(f"{where}: cannot read CSV ({exc})") from exc
    df = raw.rename(_canonical_columns(raw.columns, where)).select(COLUMNS)
    if df.height == 0:
        raise SweepError(f"{where}: no rows after the header; nothing to import")
    try:
        df = df.with_columns(_parse_ts(df.get_column("ts"), tz).cast(pl.Datetime("us", "UTC")).alias("ts"))
    except SweepError as exc:
        raise SweepError(f"{where}: {exc}") from exc
    df = df.with_columns([pl.col(c).cast(pl.Float64, strict=False) for c in COLUMNS[1:]])
    problem = _frame_problem(df, where) or _spacing_problem(df.get_column("ts"), freq, where)
    if problem:
        raise SweepError(problem)
    target = lake / f"asset_class={asset_class}" / f"freq={freq}" / f"symbol={symbol}"
    check_writable(target.parent, "--lake")
    df = df.with_columns(pl.col("ts").dt.year().alias("_y"), pl.col("ts").dt.month().alias("_m"))
    parts = df.partition_by(["_y", "_m"], as_dict=True, maintain_order=True)
    # imports into one lake take turns, so a staging folder found while holding the lock belongs to an
    # import that was killed (readers skip hidden folders, but it would stay on disk for ever)
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(lake / IMPORT_LOCK):
        for stale in target.parent.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            raise SweepError(f"{where}: {target} already exists; remove it first to re-import")
        # all months go into a hidden folder that is renamed into place at the end: all or nothing
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{symbol}.", dir=target.parent))
        try:
            for (y, m), part in parts.items():
                out = staging / f"year={y}" / f"month={m:02d}" / "part.parquet"
                out.parent.mkdir(parents=True)
                part.select(COLUMNS).write_parquet(out, compression="zstd")
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return df.height, len(parts)
