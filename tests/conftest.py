from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeper.cli import app, expand_list_options
from tests.helpers import SHARED_LAKE

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def sweep(tmp_path: Path) -> Callable[..., object]:
    """Run the CLI in-process: sweep("run", "--symbols", ...) -> click Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def call(*args: str):
        return runner.invoke(app, expand_list_options([str(a) for a in args]), catch_exceptions=False)

    return call


@pytest.fixture
def small_lake(tmp_path: Path) -> Path:
    """A copy of a few real series from the shared lake, safe to corrupt."""
    root = tmp_path / "lake"
    for rel in ("asset_class=crypto/freq=1d/symbol=ETHUSD", "asset_class=crypto/freq=1d/symbol=BTCUSD"):
        shutil.copytree(SHARED_LAKE / rel, root / rel)
    return root
