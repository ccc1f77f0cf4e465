"""`sweep report RUN_ID`: one self-contained HTML page showing what a run found and how sure it is.

Everything comes from the run's own files: configs, study.db, origins.parquet. The forecast fans are
re-created through the run's forecast cache, so they show the very draws that were scored (a missing
cache recomputes them; cheap for the baselines). Plots are PNGs drawn on matplotlib's Agg canvas and
embedded as base64: the page has no external assets and can be attached to a CI run or mailed.

Differences between candidates are drawn as differences, never as two distributions side by side: a
1% edge over naive is invisible between two box plots of per-origin CRPS (whose spread is many times
that), but plain in the running sum of the paired per-origin difference and in its mean with a
block-bootstrap interval. Calibration is the share of actual closes inside the 50% and 90% bands.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from optuna.study import StudyDirection
from optuna.trial import TrialState

from sweeper.atomic import write_bytes
from sweeper.compare import paired_bootstrap
from sweeper.data import Series
from sweeper.ensemble import mixture
from sweeper.errors import SweepError
from sweeper.evaluate import recorded_task
from sweeper.metrics import weighted_quantile
from sweeper.objective import SymbolTask
from sweeper.output import Step
from sweeper.record import Config
from sweeper.search import namespace_for, storage_for, study_name
from sweeper.select import ENSEMBLE, REFERENCE
from sweeper.workspace import RunPaths

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # 90% band, 50% band, median
ROLLING_ORIGINS = 60  # H = 1: the one-step band over the last this many test origins
FANS = 4  # H > 1: fans from this many non-overlapping test origins at the end of the test span
TAIL = 30  # context bars drawn before the first plotted origin
MIN_TRIALS = 10  # below this, importances would describe the sampler's noise, not the knobs
BANDS = {"50%": (1, 3), "90%": (0, 4)}  # band -> (lower, upper) index into QUANTILES
LINEAR_PERCENT = 1.0  # difference plots: linear within +-1%, logarithmic beyond
IMPORTANCE_METHOD = (
    "fANOVA (Hutter et al. 2014; optuna.importance.FanovaImportanceEvaluator, seed 0) on the completed trials' "
    "validation score. optuna-dashboard shows PED-ANOVA by default, which can rank the knobs differently."
)
COLORS = {"chosen": "#1f77b4", ENSEMBLE: "#d62728", "baseline": "#7f7f7f"}
OTHERS = ("#6baed6", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
Bands = dict[str, tuple[str, np.ndarray]]  # panel title -> (colour, quantiles (Q, B, H))

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{border-bottom:2px solid #ccc;padding-top:.6em} h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em 1em}
.muted{color:#666;font-size:.9em} img{max-width:100%}
"""


# --- forecasts ---------------------------------------------------------------------------------------


def _weights(config: Config) -> dict[str, float]:
    return {} if config.ensemble is None else config.ensemble.weights


def quantiles(samples: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(Q, B, H) quantiles of weighted draws (B, N, H): a mixture's draws carry unequal weights."""
    return np.stack([weighted_quantile(samples, weights, q) for q in QUANTILES])


def fan_bands(config: Config, task: SymbolTask) -> Bands:
    """Quantiles on the test origins of the chosen config and of the ensemble (weighted mixture)."""
    chosen = task.forecast(config.chosen_candidate(), "test")
    n = chosen.samples.shape[1]
    bands = {f"chosen: {chosen.name}": (COLORS["chosen"], quantiles(chosen.samples, np.full(n, 1 / n)))}
    weights = _weights(config)
    if weights:
        members = [task.forecast(config.candidate(name), "test", name) for name in weights]
        samples, w, _, _ = mixture(members, weights)
        mix = ", ".join(f"{k} {v:.2f}" for k, v in weights.items())
        bands[f"ensemble: {mix}"] = (COLORS[ENSEMBLE], quantiles(samples, w))
    return bands


def coverage(q: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Share of actual closes (B, H) inside each band of the quantiles (Q, B, H), over all origins and steps."""
    return {band: float(np.mean((q[lo] <= actual) & (actual <= q[hi]))) for band, (lo, hi) in BANDS.items()}


# --- figures ------------------------------------------------------------------------------------------


def png(fig: Figure, alt: str) -> str:
    """The figure as an <img> with the PNG inline, so the page needs no other file."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _grid(n: int, width: float = 11.0, height: float = 3.0) -> tuple[Figure, list[Axes]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _date_axis(ax: Axes) -> None:
    loc = AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(loc))


def _actual(ax: Axes, series: Series, first: int, stop: int) -> None:
    """Closes: the context tail before `first` in grey, the targets from `first` to `stop` in black."""
    ctx = np.arange(max(first - TAIL, 0), first + 1)
    ax.plot(series.ts[ctx], series.close[ctx], color="#999", lw=1, label="context")
    rows = np.arange(first, stop)
    ax.plot(series.ts[rows], series.close[rows], "k.-", lw=0.8, ms=3, label="actual close")


def _band(ax: Axes, x: np.ndarray, q: np.ndarray, color: str, label: bool) -> None:
    ax.fill_between(x, q[0], q[4], color=color, alpha=0.18, lw=0, label="90%" if label else None)
    ax.fill_between(x, q[1], q[3], color=color, alpha=0.35, lw=0, label="50%" if label else None)
    ax.plot(x, q[2], color=color, lw=1.3, label="median" if label else None)


def _rolling(ax: Axes, series: Series, origins: np.ndarray, q: np.ndarray, color: str) -> None:
    """H = 1: every recent test origin's one-step forecast, drawn at its target bar, as one band."""
    pos = np.arange(max(origins.size - ROLLING_ORIGINS, 0), origins.size)
    _actual(ax, series, int(origins[pos[0]]), int(origins[-1]) + 1)
    _band(ax, series.ts[origins[pos]], q[:, pos, 0], color, True)


def _fans(ax: Axes, series: Series, origins: np.ndarray, q: np.ndarray, color: str) -> None:
    """H > 1: whole-horizon fans from the last test origins, one horizon apart so they do not overlap."""
    h = q.shape[2]
    pos = np.arange(origins.size - 1, -1, -h)[:FANS][::-1]
    _actual(ax, series, int(origins[pos[0]]), int(origins[-1]) + h)
    for i, p in enumerate(pos):
        o = int(origins[p])
        anchored = np.concatenate([np.full((len(QUANTILES), 1), series.close[o - 1]), q[:, p, :]], axis=1)
        _band(ax, series.ts[o - 1 : o + h], anchored, color, i == 0)


def fan_figure(series: Series, origins: np.ndarray, bands: Bands) -> Figure:
    fig = Figure(figsize=(11, 3.0 * len(bands)), layout="constrained")
    axes = fig.subplots(len(bands), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for ax, (title, (color, q)) in zip(axes, bands.items(), strict=True):
        (_rolling if q.shape[2] == 1 else _fans)(ax, series, origins, q, color)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylabel("close")
        ax.legend(loc="upper left", fontsize=8, ncols=5)
    _date_axis(axes[-1])
    return fig


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def history_figure(studies: dict[str, optuna.Study], metric: str) -> Figure:
    """Validation score per trial and the best so far (first objective of a multi-objective study)."""
    fig, axes = _grid(len(studies))
    for ax, (backend, study) in zip(axes, studies.items(), strict=True):
        done = _completed(study)
        ax.set_title(backend, fontsize=10)
        if not done:
            ax.text(0.5, 0.5, "no completed trials", ha="center", transform=ax.transAxes)
            continue
        y = np.array([t.values[0] for t in done])
        best = (np.minimum if study.directions[0] == StudyDirection.MINIMIZE else np.maximum).accumulate(y)
        x = [t.number for t in done]
        ax.plot(x, y, "o", ms=3, alpha=0.6, color=COLORS["baseline"], label="trial")
        ax.step(x, best, where="post", color=COLORS["chosen"], label="best so far")
        if y.min() > 0 and y.max() > 3 * y.min():  # a few poor trials would flatten the best-so-far line
            ax.set_yscale("log")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"validation {metric}")
        ax.legend(fontsize=8)
    return fig


def importance(study: optuna.Study) -> dict[str, float] | str:
    """fANOVA importances of the knobs, or a sentence saying why there are none worth showing."""
    done = _completed(study)
    if len(done) < MIN_TRIALS:
        return f"{len(done)} completed trial(s); importances need at least {MIN_TRIALS}"
    if len({p for t in done for p in t.params}) < 2:
        return "a single parameter was searched: its importance is 1 by definition"
    if np.ptp([t.values[0] for t in done]) == 0:
        return "every trial scored the same: there is no variance to attribute"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator, target=lambda t: t.values[0])


def importance_figure(found: dict[str, dict[str, float]]) -> Figure:
    fig, axes = _grid(len(found), height=2.4)
    for ax, (backend, imp) in zip(axes, found.items(), strict=True):
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color=COLORS["chosen"])
        ax.set_title(backend, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_xlabel("fANOVA importance")
    return fig


def _roles(name: str, config: Config) -> list[str]:
    """What a candidate is in this config: the chosen one, the naive baseline (a tuned naive can be both)."""
    chosen, baseline = name == config.winner, config.is_baseline(name)
    return [role for role, hit in (("chosen", chosen), ("baseline", baseline)) if hit]


def _label(name: str, config: Config) -> str:
    shown = f"{config.baseline.backend} defaults" if name == REFERENCE else name
    roles = _roles(name, config)
    return f"{shown} ({', '.join(roles)})" if roles else shown


def _color(name: str, config: Config) -> str:
    """By role (chosen, baseline, ensemble); every other candidate its own colour, the same on every plot."""
    roles = [ENSEMBLE] if name == ENSEMBLE else _roles(name, config)
    if roles:
        return COLORS[roles[0]]
    others = [n for n in config.backends if not _roles(n, config)]
    return OTHERS[others.index(name) % len(OTHERS)] if name in others else OTHERS[0]


def baseline_name(config: Config) -> str:
    """The naive baseline's candidate name in origins.parquet: the tuned naive, or the untuned reference."""
    base = config.baseline
    return base.backend if base.origin == "tuned" else REFERENCE


def paired_differences(frame: pl.DataFrame, names: list[str], config: Config, split: str) -> dict:
    """Per candidate: origin times and per-origin CRPS minus the naive baseline's at the same origins."""
    base = baseline_name(config)
    ref = frame.filter(candidate=base, split=split).select("origin_row", pl.col("crps").alias("_base"))
    out = {}
    for name in names:
        if name == base:
            continue
        rows = frame.filter(candidate=name, split=split).join(ref, on="origin_row").sort("origin_row")
        out[name] = (rows["origin_ts"].to_numpy(), (rows["crps"] - rows["_base"]).to_numpy())
    return out


def _splits() -> tuple[tuple[str, str], ...]:
    return (("val", "validation origins"), ("test", "test origins"))


def _percent_axis(ax: Axes, axis: str) -> None:
    """Linear within +-1%, logarithmic beyond: a 1% edge and a 100% loss are both readable on one axis."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("symlog", linthresh=LINEAR_PERCENT)
    getattr(ax, f"{axis}axis").set_major_formatter(PercentFormatter(decimals=None))


def cumulative_figure(frame: pl.DataFrame, names: list[str], config: Config) -> Figure:
    """Running sum over time of each candidate's per-origin CRPS minus naive's, as % of naive's running sum
    (its last value is the mean difference): where an edge over naive is won or lost."""
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    base = baseline_name(config)
    for ax, (split, title) in zip(axes, _splits(), strict=True):
        ref = frame.filter(candidate=base, split=split).sort("origin_row")["crps"].to_numpy()
        for name, (ts, d) in paired_differences(frame, names, config, split).items():
            ok = np.isfinite(d) & np.isfinite(ref)
            running = 100 * np.cumsum(d[ok]) / np.cumsum(ref[ok])
            ax.plot(ts[ok], running, color=_color(name, config), lw=1.4, label=_label(name, config))
        ax.axhline(0, color="k", lw=0.8)
        _percent_axis(ax, "y")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("cumulative CRPS vs naive")
        _date_axis(ax)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"paired against {_label(baseline_name(config), config)}: falling = better than naive", fontsize=10)
    return fig


def difference_figure(frame: pl.DataFrame, names: list[str], config: Config) -> Figure:
    """Mean per-origin CRPS difference to naive, as % of naive's mean, with its 95% block-bootstrap interval."""
    horizon = config.horizon
    shown = [n for n in names if n != baseline_name(config)]
    fig = Figure(figsize=(11, 1.4 + 0.45 * max(len(shown), 1)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (split, title) in zip(axes, _splits(), strict=True):
        base = frame.filter(candidate=baseline_name(config), split=split)["crps"].drop_nans().mean()
        for i, (name, (_, d)) in enumerate(paired_differences(frame, shown, config, split).items()):
            c = paired_bootstrap(d, np.zeros_like(d), "crps", horizon)
            scale = 100 / base if base else float("nan")
            mid, lo, hi = c.diff * scale, c.low * scale, c.high * scale
            ax.errorbar(mid, i, xerr=[[mid - lo], [hi - mid]], fmt="o", color=_color(name, config), capsize=3)
            ax.annotate(f"{mid:+.2f}%", (mid, i), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.axvline(0, color="k", lw=0.8)
        _percent_axis(ax, "x")
        ax.margins(x=0.12)
        ax.set_yticks(range(len(shown)), [_label(n, config) for n in shown])
        ax.set_ylim(-0.6, len(shown) - 0.4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("mean CRPS vs naive (95% block-bootstrap interval)")
    return fig


def weights_figure(weights: dict[str, float]) -> Figure:
    fig = Figure(figsize=(6, 0.5 + 0.4 * len(weights)), layout="constrained")
    ax = fig.subplots()
    names = list(weights)[::-1]
    bars = ax.barh(names, [weights[n] for n in names], color=COLORS[ENSEMBLE])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("ensemble weight (share of greedy picks on validation)")
    return fig


# --- html ---------------------------------------------------------------------------------------------


def _num(x: Any) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.5g}"


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """An HTML table; numbers right-aligned, everything else escaped."""

    def cell(v: Any) -> str:
        if isinstance(v, float | int) and not isinstance(v, bool):
            return f'<td class="num">{_num(v)}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ts(stamp: str) -> str:
    """Recorded timestamps to the minute: the bars are never finer."""
    return stamp.replace("T", " ")[:16]


def _span(p: dict[str, Any]) -> str:
    return f"{p['count']} ({_ts(p['first_ts'])} .. {_ts(p['last_ts'])})"


def protocol_table(config: Config) -> str:
    p, d = config.protocol, config.data
    rows = [
        ("horizon", f"{p['horizon']} bar(s) of {config.freq}"),
        ("validation origins", _span(p["val_origins"])),
        ("test origins", _span(p["test_origins"])),
        ("stride / longest context", f"{p['stride']} / {p['max_context']} bars"),
        ("data", f"{d.rows} rows, {_ts(d.first_ts)} .. {_ts(d.last_ts)}, lake {d.lake}"),
        ("fingerprints", f"data {d.fingerprint}, plan {d.plan_fingerprint}"),
    ]
    return table(("protocol", ""), rows)


def candidates_table(config: Config) -> str:
    metric, weights = config.selection_metric, _weights(config)
    rows = [
        (
            _label(name, config),
            str(b.params or getattr(b, "error", None) or ""),
            (b.source and b.source.checkpoint) or "-",
            getattr(b, "trials", "-"),
            (b.validation or {}).get(metric),
            (b.test or {}).get(metric),
            weights.get(name, 0.0),
        )
        for name, b in config.scored().items()
    ]
    if (e := config.ensemble) is not None:
        rows.append(("ensemble", "", "-", "-", (e.validation or {}).get(metric), (e.test or {}).get(metric), 1.0))
    return table(("candidate", "params", "checkpoint", "trials", f"val {metric}", f"test {metric}", "weight"), rows)


def coverage_table(cover: dict[str, dict[str, float]], n: int) -> str:
    rows = [(title, *(cover[title][band] for band in BANDS)) for title in cover]
    note = (
        f'<p class="muted">share of the actual closes ({n} test origin-steps) inside the band; a calibrated '
        "forecast puts about 50% inside the 50% band and 90% inside the 90% band.</p>"
    )
    return table(("forecast", *(f"inside {b} band" for b in BANDS)), rows) + note


TRADING_COLUMNS = ("directional_accuracy", "sharpe", "max_drawdown", "win_rate", "profit_factor", "total_return")


def trading_table(config: Config) -> str:
    rows = [
        (_label(name, config), split, *(x.get(k) for k in TRADING_COLUMNS), x.get("trades"))
        for name, b in config.scored().items()
        for split, x in b.trading.items()
        if x
    ]
    if not rows:
        return "<p>no trading read-out (it needs consecutive origins, stride 1).</p>"
    header = ("candidate", "split", *(c.replace("_", " ") for c in TRADING_COLUMNS), "trades")
    note = (
        '<p class="muted">a long/short strategy on the sign of each point forecast\'s first step, 10 bp per unit '
        "traded, one-bar execution lag (<code>sweeper/trading.py</code>); Sharpe per bar, not annualised.</p>"
    )
    return table(header, rows) + note


def comparisons_table(config: Config) -> str:
    rows = [
        (
            name.replace("_", " "),
            split,
            c["metric"],
            c["mean_a"],
            c["mean_b"],
            c["diff"],
            f"[{_num(c['low'])}, {_num(c['high'])}]",
            _num(c.get("p_value")),
            "yes" if c["within_noise"] else "no",
        )
        for name, by_split in config.comparisons.items()
        for split, c in by_split.items()
    ]
    header = (
        "comparison (a vs b)",
        "split",
        "metric",
        "mean a",
        "mean b",
        "a - b",
        "95% interval",
        "DM p",
        "within noise",
    )
    return table(header, rows)


def load_studies(storage: str, namespace: str, symbol: str, backends: Iterable[str]) -> dict[str, optuna.Study]:
    found = {}
    for b in backends:
        try:
            name = study_name(symbol, b, namespace)
            found[b] = optuna.load_study(study_name=name, storage=storage_for(storage))
        except KeyError:  # the backend failed before its study was created
            continue
    return found


def forecast_section(config: Config, cache: Path, lake: str | None, device: str) -> str:
    try:
        task = recorded_task(config, lake, device, cache)
        bands = fan_bands(config, task)
    except SweepError as exc:
        return f'<p class="note">forecast fans unavailable: {html.escape(str(exc))}</p>'
    actual = task.truth("test").y
    cover = {title: coverage(q, actual) for title, (_, q) in bands.items()}
    h = task.plan.protocol.horizon
    what = (
        f"one-step forecasts of the last {min(ROLLING_ORIGINS, task.plan.test.size)} test origins, drawn at "
        "their target bars"
        if h == 1
        else f"{h}-bar fans from the last {min(FANS, task.plan.test.size)} test origins, one horizon apart"
    )
    return (
        f'<p class="muted">{what}: median and 50%/90% bands from the samples, the actual closes in black, '
        "the context before them in grey.</p>"
        + png(fan_figure(task.series, task.plan.test, bands), "forecast fans")
        + "<h3>Calibration on test origins</h3>"
        + coverage_table(cover, actual.size)
    )


def search_section(config: Config, storage: str, namespace: str) -> str:
    studies = load_studies(storage, namespace, config.symbol, config.backends)
    if not studies:
        return "<p>no studies found in the run's storage.</p>"
    out = [png(history_figure(studies, config.selection_metric), "optimisation history")]
    imps = {b: importance(s) for b, s in studies.items()}
    found = {b: v for b, v in imps.items() if isinstance(v, dict)}
    if found:
        out.append(f'<p class="muted">parameter importances: {html.escape(IMPORTANCE_METHOD)}</p>')
        out.append(png(importance_figure(found), "parameter importance (fANOVA)"))
    notes = [f"<li>{html.escape(b)}: {html.escape(v)}</li>" for b, v in imps.items() if isinstance(v, str)]
    if notes:
        out.append(f"<p>no parameter importances for:</p><ul>{''.join(notes)}</ul>")
    return "".join(out)


def symbol_section(
    config: Config,
    origins: pl.DataFrame,
    paths: RunPaths,
    storage: tuple[str, str],
    lake: str | None,
    device: str,
    tick: Callable[[], None] = lambda: None,
) -> str:
    """One symbol's part of the page; `storage` is the Optuna storage URL and the run's study namespace.
    `tick` is called after each of its SECTION_STEPS slow parts (for a progress bar)."""
    sym = config.symbol
    frame = origins.filter(symbol=sym)
    names = [n for n in (*config.backends, REFERENCE, ENSEMBLE) if n in set(frame["candidate"])]
    weights = _weights(config)
    forecasts = forecast_section(config, paths.cache, lake, device)
    tick()
    paired = (
        [
            png(cumulative_figure(frame, names, config), "cumulative CRPS difference against naive"),
            png(difference_figure(frame, names, config), "mean CRPS difference against naive"),
        ]
        if set(names) - {baseline_name(config)}
        else ["<p>only the naive baseline ran: nothing to pair against it.</p>"]
    )
    tick()
    search = search_section(config, *storage)
    tick()
    parts = [
        f'<h2 id="{html.escape(sym)}">{html.escape(sym)} {config.freq}, H={config.horizon}</h2>',
        protocol_table(config),
        "<h3>Forecasts on test origins</h3>",
        forecasts,
        "<h3>Candidates</h3>",
        candidates_table(config),
        "<h3>Against naive, origin by origin</h3>",
        '<p class="muted">per-origin CRPS minus the naive baseline\'s at the same origin: its running sum over '
        "time (left: validation, right: test), then its mean with a 95% stationary-bootstrap interval.</p>",
        *paired,
        "<h3>Ensemble and comparisons</h3>",
        png(weights_figure(weights), "ensemble weights") if weights else "<p>no ensemble (one candidate).</p>",
        comparisons_table(config),
        '<p class="muted">a - b over the same origins: 95% stationary-bootstrap interval, and the '
        "Diebold-Mariano p-value; within noise when p >= 0.05 (sweeper/compare.py).</p>",
        "<h3>Trading read-out</h3>",
        trading_table(config),
        "<h3>Search</h3>",
        search,
    ]
    return "\n".join(parts)


SECTION_STEPS = 3


def header(manifest: dict[str, Any], configs: list[Config]) -> str:
    req = manifest["request"]
    rows = [
        ("status", f"{manifest['status']} (created {manifest['created']}, finished {manifest.get('finished', '-')})"),
        ("symbols", " ".join(req["symbols"])),
        ("backends", " ".join(req["backends"])),
        ("trials per study", str(req["trials"])),
        ("selection metric", req["metric"]),
        ("seed", str(req["seed"])),
    ]
    models = sorted({f"{b} ({path})" for c in configs for b, path in c.checkpoints().items()})
    note = (
        '<p class="note">Model backends here ran from checkpoints: '
        + html.escape(", ".join(models))
        + ". Numbers from a randomly initialised checkpoint (<code>sweep models init</code>) say nothing about "
        "the model's quality; they only show that the pipeline runs.</p>"
        if models
        else ""
    )
    random = sorted({f"{b} ({s.checkpoint})" for c in configs for b, s in c.sources().items() if s.random_init})
    if random:
        note += (
            '<p class="note"><b>Random weights</b> (written by <code>sweep models init</code>): '
            + html.escape(", ".join(random))
            + ". Every number of these candidates is from an untrained model.</p>"
        )
    toc = " · ".join(f'<a href="#{html.escape(c.symbol)}">{html.escape(c.symbol)}</a>' for c in configs)
    return f"<h1>sweep report: run {html.escape(manifest['run_id'])}</h1>{table(('run', ''), rows)}{note}<p>{toc}</p>"


def render(paths: RunPaths, lake: str | None = None, device: str = "auto", step: Step | None = None) -> str:
    manifest = paths.load_manifest()
    configs = [Config.from_json(p) for p in sorted(paths.hyperparams.glob("*.json"))]
    if not configs:
        raise SweepError(f"run {paths.run_id} has no configs in {paths.hyperparams} (is it still running?)")
    origins = pl.read_parquet(paths.origins)
    storage = paths.storage_url(manifest["request"].get("storage"))
    namespace = namespace_for(paths.run_id, manifest["request"].get("storage"))
    total, done = SECTION_STEPS * len(configs), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if step:
            step(f"report {paths.run_id}", done, total)

    if step:
        step(f"report {paths.run_id}", 0, total)
    sections = [symbol_section(c, origins, paths, (storage, namespace), lake, device, tick) for c in configs]
    body = header(manifest, configs) + "\n".join(sections)
    head = f'<meta charset="utf-8"><title>sweep report {html.escape(paths.run_id)}</title><style>{CSS}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>\n"


def write_report(
    out: Path, run_id: str, lake: str | None = None, device: str = "auto", step: Step | None = None
) -> Path:
    """Render the run's report and write results/<run_id>/report.html atomically; returns its path."""
    paths = RunPaths(out, run_id)
    target = paths.report
    write_bytes(target, render(paths, lake, device, step).encode())
    return target
