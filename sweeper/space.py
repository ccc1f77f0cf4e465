"""Search spaces: one YAML file per backend in `search_spaces/`, checked before anything runs.

    backend: naive
    checkpoint: null            # optional hub id or local directory
    params:
      num_samples:    {type: int, low: 16, high: 512, log: true, default: 128}
      aggregation:    {type: categorical, choices: [mean, median, trimmed_mean_10], default: median}
      context_length: {type: categorical, choices: [64, 128, 256], default: 128}
      temperature:    {type: log-float, low: 0.05, high: 1.0}
      top_p:          {type: float, low: 0.7, high: 0.95, step: 0.05}

Every backend needs num_samples, aggregation and context_length. When every knob has a default, that
configuration is the first trial, so the documented default is always among the candidates.

Categorical numbers are searched in their order, so TPE (and the dashboard's axes) can use it: evenly
spaced integers become an int knob with that step; other numbers (16, 32, 64, ...) an ordered knob, whose
Optuna parameter is the index `<name>_index` into the sorted choices. Everything the sweep records (trials,
configs) holds the real values (`Space.values`).
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from sweeper.aggregate import parse as parse_aggregation
from sweeper.errors import SweepError
from sweeper.finetune.settings import is_finetune_knob
from sweeper.knob import declared

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
TYPES = ("int", "float", "log-float", "categorical")
ORDERED = "ordered"  # not a YAML type: categorical numbers that are not evenly spaced integers
INDEX_SUFFIX = "_index"
REQUIRED = ("num_samples", "aggregation", "context_length")
AGGREGATION = "aggregation"  # a scoring knob: every choice is scored on each trial's draws (objective.py)
MAX_SAMPLES = 65_536  # draws per origin; the cache holds origins x draws x horizon float32 values
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 10_000  # YAML nodes a space file may expand to, aliases counted as often as they are used
Value = int | float | str | bool


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Value, ...] = ()
    default: Value | None = None

    @property
    def optuna_name(self) -> str:
        """The parameter's name in the study: an ordered knob's is its index's."""
        return self.name + INDEX_SUFFIX if self.type == ORDERED else self.name

    def value(self, optuna_value: Value) -> Value:
        """The real value of the study's parameter."""
        return self.choices[int(optuna_value)] if self.type == ORDERED else optuna_value

    def optuna_value(self, value: Value) -> Value:
        return self.choices.index(value) if self.type == ORDERED else value

    @property
    def dtype(self) -> type:
        """The Python type of the knob's values: int, float, bool, or str (strings and mixed choices)."""
        if self.type in ("float", "log-float"):
            return float
        kinds = {type(v) for v in (self.choices or (self.low, self.high))}
        if len(kinds) == 1:
            return kinds.pop()
        return float if kinds == {int, float} else str

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.type == ORDERED:
            return optuna.distributions.IntDistribution(0, len(self.choices) - 1)
        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.type == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.type == "log-float", step=self.step)

    def suggest(self, trial: optuna.Trial) -> Value:
        if self.type == ORDERED:
            return self.choices[trial.suggest_int(self.optuna_name, 0, len(self.choices) - 1)]
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)  # type: ignore[arg-type]
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.type == "log-float")

    def values_max(self) -> Value:
        return max(self.choices) if self.choices else self.high  # type: ignore[return-value,type-var]


@dataclass(frozen=True)
class Space:
    backend: str
    path: Path
    params: dict[str, Param]
    checkpoint: str | None = None

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """What the sampler searches (ordered knobs under their index names): every knob but the
        aggregation, which each trial picks itself (`objective.record_aggregation`)."""
        return {p.optuna_name: p.distribution() for p in self.params.values() if p.name != AGGREGATION}

    def values(self, optuna_params: dict[str, Value]) -> dict[str, Value]:
        """A trial's knobs with their real values, from the study's parameters (those it has)."""
        have = {name: p for name, p in self.params.items() if p.optuna_name in optuna_params}
        return {name: p.value(optuna_params[p.optuna_name]) for name, p in have.items()}

    def optuna_params(self, values: dict[str, Value]) -> dict[str, Value]:
        """The study's parameters for knobs with real values (to queue a trial)."""
        return {p.optuna_name: p.optuna_value(values[name]) for name, p in self.params.items()}

    def suggest(self, trial: optuna.Trial) -> dict[str, Value]:
        """The sampler's knobs for one trial (all but the aggregation)."""
        return {name: p.suggest(trial) for name, p in self.params.items() if name != AGGREGATION}

    @property
    def aggregations(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.params[AGGREGATION].choices)

    def defaults(self) -> dict[str, Value] | None:
        if any(p.default is None for p in self.params.values()):
            return None
        return {name: p.default for name, p in self.params.items()}  # type: ignore[misc]

    @property
    def max_samples(self) -> int:
        return int(self.params["num_samples"].values_max())

    @property
    def max_context(self) -> int:
        return int(self.params["context_length"].values_max())


def _fail(path: Path, key: str, rule: str) -> SweepError:
    return SweepError(f"search space {path}: key {key}: {rule}")


def _number(path: Path, key: str, spec: dict, field: str, integer: bool) -> float | None:
    value = spec.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise _fail(path, f"{key}.{field}", f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise _fail(path, f"{key}.{field}", f"must be finite, got {value!r}")
    return value


def _ordered(name: str, choices: tuple[Value, ...], default: Value | None) -> Param | None:
    """Numeric choices as a knob searched in order: an int knob when they are evenly spaced integers,
    else an ordered (index) knob; None for anything else (strings, booleans, one choice, repeats)."""
    numbers = [c for c in choices if isinstance(c, int | float) and not isinstance(c, bool)]
    if len(numbers) != len(choices) or len(set(choices)) != len(choices) or len(choices) < 2:
        return None
    ordered = tuple(sorted(numbers))
    steps = {b - a for a, b in itertools.pairwise(ordered)}
    if all(isinstance(c, int) for c in ordered) and len(steps) == 1:
        return Param(name, "int", ordered[0], ordered[-1], steps.pop(), default=default)
    return Param(name, ORDERED, choices=ordered, default=default)


def _param(path: Path, name: str, spec: Any) -> Param:
    key = f"params.{name}"
    if not isinstance(spec, dict):
        raise _fail(path, key, "must be a mapping with a 'type'")
    unknown = set(spec) - {"type", "low", "high", "step", "log", "choices", "default"}
    if unknown:
        raise _fail(path, key, f"unknown field(s) {', '.join(sorted(unknown))}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise _fail(path, f"{key}.type", f"must be one of {', '.join(TYPES)}, got {kind!r}")
    default = spec.get("default")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(path, f"{key}.choices", "must be a non-empty list")
        if any(not isinstance(c, int | float | str | bool) for c in choices):
            raise _fail(path, f"{key}.choices", "must hold numbers, strings or booleans")
        if default is not None and default not in choices:
            raise _fail(path, f"{key}.default", f"{default!r} is not one of the choices")
        return _ordered(name, tuple(choices), default) or Param(name, kind, choices=tuple(choices), default=default)
    integer = kind == "int"
    low, high = _number(path, key, spec, "low", integer), _number(path, key, spec, "high", integer)
    step = _number(path, key, spec, "step", integer)
    if low is None or high is None:
        raise _fail(path, key, "needs low and high")
    if low > high:
        raise _fail(path, key, f"low {low} is above high {high}")
    if step is not None and step <= 0:
        raise _fail(path, f"{key}.step", f"must be > 0, got {step}")
    log = bool(spec.get("log", False)) or kind == "log-float"
    if log and low <= 0:
        raise _fail(path, f"{key}.low", "must be > 0 on a log scale")
    if log and step is not None:
        raise _fail(path, f"{key}.step", "cannot be combined with a log scale")
    if kind == "float" and "log" in spec:
        raise _fail(path, f"{key}.log", "use type: log-float for a log-scaled float")
    if default is not None:
        _number(path, key, spec, "default", integer)
        if not low <= default <= high:
            raise _fail(path, f"{key}.default", f"{default} is outside [{low}, {high}]")
    return Param(name, kind, low, high, step, log, default=default)


def _check_finetune_knobs(path: Path, params: dict[str, Param]) -> None:
    """ft_ knobs: known names, a backend that can be fine-tuned, every categorical choice valid on its own;
    MarketGPT's retired fine-tuning knobs name their replacement."""
    from sweeper.finetune.base import FINETUNERS
    from sweeper.finetune.settings import RETIRED, FinetuneSettings

    backend = path.stem
    for p in params.values():
        if p.name in RETIRED:
            raise _fail(path, f"params.{p.name}", f"is no longer a knob: use {RETIRED[p.name]} (README 'Fine-tuning')")
        if not is_finetune_knob(p.name):
            continue
        if backend not in FINETUNERS:
            raise _fail(
                path, f"params.{p.name}", f"{backend} has no fine-tuning (backends with it: {', '.join(FINETUNERS)})"
            )
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            try:
                FinetuneSettings.from_knobs({p.name: value})
            except SweepError as exc:
                raise _fail(path, f"params.{p.name}", str(exc)) from exc


def _check_declared(path: Path, backend: str, params: dict[str, Param]) -> None:
    """Every knob but the fine-tuning ones (checked above) is one the backend declares (`Backend.knobs`),
    and every value the file lets the search try is one it allows: a misspelt or out-of-range knob is
    refused here, not searched, keyed and ignored, nor failed trial by trial."""
    from sweeper.backends import backend_class

    known = declared(backend_class(backend).declared_knobs())
    for p in params.values():
        if is_finetune_knob(p.name):
            continue
        key = f"params.{p.name}"
        if p.name not in known:
            near = difflib.get_close_matches(p.name, known, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise _fail(path, key, f"{backend} has no such knob: {hint}its knobs are {', '.join(known)} and ft_ ones")
        allowed = [*(p.choices or (p.low, p.high)), p.default]
        for value in (v for v in allowed if v is not None):
            why = known[p.name].violation(value)
            if why:
                raise _fail(path, key, f"{value!r} is not allowed for {backend}: {why}")


def _check_knobs(path: Path, params: dict[str, Param]) -> None:
    for name in REQUIRED:
        if name not in params:
            raise _fail(path, f"params.{name}", "is required for every backend")
    ns, ctx = params["num_samples"], params["context_length"]
    for p in (ns, ctx):
        values = p.choices or (p.low, p.high)
        if p.type not in ("int", "categorical", ORDERED) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < (2 if p is ctx else 1) for v in values
        ):
            raise _fail(path, f"params.{p.name}", f"must be integers >= {2 if p is ctx else 1}")
    if ns.values_max() > MAX_SAMPLES:
        raise _fail(path, "params.num_samples", f"at most {MAX_SAMPLES} draws per origin, got {ns.values_max()}")
    _check_finetune_knobs(path, params)
    agg = params["aggregation"]
    if agg.type != "categorical":
        raise _fail(path, "params.aggregation", "must be categorical")
    for choice in agg.choices:
        try:
            parse_aggregation(str(choice))
        except SweepError as exc:
            raise _fail(path, "params.aggregation.choices", str(exc)) from exc


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded, counted in time linear in the file: an alias
    is the same node object, so its size is computed once (a "billion laughs" file is refused at once)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a recursive alias counts once, then PyYAML's constructor deals with it
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        memo[id(node)] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[id(node)]


def _read_yaml(path: Path) -> Any:
    """safe_load, bounded: at most MAX_FILE_BYTES of text expanding to at most MAX_NODES nodes."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SweepError(f"search space {path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SweepError(f"search space {path}: not UTF-8 text") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_NODES:
            raise SweepError(
                f"search space {path}: expands to {size} YAML nodes (aliases included), more than {MAX_NODES}"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SweepError(f"search space {path}: not valid YAML{where}") from exc
    except RecursionError:
        raise SweepError(f"search space {path}: nested too deeply") from None
    finally:
        loader.dispose()


def load_space(backend: str, spaces_dir: Path | None = None) -> Space:
    path = (spaces_dir or SPACES_DIR) / f"{backend}.yaml"
    if not path.is_file():
        raise SweepError(f"search space not found: {path} (one YAML file per backend)")
    doc = _read_yaml(path)
    if not isinstance(doc, dict):
        raise SweepError(f"search space {path}: must be a mapping with keys backend and params")
    unknown = set(doc) - {"backend", "params", "checkpoint"}
    if unknown:
        raise _fail(path, ", ".join(sorted(unknown)), "unknown top-level key")
    if doc.get("backend") != backend:
        raise _fail(path, "backend", f"must be {backend!r} (the file name), got {doc.get('backend')!r}")
    raw = doc.get("params")
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "params", "must be a non-empty mapping of knob names to specs")
    params = {str(name): _param(path, str(name), spec) for name, spec in raw.items()}
    _check_knobs(path, params)
    _check_declared(path, backend, params)
    checkpoint = doc.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise _fail(path, "checkpoint", "must be a hub id or a directory path")
    return Space(backend, path, params, checkpoint)
