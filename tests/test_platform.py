"""Every artefact and MLflow run names the platform that computed it: on the CPU the last bits of a
result depend on the instruction set torch dispatches to and on the thread count."""

from __future__ import annotations

import os
from pathlib import Path

import gin
import torch
from mlflow.tracking import MlflowClient

from conftest import SMOKE
from repro import artefact, config
from repro.pipeline import stages
from repro.train.device import platform_record


def test_platform_record_names_what_decides_the_bits() -> None:
    record = platform_record(torch.device("cpu"))
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == torch.get_num_threads() and record["torch"] == torch.__version__
    assert record["cpu"] and record["machine"] and record["mkl"] and record["onednn"]
    assert "gpu" not in record


def test_artefact_and_run_carry_the_platform(teacher_dir: Path, tmp_path: Path) -> None:
    recorded = artefact.read_config(teacher_dir).platform
    assert recorded == platform_record(torch.device("cpu"))
    config.parse(SMOKE)
    stages.evaluate(teacher_dir, tmp_path / "teacher.json", track=True)
    gin.clear_config()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [run] = client.search_runs([client.get_experiment_by_name("kdci-repro").experiment_id],
                               "tags.stage = 'evaluate'")
    assert run.data.tags["platform.cpu_capability"] == recorded["cpu_capability"]
    assert run.data.tags["platform.threads"] == str(recorded["threads"])
