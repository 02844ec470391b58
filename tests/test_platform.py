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
    # This process imported torch before any pin: the record says the mode is not in force, and why.
    assert record["reproducible"] is False and "not in force" in record["reproducible_note"]
    assert isinstance(record["pins"], str)


def test_a_pinned_process_records_the_pins_and_what_torch_dispatches_to() -> None:
    """What `repro <verb>` records: the pins in force, and torch's actual capability under them."""
    import json
    import subprocess
    import sys

    from repro import reproducible

    clean = {k: v for k, v in os.environ.items() if k not in reproducible.ISA_PINS and k != reproducible.SWITCH}
    code = ("import json\nfrom repro import reproducible\nreproducible.apply()\nimport torch\n"
            "from repro.train.device import platform_record\nprint(json.dumps(platform_record()))")
    done = subprocess.run([sys.executable, "-c", code], check=False, env={**clean, "REPRO_THREADS": "2"}, capture_output=True,
                          text=True, timeout=300)
    record = json.loads(done.stdout)
    assert record["reproducible"] is True and record["threads"] == 2
    for name, value in reproducible.ISA_PINS.items():
        assert f"{name}={value}" in record["pins"]
    assert record["cpu_capability"] in ("AVX2", "DEFAULT")  # AVX2, or lower on a CPU without it
    assert all(isinstance(value, (str, int, bool)) for value in record.values())  # flat: MLflow tags carry it


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
