"""What every model backend shares: `sweep models init` writes what the backend loads, a hub id loads through
the same path as a local directory, and an uncached hub id offline fails at once with one clear line."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sweeper.backends import backend_class
from sweeper.errors import SweepError
from tests.pretrained_support import fake_hub_cache, use_hub_cache

pytestmark = pytest.mark.slow

# the torch module each single-checkpoint backend keeps, to compare weights loaded two ways
MODULES: dict[str, Callable[[Any], Any]] = {
    "toto": lambda b: b._forecaster.model,
    "moirai": lambda b: b._module,
    "moirai2": lambda b: b._module,
}


@pytest.mark.parametrize("name", ["toto", "moirai", "moirai2", "kronos"])
def test_sweep_models_init_writes_a_checkpoint_the_backend_loads(name: str, sweep, tmp_path: Path) -> None:
    result = sweep("models", "init", name, "--preset", "tiny", "--out", tmp_path / "ck")
    assert result.exit_code == 0, result.output
    assert backend_class(name)(str(tmp_path / "ck"), "cpu").checkpoint == str(tmp_path / "ck")


@pytest.mark.parametrize("name", list(MODULES))
def test_hub_id_loads_through_the_same_path_as_a_directory(name: str, tmp_path: Path, monkeypatch) -> None:
    cls = backend_class(name)
    tiny = cls.init_checkpoint("tiny", tmp_path / "tiny")
    fake_hub_cache(tmp_path / "hub", cls.default_checkpoint, tiny)
    use_hub_cache(monkeypatch, tmp_path / "hub")
    hub, local = cls(None, "auto"), cls(str(tiny), "cpu")
    assert hub.checkpoint == cls.default_checkpoint and str(hub.device) == "cpu"
    a, b = MODULES[name](hub).state_dict(), MODULES[name](local).state_dict()
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert not MODULES[name](hub).training


@pytest.mark.parametrize("name", ["toto", "moirai", "moirai2", "kronos"])
def test_offline_hub_id_fails_at_once_with_one_clear_line(name: str, tmp_path: Path, monkeypatch) -> None:
    cls = backend_class(name)
    use_hub_cache(monkeypatch, tmp_path)  # an empty cache
    start = time.perf_counter()
    with pytest.raises(SweepError) as err:
        cls(None, "cpu")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg
    for part in (
        cls.default_checkpoint,
        f"--checkpoint {name}=PATH",
        f"search_spaces/{name}.yaml",
        f"models init {name}",
    ):
        assert part in msg
