"""Shared fixtures: the repository root, gin hygiene, and a small teacher artefact trained once."""

from __future__ import annotations

import os
from pathlib import Path

import gin
import pytest
import torch

import repro.configurables  # noqa: F401  (every gin name, as the CLI registers them)

REPO = Path(__file__).resolve().parent.parent
SMOKE = [REPO / "gin/experiments/digits.gin", REPO / "gin/profiles/smoke.gin"]

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(autouse=True)
def _no_shared_mlflow(tmp_path, monkeypatch):
    # Tests never write into the developer's mlflow.db.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """A digits teacher trained with the smoke profile (about 5 s), without MLflow."""
    from repro import config
    from repro.pipeline import stages

    root = tmp_path_factory.mktemp("teacher")
    config.parse(SMOKE)
    stages.train_teacher(root / "teacher", root / "teacher.json", root / "checkpoints", track=False)
    gin.clear_config()
    return root / "teacher"


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None):
    """Run ``python -m repro.cli ARGS`` in a subprocess, as a user would."""
    import subprocess
    import sys

    merged = {**os.environ, **(env or {})}
    merged.pop("REPRO_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], cwd=cwd, env=merged,
                          capture_output=True, text=True, timeout=300)
