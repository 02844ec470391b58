"""End to end: `dvc repro` on the smoke profile in a temporary git clone, with a real MLflow store."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO


def _clone_work_tree(target: Path) -> None:
    """The repository as it stands (tracked and new, unignored files), committed in a new repo."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for stale in ("dvc.lock",):
        (target / stale).unlink(missing_ok=True)
    shutil.rmtree(target / "metrics", ignore_errors=True)
    shutil.rmtree(target / "reports", ignore_errors=True)
    params = (target / "params.yaml").read_text()
    params = params.replace("profile: default", "profile: smoke").replace("seeds: [0, 1, 2]", "seeds: [0, 1]")
    # One generation-based and one sampling-based method keep the test fast and cover both families.
    params = re.sub(r"^methods: .*$", "methods: [dafl, dfnd]", params, flags=re.M)
    (target / "params.yaml").write_text(params)
    identity = ["-c", "user.name=kdci-repro tests", "-c", "user.email=tests@kdci-repro.invalid"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", *identity, "commit", "-qm", "snapshot"]):
        subprocess.run(command, cwd=target, check=True, capture_output=True)


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    project = tmp_path_factory.mktemp("project")
    _clone_work_tree(project)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["DVC_NO_ANALYTICS"] = "1"
    result = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    return project, result


def test_dvc_repro_smoke_runs_every_stage(smoke_project) -> None:
    project, result = smoke_project
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = [f"{m}-{s}" for m in ("dafl", "dfnd") for s in (0, 1)]
    for stage in ("teacher", *[f"distill@{c}" for c in cells], *[f"kdci@{c}" for c in cells], "evaluate", "diagnose",
                  "report", "ablate", "shift-sweep"):
        assert f"Running stage '{stage}'" in result.stdout
    assert "results: reports/results.md" in result.stdout
    artefacts = ["models/teacher"] + [f"models/{family}/{method}/seed{seed}" for family in ("students", "kdci")
                                      for method in ("dafl", "dfnd") for seed in (0, 1)]
    for artefact in artefacts:
        for name in ("config.json", "model.safetensors", "operative_config.gin"):
            assert (project / artefact / name).is_file(), f"{artefact}/{name}"
    assert (project / "models/kdci/dafl/seed0/confounder_dictionary.safetensors").is_file()
    assert (project / "models/kdci/dfnd/seed1/confounder_dictionary.safetensors").is_file()
    assert "Shift sweep" in (project / "reports/shift_sweep/shift_sweep.md").read_text()
    assert (project / "reports/results.png").stat().st_size > 1000
    assert "Ablations are off" in (project / "reports/ablations.md").read_text()
    diagnostics = json.loads((project / "reports/diagnostics/diagnostics.json").read_text())
    assert len(diagnostics["rows"]) == 8 and all(0 <= row["shift_score_tv"] <= 1 for row in diagnostics["rows"])
    assert "Substitution-data shift" in (project / "reports/results.md").read_text()
    assert not (project / "checkpoints" / "models").exists() or not any((project / "checkpoints").rglob("*.pt"))


def test_report_is_built_from_the_metrics_files(smoke_project) -> None:
    project, _ = smoke_project
    results = json.loads((project / "reports/results.json").read_text())
    teacher = json.loads((project / "metrics/teacher.json").read_text())
    assert results["teacher_top1"] == teacher["top1"]
    row = next(row for row in results["rows"] if row["method"] == "dafl")
    assert sorted(r["method"] for r in results["rows"]) == ["dafl", "dfnd"]

    def top1(family: str, key: str = "top1") -> list[float]:
        return [json.loads((project / f"metrics/{family}/dafl-seed{seed}.json").read_text())[key] for seed in (0, 1)]

    assert row["method"] == "dafl" and row["seeds"] == [0, 1]
    assert row["baseline_top1"] == top1("students") and row["kdci_top1"] == top1("kdci")
    assert row["kdci_backbone_top1"] == top1("kdci", "backbone_top1")
    differences = [k - b for k, b in zip(top1("kdci"), top1("students"))]
    assert row["delta"] == pytest.approx(sum(differences) / 2)
    assert row["delta_ci95"][0] <= row["delta"] <= row["delta_ci95"][1]
    assert f"{row['baseline_mean']:.2f} ± {row['baseline_std']:.2f}" in (project / "reports/results.md").read_text()


def test_mlflow_has_a_run_per_stage_with_params_and_config(smoke_project) -> None:
    from mlflow.tracking import MlflowClient

    project, _ = smoke_project
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdci-repro")
    runs = client.search_runs([experiment.experiment_id])
    stages = sorted(run.data.tags["stage"] for run in runs)
    assert stages == ["distill"] * 8 + ["evaluate"] * 8 + ["teacher"]
    kdci_runs = [run for run in runs if run.data.tags.get("kdci") == "true"]
    assert sorted(run.data.tags["dvc_stage"] for run in kdci_runs) == ["kdci@dafl-0", "kdci@dafl-1", "kdci@dfnd-0",
                                                                        "kdci@dfnd-1"]
    for run in kdci_runs:
        assert "confounder_dictionary.safetensors" in {i.path for i in client.list_artifacts(run.info.run_id)}
        entropy = client.get_metric_history(run.info.run_id, "student/kdci/attention_entropy")
        assert entropy and all(0 <= point.value <= 2.8 for point in entropy)  # log(16) = 2.77
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["profile"] == "smoke" and run.data.tags["git_commit"] != "unknown"
        assert run.data.params, "operative gin bindings are logged as params"
        artefacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert "parsed_config.gin" in artefacts
        if run.data.tags["stage"] in ("teacher", "distill"):
            assert {"operative_config.gin", "config.json"} <= artefacts
            history = client.get_metric_history(run.info.run_id, "student/loss")
            assert len(history) >= 2  # one point per epoch
        else:
            assert "test/top1" in run.data.metrics
    baseline = next(run for run in runs if run.data.tags.get("kdci") == "false" and run.data.tags["method"] == "dafl")
    assert baseline.data.params["BASE_METHOD/GenerativeDFKD.entropy_weight"] == "20.0"
    assert kdci_runs[0].data.params["KDCI.num_prototypes"] == "16"


def test_second_repro_does_nothing(smoke_project) -> None:
    project, _ = smoke_project
    again = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert "Data and pipelines are up to date" in again.stdout
    assert "Running stage" not in again.stdout


def test_mlflow_server_lists_the_runs_over_rest(smoke_project) -> None:
    """What `mlflow ui` shows: a real server on 127.0.0.1 over the store the pipeline wrote."""
    import json as jsonlib
    import socket
    import sys
    import time
    import urllib.request

    project, _ = smoke_project
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}"],
                              cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow server did not answer /health")
                time.sleep(1)

        def post(path: str, body: dict) -> dict:
            request = urllib.request.Request(f"{base}{path}", data=jsonlib.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=20) as response:
                return jsonlib.loads(response.read())

        experiments = post("/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
        experiment = next(e for e in experiments if e["name"] == "kdci-repro")
        runs = post("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        stages = sorted(next(t["value"] for t in run["data"]["tags"] if t["key"] == "stage") for run in runs)
        assert stages == ["distill"] * 8 + ["evaluate"] * 8 + ["teacher"]
        with urllib.request.urlopen(base + "/", timeout=20) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        import os
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
