"""Knobs: what each backend can be asked to do, declared next to its code (`Backend.knobs`).

A knob that only a YAML file names is a knob nobody checks: a misspelt `temprature` would be searched,
enter the cache key and be ignored, and an out-of-range value would fail trials one by one in the middle
of a sweep. So each backend declares its knobs (type, allowed values, default, and whether a knob changes
the draws or only how they are scored), `sweeper.space.load_space` checks every key and every value a file allows
against them before anything runs, and the backend fills and checks what it is given through
`Backend.knob_values`, the one place the defaults and rules live. The knobs every backend shares
(`COMMON`) and the fine-tuning knobs (`sweeper.finetune.settings`, one set for every backend that can be
fine-tuned) are declared once, where they are used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sweeper.errors import SweepError

Value = int | float | str | bool
# draws: changes the samples (in the cache key); scoring: applied to the draws after they are made (cached
# draws are re-scored, never redrawn; never keyed). There is no speed-only kind: Toto's samples_per_batch
# was one until a test passed it through and found that it reorders the library's random draws.
Effect = Literal["draws", "scoring"]


@dataclass(frozen=True)
class Knob:
    """One knob: `kind` its type; numbers within [low, high] (`low_open`: low itself excluded), or one of
    `choices` when there are some; `default` what the backend uses when a configuration leaves it out."""

    name: str
    kind: type
    default: Value | None
    effect: Effect = "draws"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[Value, ...] = ()
    doc: str = ""

    def violation(self, value: Any) -> str | None:
        """Why `value` is not allowed (one clause), or None."""
        if self.choices:  # true is not 1 here, as it is to Python's ==
            same = any(c == value and isinstance(c, bool) == isinstance(value, bool) for c in self.choices)
            return None if same else f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
        if self.kind is str:
            return None if isinstance(value, str) else f"must be a string, got {value!r}"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (self.kind is int and not float(value).is_integer()) or not math.isfinite(value):
            return f"must be {'an integer' if self.kind is int else 'a number'}, got {value!r}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}, got {value!r}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}, got {value!r}"
        return None


COMMON = (
    Knob("num_samples", int, None, effect="scoring", low=1, doc="draws per origin (any first n of more are n)"),
    Knob("aggregation", str, None, effect="scoring", doc="how draws become a point forecast"),
    Knob("context_length", int, None, low=2, doc="bars each forecast sees"),
)


# Token samplers' knobs (Kronos, MarketGPT): declared once, a backend changes only a default
TEMPERATURE = Knob("temperature", float, 1.0, low=0, low_open=True, doc="divides the logits before sampling")
TOP_K = Knob("top_k", int, 0, low=0, doc="sample among the k likeliest tokens; 0: off")
TOP_P = Knob("top_p", float, 1.0, low=0, low_open=True, high=1, doc="nucleus sampling; 1: off")


def declared(knobs: tuple[Knob, ...]) -> dict[str, Knob]:
    return {k.name: k for k in knobs}


def knob_values(owner: str, knobs: tuple[Knob, ...], given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` with every declared knob's default filled in, checked: an unknown or out-of-range knob is
    one error naming it (for configurations that did not come through `load_space`, e.g. a JSON config)."""
    known = declared(knobs)
    out: dict[str, Any] = {k.name: k.default for k in knobs if k.default is not None}
    for name, value in given.items():
        if name not in known:
            raise SweepError(f"{owner} has no knob {name!r} (its knobs: {', '.join(known)})")
        why = known[name].violation(value)
        if why:
            raise SweepError(f"{owner} knob {name} {why}")
        out[name] = value if known[name].choices else known[name].kind(value)
    return out
