"""The MLflow record a reviewer audits: pipeline parent runs, substitution-data artefacts, per-epoch
loss terms and `repro audit` (faulty stores: tests/test_tracking_faults.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import gin
import numpy
import pytest
import torch

from conftest import REPO
from repro import cli, config
from repro.data.datasets import DataSpec
from repro.pipeline import stages
from repro.tracking import runs as tracking

DIGITS, SMOKE_PROFILE = REPO / "gin/experiments/digits.gin", REPO / "gin/profiles/smoke.gin"
KDCI_DAFL = [DIGITS, REPO / "gin/methods/dafl.gin", REPO / "gin/kdci.gin", SMOKE_PROFILE]
# Small enough for a few seconds; two epochs, so the dictionary (warm-up 1) exists in the second.
SMALL = ["DISTILL_EPOCHS = 2", "STUDENT_STEPS = 5", "KDCI.dictionary_samples = 128", "KDCI.num_prototypes = 4",
         "KDCI.pca_dim = 8", "distill.substitution_sample_size = 256"]


def _distill(teacher_dir: Path, out: Path, track: bool, files=KDCI_DAFL, bindings=()) -> Path:
    config.parse(files, SMALL + list(bindings))
    try:
        return stages.distill(teacher_dir, out, out.parent / f"{out.name}-ckpt", track=track)
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def recorded(teacher_dir: Path, tmp_path_factory) -> SimpleNamespace:
    """One KDCI distillation and its evaluation, recorded as two stages of one pipeline execution."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("recorded")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow puts artefacts under ./mlruns: not into the checkout
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv(tracking.PIPELINE_ENV, "test-execution-1")
        patch.setenv("DVC_STAGE", "kdci@dafl-0")
        out = _distill(teacher_dir, root / "kdci", track=True)
        patch.setenv("DVC_STAGE", "evaluate")
        config.parse([DIGITS, SMOKE_PROFILE])
        stages.evaluate(out, root / "kdci.json", track=True)
        gin.clear_config()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = {run.data.tags["stage"]: run for run in client.search_runs([experiment.experiment_id])}
    return SimpleNamespace(root=root, uri=uri, out=out, metrics=root / "kdci.json", client=client, runs=runs,
                           experiment_id=experiment.experiment_id)


# --- 1. one parent run per pipeline execution ------------------------------------------------------

def test_stage_runs_of_one_execution_nest_under_one_parent(recorded) -> None:
    assert sorted(recorded.runs) == ["distill", "evaluate", "pipeline"]
    parent, distill, evaluate = (recorded.runs[name] for name in ("pipeline", "distill", "evaluate"))
    for child in (distill, evaluate):
        assert child.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert child.data.tags[tracking.PIPELINE_KEY_TAG] == "test-execution-1"
    tags = parent.data.tags
    assert tags[tracking.PIPELINE_KEY_TAG] == "test-execution-1" and tags["profile"] == "smoke"
    assert tags["experiment"] == "digits" and tags["git_commit"] == distill.data.tags["git_commit"]
    assert parent.info.run_name.startswith(f"pipeline {tags['git_commit'][:7]} ")
    assert parent.info.status == "FINISHED"
    assert distill.data.tags["dvc_stage"] == "kdci@dafl-0" and evaluate.data.tags["dvc_stage"] == "evaluate"
    for child in (distill, evaluate):
        assert child.data.tags["pair"] == "digits_cnn_large->digits_cnn_small"
        assert child.data.tags["method"] == "dafl+kdci" and child.data.tags["kdci"] == "true"
        assert child.data.tags["command"]


def test_parent_is_found_by_key_and_a_failed_stage_fails_it(recorded, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", recorded.uri)
    tags = {"stage": "evaluate", "git_commit": "abc1234def", "profile": "smoke", "experiment": "digits"}
    same = tracking.MlflowTracker("again", tags, recorded.uri, pipeline="test-execution-1")
    same.finish()
    assert same.parent_id == recorded.runs["pipeline"].info.run_id
    failing = tracking.MlflowTracker("breaks", tags, recorded.uri, pipeline="test-execution-2")
    assert failing.parent_id != same.parent_id  # another execution: another parent
    failing.finish(failed=True)
    after = tracking.MlflowTracker("after", tags, recorded.uri, pipeline="test-execution-2")
    after.finish()
    assert recorded.client.get_run(failing.parent_id).info.status == "FAILED"  # stays failed
    monkeypatch.delenv(tracking.PIPELINE_ENV, raising=False)
    alone = tracking.open_tracker("standalone", tags)  # pytest has no dvc ancestor: no parent
    alone.finish()
    assert tracking.PARENT_TAG not in recorded.client.get_run(alone.run_id).data.tags
    for run_id in (same.run_id, failing.run_id, after.run_id, alone.run_id, failing.parent_id):
        recorded.client.delete_run(run_id)


def test_concurrent_first_stages_create_one_parent(recorded) -> None:
    """Queue workers of one execution starting together must share one parent run."""
    from mlflow.tracking import MlflowClient

    uri = recorded.uri
    experiment_id = MlflowClient(uri).create_experiment("race")
    barrier, found, errors = threading.Barrier(4), [], []

    def first_stage() -> None:
        try:
            client = MlflowClient(uri)
            barrier.wait()
            found.append(tracking.pipeline_parent(client, uri, experiment_id, "raced", {"git_commit": "c0ffee"}))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=first_stage) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(found) == 4
    assert len(set(found)) == 1
    assert len(MlflowClient(uri).search_runs([experiment_id])) == 1


def test_execution_key_is_the_nearest_dvc_ancestor(tmp_path) -> None:
    """A stage under `dvc` gets that dvc process's pid + start time; two executions differ; a
    process without a dvc ancestor gets none; REPRO_PIPELINE_RUN wins."""
    probe = "from repro.tracking.runs import pipeline_key; print(pipeline_key())"
    fake_dvc = tmp_path / "dvc"  # a script named dvc: its process's comm is "dvc", like the real one
    fake_dvc.write_text(f'#!/bin/sh\necho "$$"\n"{sys.executable}" -c "{probe}"\necho done\n')
    fake_dvc.chmod(0o755)
    env = {k: v for k, v in __import__("os").environ.items() if k != tracking.PIPELINE_ENV}

    def under_dvc() -> tuple[str, str]:
        pid, key, _ = subprocess.run([str(fake_dvc)], env=env, capture_output=True, text=True, check=True,
                                     timeout=60).stdout.split("\n", 2)
        return pid, key

    (pid1, key1), (pid2, key2) = under_dvc(), under_dvc()
    assert key1.startswith("dvc:") and key1.split(":")[2] == pid1 and key2.split(":")[2] == pid2
    assert key1 != key2
    alone = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert alone.stdout.strip() == "None"
    named = subprocess.run([str(fake_dvc)], env={**env, tracking.PIPELINE_ENV: "ci-build-42"}, capture_output=True,
                           text=True, timeout=60)
    assert named.stdout.split("\n")[1] == "ci-build-42"


# --- 2. artefacts and per-epoch metrics --------------------------------------------------------------

def _artefacts(recorded, run) -> set[str]:
    def walk(path=None):
        for item in recorded.client.list_artifacts(run.info.run_id, path):
            yield from walk(item.path) if item.is_dir else [item.path]
    return set(walk())


def test_distillation_run_logs_grids_class_proportions_dictionary_and_final_metrics(recorded) -> None:
    from PIL import Image
    from safetensors.torch import load_file

    run = recorded.runs["distill"]
    artefacts = _artefacts(recorded, run)
    assert {"substitution/epoch_001.png", "substitution/epoch_002.png", "substitution/class_proportions.png",
            "substitution/class_proportions.json", "confounder_dictionary.safetensors",
            "final_metrics.json"} <= artefacts
    folder = Path(recorded.client.download_artifacts(run.info.run_id, "substitution", str(recorded.root / "dl")))
    with Image.open(folder / "epoch_002.png") as grid:  # 64 digits (8x8, enlarged 4x) in 8 columns, padding 2
        assert grid.size == (8 * 32 + 9 * 2, 8 * 32 + 9 * 2)
    shares = json.loads((folder / "class_proportions.json").read_text())
    predictions = load_file(str(recorded.out / "substitution_sample.safetensors"))["predictions"]
    expected = torch.bincount(predictions, minlength=10).double() / len(predictions)
    assert shares["proportions"] == pytest.approx(expected.tolist()) and shares["count"] == 256
    assert run.data.metrics["substitution/class_tv_to_uniform"] == pytest.approx(shares["tv_to_uniform"])
    final = json.loads(Path(recorded.client.download_artifacts(run.info.run_id, "final_metrics.json",
                                                               str(recorded.root / "dl"))).read_text())
    assert final["mlflow_run_id"] == run.info.run_id and final["epoch"] == 2
    assert final["student/kdci/attention_entropy"] == pytest.approx(run.data.metrics["student/kdci/attention_entropy"])


def test_runs_carry_mlflow_system_tags_a_description_and_the_start_up_time(recorded) -> None:
    """What the MLflow UI shows without opening a run: user, source, version, a description, and an
    experiment that opens in the model-training view (not the GenAI "Evaluation runs" view)."""
    experiment = recorded.client.get_experiment(recorded.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    run = recorded.runs["distill"]
    tags = run.data.tags
    assert tags["mlflow.source.name"] == " ".join(tags["command"].split()[:2])  # `repro distill` from the CLI
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    if tags["git_commit"] != "unknown":
        assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    note = tags["mlflow.note.content"]
    assert note.startswith("Stage `distill` (method dafl+kdci, kdci true") and tags["command"] in note
    assert 0 < run.data.metrics["startup_seconds"] < 600  # process age at the first training step


def test_an_older_experiment_gets_the_training_view_tag(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment(tracking.EXPERIMENT, artifact_location=(tmp_path / "mlruns").as_uri())  # no kind tag
    tracker = tracking.MlflowTracker("run", {"stage": "evaluate", "command": "repro evaluate"}, uri)
    tracker.finish()
    assert client.get_experiment_by_name(tracking.EXPERIMENT).tags[tracking.EXPERIMENT_KIND_TAG] == \
        "custom_model_development"


def test_every_loss_term_is_logged_per_epoch(recorded) -> None:
    run_id = recorded.runs["distill"].info.run_id
    every_epoch = ["student/loss", "student/kd", "student/teacher_agreement", "synthesis/generator_loss",
                   "synthesis/onehot", "synthesis/activation", "synthesis/information_entropy",
                   "synthesis/bn_statistics", "synthesis/adversarial"]
    for name in every_epoch:
        assert [point.step for point in recorded.client.get_metric_history(run_id, name)] == [1, 2], name
    entropy = recorded.client.get_metric_history(run_id, "student/kdci/attention_entropy")
    assert [point.step for point in entropy] == [2]  # from the epoch the dictionary exists
    assert 0 <= entropy[0].value <= torch.log(torch.tensor(4.0)).item() + 1e-6  # N = 4 prototypes
    assert recorded.client.get_metric_history(run_id, "student/kdci/prototype_usage/03")


def test_grids_do_not_change_what_is_trained(recorded, teacher_dir, tmp_path) -> None:
    """Drawing the grids (tracking on) must not move the RNG: same weights, dictionary and sample."""
    untracked = _distill(teacher_dir, tmp_path / "untracked", track=False)
    def trained(folder: Path) -> dict[str, str]:  # the operative config differs: tracking reads run_tags
        return {k: v for k, v in json.loads((folder / "config.json").read_text())["files"].items()
                if k != "operative_config.gin"}

    assert set(trained(untracked)) >= {"model.safetensors", "confounder_dictionary.safetensors",
                                       "substitution_sample.safetensors"}
    assert trained(untracked) == trained(recorded.out)


def test_image_grid_denormalises_with_the_data_spec(tmp_path) -> None:
    from PIL import Image

    from repro.pipeline.substitution_views import class_proportions, save_image_grid

    spec = DataSpec("toy", 3, 3, 4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    pixels = torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    path = save_image_grid(spec.normalize(pixels), spec, tmp_path / "grid.png", columns=2, min_side=8)
    with Image.open(path) as image:
        grid = torch.from_numpy(numpy.asarray(image.convert("RGB")).copy())  # [H, W, 3]
    assert tuple(grid.shape[:2]) == (12, 22)  # 2 tiles of 8x8 (4x4 enlarged 2x), padding 2
    first, second = grid[2:10:2, 2:10:2], grid[2:10:2, 12:20:2]  # one pixel per enlarged block
    assert torch.allclose(first.permute(2, 0, 1).float(), (pixels[0] * 255).round(), atol=1)
    assert torch.allclose(second.permute(2, 0, 1).float(), (pixels[1] * 255).round(), atol=1)
    summary = class_proportions(torch.tensor([0, 0, 1, 3]), 4)
    assert summary["proportions"] == [0.5, 0.25, 0.0, 0.25] and summary["tv_to_uniform"] == pytest.approx(0.25)


# --- 3. a store that cannot be used or fails mid-run: tests/test_tracking_faults.py ---------------------

# --- 4. repro audit -----------------------------------------------------------------------------------

def test_audit_finds_the_run_that_wrote_a_metrics_json_by_its_bytes(recorded, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", recorded.uri)
    metrics = json.loads(recorded.metrics.read_text())
    evaluate, distill = recorded.runs["evaluate"], recorded.runs["distill"]
    assert "mlflow_run_id" not in metrics  # the run is found by the file's sha256, not named in it
    sha = hashlib.sha256(recorded.metrics.read_bytes()).hexdigest()
    assert evaluate.data.tags["metrics_file"] == str(recorded.metrics)
    assert evaluate.data.tags["metrics_sha256"] == sha
    assert cli.main(["audit", str(recorded.metrics)]) == 0
    text = capsys.readouterr().out
    assert f"sha256 {sha}: these exact bytes were written by this run" in text
    assert "runs wrote these exact bytes" not in text  # one writer
    sha = json.loads((recorded.out / "config.json").read_text())["files"]["model.safetensors"]
    teacher_sha = json.loads((recorded.out / "config.json").read_text())["teacher"]["sha256"]
    for expected in (evaluate.info.run_id, "evaluate-dafl+kdci-teacher0-seed0", recorded.runs["pipeline"].info.run_id,
                     evaluate.data.tags["git_commit"], f"student sha256 {sha}", f"teacher sha256 {teacher_sha}",
                     f"trained by run {distill.info.run_id}", "alias teacher0-seed0", "dvc stage kdci@dafl-0",
                     f"top1 {metrics['top1']} matches", "kdci.json", "evaluate.dataset = %DATASET"):
        assert expected in text, expected
    assert cli.main(["audit", distill.info.run_id]) == 0
    text = capsys.readouterr().out
    for expected in ("distill-dafl+kdci-teacher0-seed0", "FINISHED", "dvc stage      kdci@dafl-0",
                     f"command        {distill.data.tags['command']}",
                     "uncommitted changes:", "KDCI.num_prototypes = 4", "student/kdci/attention_entropy = ",
                     "substitution/epoch_002.png", "confounder_dictionary.safetensors", "final_metrics.json",
                     f"student sha256 {sha}", "registered     digits-digits_cnn_large-digits_cnn_small-dafl-kdci "
                     "version 1, alias teacher0-seed0", "pair=digits_cnn_large->digits_cnn_small"):
        assert expected in text, expected


def test_audit_of_an_unknown_run_or_a_file_without_one_is_one_error_line(recorded, tmp_path, monkeypatch,
                                                                          capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", recorded.uri)
    untracked = tmp_path / "untracked.json"
    untracked.write_text(json.dumps({"top1": 50.0}))  # no run in the store wrote these bytes or this path
    for reference in ("0123456789abcdef0123456789abcdef", str(untracked), "not-a-run"):
        assert cli.main(["audit", reference]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
        assert captured.err.startswith("error: ")


@pytest.fixture(scope="module")
def rerun(recorded, tmp_path_factory) -> SimpleNamespace:
    """The recorded student evaluated twice with tracking on, into one metrics file given as a relative
    path (as dvc.yaml gives it), in a store of its own; the first file's bytes are kept aside."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("rerun")
    uri, relative = f"sqlite:///{root / 'mlflow.db'}", Path("metrics/kdci/dafl-teacher0-seed0.json")
    written = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv(tracking.PIPELINE_ENV, raising=False)
        patch.delenv("DVC_STAGE", raising=False)
        for _ in range(2):
            config.parse([DIGITS, SMOKE_PROFILE])
            stages.evaluate(recorded.out, relative, track=True)
            gin.clear_config()
            written.append((root / relative).read_bytes())
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return SimpleNamespace(root=root, uri=uri, relative=relative, written=written, runs=runs)


def test_evaluate_writes_no_run_id_and_the_same_bytes_on_a_rerun(rerun) -> None:
    """DVC metrics must be bit-identical between reruns with the same seed: no run id in the file."""
    first, second = rerun.written
    assert first == second
    assert "mlflow_run_id" not in json.loads(first)
    assert len(rerun.runs) == 2 and rerun.runs[0].info.run_id != rerun.runs[1].info.run_id
    for run in rerun.runs:
        assert run.info.run_id not in first.decode()
        assert run.data.tags["metrics_file"] == str(rerun.relative)
        assert run.data.tags["metrics_sha256"] == hashlib.sha256(first).hexdigest()


def test_audit_of_bytes_written_by_two_runs_shows_the_newest_and_lists_both(rerun, monkeypatch, capsys) -> None:
    monkeypatch.chdir(rerun.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", rerun.uri)
    newest, older = (run.info.run_id for run in rerun.runs)
    assert cli.main(["audit", str(rerun.relative)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"run            {newest}  evaluate-dafl+kdci-teacher0-seed0")
    assert f"2 runs wrote these exact bytes: {newest}, {older}" in text
    top1 = json.loads(rerun.written[0])["top1"]
    assert f"top1 {top1} matches the run's logged test/top1" in text


def test_audit_of_a_changed_metrics_file_names_the_newest_run_of_that_path(rerun, monkeypatch, capsys) -> None:
    monkeypatch.chdir(rerun.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", rerun.uri)
    changed = json.loads(rerun.written[0])
    changed["top1"] += 1.0  # edited by hand, or written by a run recorded elsewhere
    path = rerun.root / rerun.relative
    try:
        path.write_text(json.dumps(changed, indent=2, sort_keys=True) + "\n")
        assert cli.main(["audit", str(rerun.relative)]) == 2
    finally:
        path.write_bytes(rerun.written[0])
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    error = captured.err
    assert error.startswith("error: ") and "changed or written by a run not in this store" in error
    assert f"the newest is {rerun.runs[0].info.run_id}" in error
    assert "re-run the stage with tracking on" in error and "MLFLOW_TRACKING_URI" in error
