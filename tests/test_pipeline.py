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
    for generated in (target / "reports").iterdir():  # outputs go; the published numbers (an input) stay
        if generated.name != "published_numbers.csv":
            shutil.rmtree(generated) if generated.is_dir() else generated.unlink()
    params = (target / "params.yaml").read_text()
    params = params.replace("profile: default", "profile: smoke").replace("\nseeds: [0, 1, 2]", "\nseeds: [0]")
    assert "teacher_seeds: [0, 1]" in params  # two teachers x one student seed: the cells of the smoke run
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
    # No REPRO_PIPELINE_RUN: the stages find their execution through the `dvc` process above them.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "REPRO_PIPELINE_RUN")}
    env["DVC_NO_ANALYTICS"] = "1"
    result = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    return project, result


def test_dvc_repro_smoke_runs_every_stage(smoke_project) -> None:
    project, result = smoke_project
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("teacher", *[f"{arm}@{m}" for arm in ("distill", "kdci", "control") for m in ("dafl", "dfnd")],
                  "evaluate", "diagnose", "report", "verify", "compare", "ablate", "shift-sweep"):
        assert f"Running stage '{stage}'" in result.stdout
    assert "results: reports/results.md" in result.stdout
    artefacts = [f"models/teachers/seed{t}" for t in (0, 1)] + [
        f"models/{family}/{method}/teacher{t}-seed0" for family in ("students", "kdci", "control")
        for method in ("dafl", "dfnd") for t in (0, 1)]
    for artefact in artefacts:
        for name in ("config.json", "model.safetensors", "operative_config.gin"):
            assert (project / artefact / name).is_file(), f"{artefact}/{name}"
    assert (project / "models/kdci/dafl/teacher0-seed0/confounder_dictionary.safetensors").is_file()
    assert (project / "models/kdci/dfnd/teacher1-seed0/confounder_dictionary.safetensors").is_file()
    # Two teachers of different seeds: different weights, each student records its own.
    teachers = [json.loads((project / f"models/teachers/seed{t}/config.json").read_text()) for t in (0, 1)]
    assert teachers[0]["files"] != teachers[1]["files"]
    student = json.loads((project / "models/students/dafl/teacher1-seed0/config.json").read_text())
    assert student["teacher"]["seed"] == 1 and student["teacher"]["sha256"] == teachers[1]["files"]["model.safetensors"]
    assert "Shift sweep" in (project / "reports/shift_sweep/shift_sweep.md").read_text()
    assert (project / "reports/results.png").stat().st_size > 1000
    assert "The study is off" in (project / "reports/ablations.md").read_text()
    comparison = (project / "reports/paper_comparison.md").read_text()  # stage compare: published numbers + ours
    assert "| ResNet-34 → ResNet-18 | CMI | 94.84" in comparison and "| digits_cnn_large → digits_cnn_small | " in comparison
    diagnostics = json.loads((project / "reports/diagnostics/diagnostics.json").read_text())
    assert len(diagnostics["rows"]) == 8 and len(diagnostics["teachers"]) == 2 and all(0 <= row["shift_score_tv"] <= 1 for row in diagnostics["rows"])
    assert "Substitution-data shift" in (project / "reports/results.md").read_text()
    assert not (project / "checkpoints" / "models").exists() or not any((project / "checkpoints").rglob("*.pt"))


def test_report_is_built_from_the_metrics_files(smoke_project) -> None:
    project, _ = smoke_project
    results = json.loads((project / "reports/results.json").read_text())
    teachers = [json.loads((project / f"metrics/teachers/seed{t}.json").read_text())["top1"] for t in (0, 1)]
    assert [t["top1"] for t in results["teachers"]] == teachers and results["teacher_top1"] == sum(teachers) / 2
    row = next(row for row in results["rows"] if row["method"] == "dafl")
    assert sorted(r["method"] for r in results["rows"]) == ["dafl", "dfnd"]

    def top1(family: str, key: str = "top1") -> list[float]:
        return [json.loads((project / f"metrics/{family}/dafl-teacher{t}-seed0.json").read_text())[key] for t in (0, 1)]

    assert row["method"] == "dafl" and row["seeds"] == [0] and row["teacher_seeds"] == [0, 1]
    assert row["baseline_top1"] == top1("students") and row["kdci_top1"] == top1("kdci")
    assert row["control_top1"] == top1("control")
    assert row["kdci_intervention_off_top1"] == top1("kdci", "intervention_off_top1")
    differences = [k - b for k, b in zip(top1("kdci"), top1("students"))]
    assert row["delta"] == pytest.approx(sum(differences) / 2)
    assert row["delta_ci95"][0] <= row["delta"] <= row["delta_ci95"][1]
    assert f"{row['baseline_mean']:.2f} ± {row['baseline_std']:.2f}" in (project / "reports/results.md").read_text()


def test_mlflow_has_a_run_per_stage_with_params_and_config(smoke_project) -> None:
    from mlflow.tracking import MlflowClient

    project, _ = smoke_project
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdci-repro")
    every = client.search_runs([experiment.experiment_id])
    stages = sorted(run.data.tags["stage"] for run in every)
    assert stages == ["distill"] * 12 + ["evaluate"] * 12 + ["pipeline"] + ["teacher"] * 2
    (parent,) = [run for run in every if run.data.tags["stage"] == "pipeline"]
    runs = [run for run in every if run is not parent]
    # One `dvc repro`, one parent run: every stage process found it through the same dvc ancestor.
    assert parent.data.tags["pipeline_key"].startswith("dvc:") and parent.info.status == "FINISHED"
    assert parent.data.tags["profile"] == "smoke" and parent.info.run_name.startswith("pipeline ")
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in runs)
    # One process per method and arm: both teachers' students of a stage carry its name.
    cells = [f"{family}@{m}" for family in ("distill", "kdci", "control") for m in ("dafl", "dfnd") for _ in (0, 1)]
    assert sorted(run.data.tags["dvc_stage"] for run in runs) == sorted(["teacher"] * 2 + ["evaluate"] * 12 + cells)
    distill_runs = [run for run in runs if run.data.tags["stage"] == "distill"]
    kdci_runs = [run for run in distill_runs if run.data.tags["dvc_stage"].startswith("kdci@")]
    assert all(run.data.tags["kdci"] == "true" for run in kdci_runs)
    assert sorted((run.data.tags["dvc_stage"], run.data.tags["teacher_seed"]) for run in kdci_runs) == [
        ("kdci@dafl", "0"), ("kdci@dafl", "1"), ("kdci@dfnd", "0"), ("kdci@dfnd", "1")]
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
        if run.data.tags["stage"] == "distill":
            assert run.data.tags["pair"] == "digits_cnn_large->digits_cnn_small"
            assert {"final_metrics.json", "substitution"} <= artefacts
            pictures = {item.path for item in client.list_artifacts(run.info.run_id, "substitution")}
            assert {"substitution/epoch_002.png", "substitution/class_proportions.png"} <= pictures
        else:
            assert "test/top1" in run.data.metrics
    baseline = next(run for run in distill_runs if run.data.tags["kdci"] == "false" and run.data.tags["method"] == "dafl")
    assert baseline.data.params["BASE_METHOD/GenerativeDFKD.entropy_weight"] == "20.0"
    assert kdci_runs[0].data.params["KDCI.num_prototypes"] == "16"


def test_second_repro_does_nothing(smoke_project) -> None:
    project, _ = smoke_project
    again = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert "Data and pipelines are up to date" in again.stdout
    assert "Running stage" not in again.stdout


@pytest.fixture(scope="module")
def mlflow_server(smoke_project):
    """What `mlflow ui` shows: a real server on 127.0.0.1 over the store the pipeline wrote."""
    import signal
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
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _post(base: str, path: str, body: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def _pipeline_runs(base: str) -> tuple[str, list[dict]]:
    """The experiment id and its runs, over REST."""
    experiments = _post(base, "/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
    experiment = next(e for e in experiments if e["name"] == "kdci-repro")
    return experiment["experiment_id"], _post(base, "/api/2.0/mlflow/runs/search",
                                              {"experiment_ids": [experiment["experiment_id"]]})["runs"]


def _tag(run: dict, key: str) -> str:
    return next(t["value"] for t in run["data"]["tags"] if t["key"] == key)


def test_mlflow_server_lists_the_runs_over_rest(mlflow_server) -> None:
    import urllib.request

    _, runs = _pipeline_runs(mlflow_server)
    stages = sorted(_tag(run, "stage") for run in runs)
    assert stages == ["distill"] * 12 + ["evaluate"] * 12 + ["pipeline", "teacher", "teacher"]
    with urllib.request.urlopen(mlflow_server + "/", timeout=20) as response:
        assert response.status == 200 and b"<html" in response.read().lower()


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _render(browser: str, url: str, screenshot: Path, profile: Path) -> tuple[str, str]:
    """The page's DOM after its scripts ran (the MLflow UI is a JS app), and its text without tags and
    scripts; a screenshot of it is saved."""
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000",
               f"--screenshot={screenshot}", "--dump-dom", url]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=180).stdout
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S))
    return dom, re.sub(r"\s+", " ", text).replace("&amp;", "&").replace("&gt;", ">")


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium (`apt-get install chromium`; .ci/run "
                    "installs it where it can): the MLflow UI browser check needs one")
def test_mlflow_ui_shows_the_pipeline_its_stage_runs_and_a_substitution_grid(mlflow_server, tmp_path) -> None:
    """The real UI in headless Chromium: the experiment's runs page lists the pipeline's parent run
    and counts every run; the parent's page lists stage runs as its children; a KDCI run's artefact
    page shows its substitution grid. Screenshots are kept in test-artifacts/ ($REPRO_TEST_ARTIFACTS)."""
    experiment_id, runs = _pipeline_runs(mlflow_server)
    (parent,) = [run for run in runs if _tag(run, "stage") == "pipeline"]
    children = [run["info"]["run_name"] for run in runs if run is not parent]
    shots = Path(os.environ.get("REPRO_TEST_ARTIFACTS", REPO / "test-artifacts"))
    shots.mkdir(parents=True, exist_ok=True)
    browser, experiment = _browser(), f"{mlflow_server}/#/experiments/{experiment_id}/runs"
    print(f"screenshots: {shots}/mlflow-ui-*.png")

    _, listing = _render(browser, experiment, shots / "mlflow-ui-runs.png", tmp_path / "profile")
    assert "kdci-repro" in listing and parent["info"]["run_name"] in listing, listing[:2000]
    assert f"{len(runs)} matching runs" in listing, listing[:2000]  # the stage runs are folded under it

    _, page = _render(browser, f"{experiment}/{parent['info']['run_id']}", shots / "mlflow-ui-pipeline-run.png",
                      tmp_path / "profile")
    assert "Child runs" in page and parent["info"]["run_id"] in page, page[:2000]
    shown = [name for name in children if name in page]
    assert len(shown) >= min(10, len(children)), page[:2000]  # the UI lists ten, then "Load more"
    assert len(children) <= 10 or "Load more" in page

    kdci = next(run for run in runs if _tag(run, "dvc_stage") == "kdci@dafl" and _tag(run, "teacher_seed") == "0")
    dom, page = _render(browser, f"{experiment}/{kdci['info']['run_id']}/artifacts/substitution/epoch_002.png",
                        shots / "mlflow-ui-substitution-grid.png", tmp_path / "profile")
    for name in ("class_proportions.png", "epoch_001.png", "confounder_dictionary.safetensors", "final_metrics.json"):
        assert name in page, name
    images = re.findall(r'<img[^>]*alt="substitution/epoch_002.png"[^>]*>', dom)
    assert any('src="blob:' in image for image in images), "the grid image was not shown"
    for shot in ("mlflow-ui-runs.png", "mlflow-ui-pipeline-run.png", "mlflow-ui-substitution-grid.png"):
        assert (shots / shot).stat().st_size > 10_000  # a rendered page, not a blank one


def test_a_refused_params_yaml_stops_dvc_before_it_removes_anything(tmp_path: Path) -> None:
    """DVC removes a stage's outputs before its command runs: stage `params` (repro check-params) runs
    first and refuses, so the teachers and the metrics of the last good run stay, byte for byte."""
    from support.cli_errors import snapshot

    project = tmp_path / "project"
    project.mkdir()
    _clone_work_tree(project)
    good = ("experiment: digits\nprofile: smoke\nteacher_seeds: [0]\nseeds: [0]\nmethods: [dafl]\nstudy: false\n"
            "launcher: \"\"\nteacher: train\n")
    (project / "params.yaml").write_text(good)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "REPRO_PIPELINE_RUN")}
    env["DVC_NO_ANALYTICS"] = "1"

    def repro(*targets: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dvc", "repro", *targets], cwd=project, env=env, capture_output=True, text=True,
                              timeout=600)

    first = repro("evaluate")  # params, teacher, distill/kdci/control@dafl, evaluate
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    kept = {folder: snapshot(project / folder) for folder in ("models/teachers", "metrics")}
    assert any(name.startswith("students/") for name in kept["metrics"]) and "seed0/model.safetensors" in kept["models/teachers"]
    bad = {  # profile for another dataset: the teacher stage would re-run; `methods: []`: stage evaluate would
        "profile: paper-cifar10": ("profile 'paper-cifar10' is for cifar10 experiments",),
        "methods: []": ("methods must be a non-empty list",),
    }
    for change, fragments in bad.items():
        key = change.split(":")[0]
        (project / "params.yaml").write_text(re.sub(rf"^{key}: .*$", change, good, flags=re.M))
        refused = repro()
        assert refused.returncode != 0
        assert "Running stage 'params'" in refused.stdout and refused.stdout.count("Running stage") == 1, refused.stdout
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and all(fragment in errors[0] for fragment in fragments), refused.stderr
        assert {folder: snapshot(project / folder) for folder in kept} == kept, change
    (project / "params.yaml").write_text(good)  # back to the good parameters: nothing to redo
    again = repro("evaluate")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout
