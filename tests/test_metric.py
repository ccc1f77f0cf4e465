"""One Metric object decides direction everywhere: ranking, skill, 'beats', regressions."""

from __future__ import annotations

import numpy as np

from sweeper import metrics
from sweeper.compare import paired_bootstrap
from sweeper.metric import NAMES, get
from sweeper.select import BEATS_NAIVE, BEST, choose


def test_every_scored_metric_is_registered() -> None:
    rng = np.random.default_rng(0)
    samples = 100 + rng.normal(size=(4, 20, 2))
    out = metrics.score(
        samples, samples.mean(axis=1), metrics.truth(100 + rng.normal(size=(4, 2)), np.full(4, 100.0), 1.0), 0.0
    )
    assert tuple(out) == NAMES


def test_skill_is_positive_when_a_is_better_whatever_the_direction() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.4, 0.6, size=300)
    da = get("directional_accuracy")
    better = paired_bootstrap(base + 0.1, base, da.name)  # higher accuracy is better
    assert da.skill(better) > 0 and da.beats(better)
    crps = get("crps")
    lower = paired_bootstrap(base - 0.1, base, crps.name)
    assert crps.skill(lower) > 0 and crps.beats(lower) and not crps.beats(paired_bootstrap(base + 0.1, base, "crps"))
    assert da.worse(0.55, 0.50, 0.01) and not da.worse(0.55, 0.60, 0.01)
    assert crps.worse(1.0, 1.1, 0.01) and not crps.worse(1.0, 0.9, 0.01)
    assert da.best({"a": 0.5, "b": 0.6, "c": float("nan")}) == ["b", "a", "c"]
    assert crps.best({"a": 0.5, "b": 0.6, "c": float("nan")}) == ["a", "b", "c"]


def test_beats_naive_keeps_naive_unless_beaten_beyond_noise() -> None:
    rng = np.random.default_rng(2)
    naive = rng.gamma(2.0, size=400)
    noise = rng.normal(scale=0.3, size=400)
    noise -= noise.mean()
    val = {"naive": naive, "close": naive - 0.005 + noise, "clear": naive - 0.3 + noise}
    m = get("crps")
    # `close` has the best mean but its edge is within noise: best picks it, beats-naive does not
    assert choose(BEST, ["close", "naive"], val, "naive", m, 1, 0)[0] == "close"
    chosen, why = choose(
        BEATS_NAIVE, m.best({k: v.mean() for k, v in val.items() if k != "clear"}), val, "naive", m, 1, 0
    )
    assert chosen == "naive" and "no candidate beats it" in why
    ranked = m.best({k: v.mean() for k, v in val.items()})
    assert choose(BEATS_NAIVE, ranked, val, "naive", m, 1, 0)[0] == "clear"


def test_beats_naive_follows_the_metric_direction() -> None:
    rng = np.random.default_rng(3)
    naive = np.full(300, 0.5)
    val = {"naive": naive, "up": naive + 0.1 + rng.normal(scale=0.2, size=300), "down": naive - 0.1}
    m = get("directional_accuracy")
    assert choose(BEATS_NAIVE, m.best({k: v.mean() for k, v in val.items()}), val, "naive", m, 1, 0)[0] == "up"
    del val["up"]
    assert choose(BEATS_NAIVE, ["naive", "down"], val, "naive", m, 1, 0)[0] == "naive"
