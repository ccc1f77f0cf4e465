"""The per-symbol config: what a sweep chose for one symbol, and everything its numbers came from.

`sweep run` writes one per symbol under hyperparams/<run>/, `sweep promote` copies it to hyperparams/best/,
and `eval`, `report`, `runs`, `forecast`, `export` and `load_config` read it back. This module is its one
owner: `Config.to_dict`/`to_json` write the file and `Config.from_dict`/`from_json` read it, schema 1 files
included, so no command reads a config by raw keys and a layout change happens here or nowhere. It holds
no search machinery: `store.config_record` builds a `Config` from a run's results.

Schemas: 1, the first; 2 (SCHEMA_VERSION) scores MASE/MSIS on a seasonal-naive scale, centres the naive
baseline, breaks ties explicitly and adds `selection`, `scale` and per-backend `pruned_trials`. A schema 1
file reads with those three absent and writes back as it was read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.atomic import read_json, write_json
from sweeper.compare import Comparison
from sweeper.errors import SweepError
from sweeper.metric import get
from sweeper.objective import Candidate
from sweeper.plan import Protocol
from sweeper.select import REFERENCE
from sweeper.workspace import resolved

SCHEMA_VERSION = 2
Means = dict[str, float | None]


def clean(means: dict[str, float] | None) -> Means | None:
    """JSON has no NaN: undefined means (e.g. MASE on a flat context) become null."""
    return None if means is None else {k: (float(v) if np.isfinite(v) else None) for k, v in means.items()}


@dataclass(frozen=True)
class Source:
    """What re-creates a candidate's draws: its checkpoint (None for the baselines), the number of draws
    cached, whether the checkpoint has random weights (`sweep models init`), and for fine-tuned knobs the
    weights behind each split (`Tuner.record`: knobs, then per split the blocks of key, cut and folder)."""

    checkpoint: str | None
    draws: int
    random_init: bool = False
    finetune: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "draws": self.draws,
            **({"random_init": True} if self.random_init else {}),
            **({"finetune": self.finetune} if self.finetune else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Source:
        return cls(d.get("checkpoint"), int(d["draws"]), bool(d.get("random_init")), d.get("finetune"))

    def blocks(self) -> list[dict[str, Any]]:
        """The fine-tuned weights' blocks, validation then test (none when not fine-tuned)."""
        return [b for split in ("val", "test") for b in (self.finetune or {}).get(split, [])]

    def latest_block(self) -> dict[str, Any] | None:
        """The block of the latest training cut (what a live forecast uses): the last test block, else the
        last validation block; None when not fine-tuned."""
        blocks = (self.finetune or {}).get("test") or (self.finetune or {}).get("val")
        return blocks[-1] if blocks else None

    def resolved(self, named_in: Path) -> Source:
        """The checkpoint and every fine-tuned weights folder resolved from the file `named_in`."""
        splits = {
            split: [{**b, "weights": resolved(b["weights"], named_in)} for b in blocks]
            for split, blocks in (self.finetune or {}).items()
            if split in ("val", "test")
        }
        return replace(
            self,
            checkpoint=self.checkpoint and resolved(self.checkpoint, named_in),
            finetune=self.finetune and {**self.finetune, **splits},
        )


@dataclass(frozen=True)
class Scored:
    """A candidate's recorded means: validation, test, and the trading read-out per split."""

    validation: Means | None
    test: Means | None
    trading: dict[str, Means | None]

    def means(self) -> dict[str, Any]:
        return {"validation": self.validation, "test": self.test, "trading": self.trading}

    @staticmethod
    def read_means(d: dict[str, Any]) -> dict[str, Any]:
        """`means` as a file holds them: the fields of a `Scored`."""
        return {"validation": d["validation"], "test": d["test"], "trading": d.get("trading") or {}}


@dataclass(frozen=True)
class Chosen:
    """The candidate the selection rule picked."""

    backend: str
    params: dict[str, Any]
    source: Source

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "params": self.params, **self.source.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chosen:
        return cls(d["backend"], d["params"], Source.from_dict(d))


@dataclass(frozen=True)
class Searched(Scored):
    """One searched backend: its best knobs (None when it has none, `error` says why), what re-creates
    them, its trial counts, means and, in multi-objective runs, its Pareto front."""

    params: dict[str, Any] | None
    source: Source | None
    trials: int
    pruned_trials: int | None = None  # None: a schema 1 file, which did not count them
    pareto_front: list[dict[str, Any]] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            **({} if self.source is None else self.source.to_dict()),
            "trials": self.trials,
            **({} if self.pruned_trials is None else {"pruned_trials": self.pruned_trials}),
            **self.means(),
            **({"pareto_front": self.pareto_front} if self.pareto_front is not None else {}),
            **({"error": self.error} if self.error else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Searched:
        return cls(
            **Scored.read_means(d),
            params=d["params"],
            source=None if d["params"] is None else Source.from_dict(d),
            trials=int(d["trials"]),
            pruned_trials=d.get("pruned_trials"),
            pareto_front=d.get("pareto_front"),
            error=d.get("error"),
        )


@dataclass(frozen=True)
class Baseline(Scored):
    """The naive reference every candidate is compared against: tuned (`origin` "tuned", naive was
    searched) or its defaults ("defaults") when the run did not search it."""

    backend: str
    origin: str
    params: dict[str, Any]
    source: Source

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "source": self.origin,
            "params": self.params,
            **self.source.to_dict(),
            **self.means(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Baseline:
        return cls(
            **Scored.read_means(d),
            backend=d["backend"],
            origin=d["source"],
            params=d["params"],
            source=Source.from_dict(d),
        )


@dataclass(frozen=True)
class Ensemble:
    """Caruana ensemble weights over the config's candidates (their names: backends, `baseline`)."""

    method: str
    weights: dict[str, float]
    validation: Means | None
    test: Means | None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "weights": self.weights, "validation": self.validation, "test": self.test}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ensemble:
        return cls(d["method"], d["weights"], d["validation"], d["test"])


@dataclass(frozen=True)
class Data:
    """The bars the config was scored on: where, which (fingerprints of the series and of the origins), how many."""

    lake: str
    source: str
    fingerprint: str
    plan_fingerprint: str
    rows: int
    first_ts: str
    last_ts: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Data:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Config:
    """One symbol's config (module docstring). `selection` and `scale` are None in schema 1 files;
    `promotion` is set on the copies in hyperparams/best/."""

    run_id: str
    symbol: str
    freq: str
    asset_class: str
    horizon: int
    selection_metric: str
    chosen: Chosen | None
    backends: dict[str, Searched]
    baseline: Baseline
    ensemble: Ensemble | None
    comparisons: dict[str, dict[str, dict[str, Any]]]
    protocol: dict[str, Any]
    data: Data
    search: dict[str, Any]
    versions: dict[str, str]
    seed: int
    selection: dict[str, Any] | None = None
    scale: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    # ---- the file

    def to_dict(self) -> dict[str, Any]:
        head = {
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "symbol": self.symbol,
            "freq": self.freq,
            "asset_class": self.asset_class,
            "horizon": self.horizon,
            "selection_metric": self.selection_metric,
        }
        return {
            **head,
            **({} if self.selection is None else {"selection": self.selection}),
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "backends": {b: e.to_dict() for b, e in self.backends.items()},
            "baseline": self.baseline.to_dict(),
            "ensemble": None if self.ensemble is None else self.ensemble.to_dict(),
            "comparisons": self.comparisons,
            "protocol": self.protocol,
            **({} if self.scale is None else {"scale": self.scale}),
            "data": self.data.to_dict(),
            "search": self.search,
            "versions": self.versions,
            "seed": self.seed,
            **({} if self.promotion is None else {"promotion": self.promotion}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """A config from its JSON object; a key it needs that is missing or of the wrong kind is a SweepError."""
        version = d.get("schema_version", 1)
        if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise SweepError(f"config schema {version!r} is not one this sweep reads (1 to {SCHEMA_VERSION}); upgrade")
        try:
            return cls(
                d["run_id"],
                d["symbol"],
                d["freq"],
                d["asset_class"],
                int(d["horizon"]),
                d["selection_metric"],
                None if d["chosen"] is None else Chosen.from_dict(d["chosen"]),
                {b: Searched.from_dict(e) for b, e in d["backends"].items()},
                Baseline.from_dict(d["baseline"]),
                None if d["ensemble"] is None else Ensemble.from_dict(d["ensemble"]),
                d["comparisons"],
                d["protocol"],
                Data.from_dict(d["data"]),
                d["search"],
                d["versions"],
                int(d["seed"]),
                d.get("selection"),
                d.get("scale"),
                d.get("promotion"),
                version,
            )
        except KeyError as exc:
            raise SweepError(f"config has no {exc.args[0]!r} (schema {version})") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise SweepError(f"config does not hold a schema {version} record: {exc}") from exc

    @classmethod
    def from_json(cls, path: Path) -> Config:
        """The config in `path`, with the paths it records resolved from any working directory (absolute, or
        relative to the file, as older versions wrote them)."""
        try:
            doc = read_json(path)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            config = cls.from_dict(doc)
        except (OSError, ValueError) as exc:
            raise SweepError(f"cannot read config {path}: {exc}") from exc
        except SweepError as exc:
            raise SweepError(f"config {path}: {exc}") from exc
        return config.resolved(path)

    def to_json(self, path: Path) -> None:
        write_json(path, self.to_dict())

    def resolved(self, named_in: Path) -> Config:
        return replace(
            self,
            chosen=self.chosen and replace(self.chosen, source=self.chosen.source.resolved(named_in)),
            backends={
                b: e if e.source is None else replace(e, source=e.source.resolved(named_in))
                for b, e in self.backends.items()
            },
            baseline=replace(self.baseline, source=self.baseline.source.resolved(named_in)),
            data=replace(self.data, lake=resolved(self.data.lake, named_in)),
        )

    # ---- what readers ask of it

    @property
    def key(self) -> tuple[str, str, int]:
        """What a promoted config is filed under: symbol, freq, horizon."""
        return self.symbol, self.freq, self.horizon

    def protocol_record(self) -> Protocol:
        """The protocol the config was scored under."""
        p = self.protocol
        return Protocol(
            p["horizon"],
            p["max_context"],
            p["val_origins"]["count"],
            p["test_origins"]["count"],
            p["stride"],
            p.get("season"),
        )

    @property
    def last_test_ts(self) -> str:
        return self.protocol["test_origins"]["last_ts"]

    def candidate(self, name: str) -> Candidate:
        """A candidate by its name in the config (an ensemble member): a backend's best knobs, or the
        untuned naive reference (`baseline`)."""
        if name == REFERENCE:
            return Candidate(self.baseline.backend, self.baseline.params, self.baseline.source.draws)
        entry = self.backends.get(name)
        if entry is None or entry.params is None or entry.source is None:
            raise SweepError(f"config for {self.symbol} has no configuration for {name!r}")
        return Candidate(name, entry.params, entry.source.draws)

    def chosen_candidate(self) -> Candidate:
        if self.chosen is None:
            raise SweepError(f"config for {self.symbol} has no chosen configuration")
        return Candidate(self.chosen.backend, self.chosen.params, self.chosen.source.draws)

    def chosen_entry(self) -> Scored:
        """The chosen candidate's means: its backend's, or the naive defaults' when the rule fell back to a
        naive baseline that was not searched."""
        if self.chosen is None:
            raise SweepError(f"config for {self.symbol} has no chosen configuration")
        return self.backends.get(self.chosen.backend) or self.baseline

    def scored(self) -> dict[str, Searched | Baseline]:
        """Every candidate with means, by name: the searched backends, and the naive defaults when the run
        did not search naive."""
        entries: dict[str, Searched | Baseline] = dict(self.backends)
        if self.baseline.origin == "defaults":
            entries[REFERENCE] = self.baseline
        return entries

    def sources(self) -> dict[str, Source]:
        """What re-creates each searched backend's draws."""
        return {b: e.source for b, e in self.backends.items() if e.source is not None}

    def checkpoints(self) -> dict[str, str]:
        return {b: s.checkpoint for b, s in self.sources().items() if s.checkpoint}

    def random_weights(self) -> list[str]:
        """The backends whose checkpoint has random weights (`sweep models init`)."""
        return [b for b, s in self.sources().items() if s.random_init]

    def facts(self) -> dict[str, Any]:
        """What a summary says of a symbol beyond its scores: the bar size used, and random weights."""
        return {"freq": self.freq, "horizon": self.horizon, "random_weights": self.random_weights()}

    @property
    def winner(self) -> str | None:
        """The chosen candidate's name: a searched backend, or `baseline` (the naive defaults)."""
        if self.chosen is None:
            return None
        return self.chosen.backend if self.chosen.backend in self.backends else REFERENCE

    def is_baseline(self, name: str) -> bool:
        """Whether candidate `name` is the naive baseline: its defaults, or the tuned naive."""
        return name == REFERENCE or (self.baseline.origin == "tuned" and name == self.baseline.backend)

    def summary(self) -> dict[str, Any]:
        """What `sweep run` says of this symbol: its row of the summary table and its `--json` record."""
        m = get(self.selection_metric)
        vs = self.comparisons.get("chosen_vs_naive", {})
        ens = self.comparisons.get("ensemble_vs_chosen", {})
        chosen = None if self.chosen is None else self.chosen_entry()
        e = self.ensemble
        return {
            "symbol": self.symbol,
            "chosen": self.winner,
            "is_naive": self.winner is not None and self.is_baseline(self.winner),
            "selection": {k: (self.selection or {}).get(k) for k in ("rule", "why")},
            "params": None if self.chosen is None else self.chosen.params,
            "validation": None if chosen is None else chosen.validation,
            "test": None if chosen is None else chosen.test,
            "naive": {
                "validation": self.baseline.validation,
                "test": self.baseline.test,
                "source": self.baseline.origin,
            },
            "test_skill_vs_naive": m.skill(Comparison.from_dict(vs["test"])) if "test" in vs else None,
            "vs_naive": vs,
            "ensemble": None
            if e is None
            else {
                "weights": e.weights,
                "validation": e.validation,
                "test": e.test,
                "vs_chosen": ens,
                "test_skill_vs_chosen": m.skill(Comparison.from_dict(ens["test"])) if "test" in ens else None,
            },
            "skipped": {b: x.error for b, x in self.backends.items() if x.error},
            "trials": {b: {"complete": x.trials, "pruned": x.pruned_trials or 0} for b, x in self.backends.items()},
            **self.facts(),
        }
