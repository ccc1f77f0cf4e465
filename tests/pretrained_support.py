"""Test support for the pretrained-model backends (Toto, Moirai, Moirai 2): hub-id loading without a network."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY_MODULES = ("torch", "toto", "uni2ts", "lightning", "gluonts")


def fake_hub_cache(root: Path, repo_id: str, checkpoint: Path) -> None:
    """Lay a local checkpoint out as huggingface_hub caches a downloaded repo (refs/main -> snapshot)."""
    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoint / name, snapshot / name)


def use_hub_cache(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Offline, with `root` as the hub cache (huggingface_hub reads both settings when it is imported)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def assert_imports_stay_light(module: str) -> None:
    """Importing the CLI, the registry and the backend module loads no model library."""
    code = (
        f"import sys, sweeper.cli, sweeper.backends, {module}; "
        f"print(','.join(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "", f"importing {module} loaded {done.stdout.strip()}"
