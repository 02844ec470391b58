"""Publish -> pull -> evaluate with the real huggingface_hub client against a local Hub-compatible
server (tests/support/hub_server.py), the model card, the failure cases, and the MLflow Model Registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli
from repro import artefact, config, io
from repro.errors import UserError
from repro.pipeline import stages
from repro.registry.card import CARD_FILE, read_card_checksums
from support.hub_server import FakeHub


@pytest.fixture(autouse=True)
def _classic_upload_flow(monkeypatch, tmp_path):
    # Xet uploads bypass the server's LFS endpoints (stack notes); the cache is per test.
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture()
def hub():
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def published_run(tmp_path_factory, teacher_dir) -> Path:
    """A baseline and a KDCI student (smoke DAFL, seed 0), evaluated into a metrics folder laid out
    as the pipeline's."""
    import gin

    root = tmp_path_factory.mktemp("run")
    experiment, profile = REPO / "gin/experiments/digits.gin", REPO / "gin/profiles/smoke.gin"
    for family, extra in (("students", []), ("kdci", [REPO / "gin/kdci.gin"])):
        config.parse([experiment, REPO / "gin/methods/dafl.gin", *extra, profile], ["KDCI.warmup_epochs = 0"])
        model_dir = root / "models" / family / "dafl" / "teacher0-seed0"
        stages.distill(teacher_dir, model_dir, root / "ckpt", track=False)
        config.parse([experiment, profile])
        stages.evaluate(model_dir, root / "metrics" / family / "dafl-teacher0-seed0.json", track=False)
    gin.clear_config()
    return root


def _publish(run: Path, family: str, repo_id: str, endpoint: str, **kwargs):
    from repro.registry import hub

    return hub.publish(run / "models" / family / "dafl" / "teacher0-seed0", repo_id, endpoint=endpoint,
                       metrics_dir=run / "metrics", results_path=run / "none.json", backoff=0, **kwargs)


def test_dry_run_writes_a_card_with_hub_metadata_and_results(published_run: Path, tmp_path: Path) -> None:
    from repro.registry import hub

    out = tmp_path / "staged"
    hub.publish(published_run / "models/kdci/dafl/teacher0-seed0", "someone/dafl-kdci", dry_run=True, out_dir=out,
                metrics_dir=published_run / "metrics", results_path=tmp_path / "absent.json")
    names = {path.name for path in out.iterdir()}
    assert names == {"config.json", "model.safetensors", "operative_config.gin", "confounder_dictionary.safetensors",
                     "substitution_sample.safetensors", "metrics.json", CARD_FILE}
    card = (out / CARD_FILE).read_text()
    meta = yaml.safe_load(card.split("---", 2)[1])
    assert {"data-free-knowledge-distillation", "kdci", "dafl"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "pytorch"
    measured = json.loads((published_run / "metrics/kdci/dafl-teacher0-seed0.json").read_text())
    baseline = json.loads((published_run / "metrics/students/dafl-teacher0-seed0.json").read_text())
    accuracy = meta["model-index"][0]["results"][0]["metrics"][0]
    assert accuracy["type"] == "accuracy" and accuracy["value"] == round(measured["top1"], 2)
    assert f"| dafl | {baseline['top1']:.2f} |" in card and f"| dafl + KDCI | {measured['top1']:.2f} |" in card
    checksums = read_card_checksums(card)
    assert set(checksums) == names - {CARD_FILE}
    assert all(checksums[name] == io.sha256_of(out / name) for name in checksums)
    assert "arXiv:2403.19539" in card and "load_student" in card


@pytest.mark.parametrize("family", ["students", "kdci"])
def test_publish_pull_evaluate_reproduces_the_card(published_run: Path, hub: FakeHub, tmp_path: Path,
                                                   family: str) -> None:
    from repro.registry import hub as hubmod

    repo_id = f"lab/dafl-{family}"
    published = _publish(published_run, family, repo_id, hub.endpoint)
    assert published["revision"] in hub.commits(repo_id)
    assert "model.safetensors" in hub.files(repo_id) and CARD_FILE in hub.files(repo_id)
    folder = hubmod.pull(f"{repo_id}@{published['revision']}", tmp_path / "models", endpoint=hub.endpoint,
                         cache_dir=tmp_path / "empty-cache")
    config.parse([REPO / "gin/experiments/digits.gin", REPO / "gin/profiles/smoke.gin"])
    measured = stages.evaluate(folder, tmp_path / "measured.json", track=False)
    assert measured["top1"] == hubmod.card_metrics(folder)["top1"]
    model, loaded = artefact.load_artefact(folder)
    assert ("intervention" in loaded) == (family == "kdci")
    if family == "kdci":
        assert model.dictionary is not None  # the dictionary came with the student


def test_pinned_revision_survives_a_later_commit(published_run: Path, hub: FakeHub, tmp_path: Path) -> None:
    from repro.registry import hub as hubmod

    first = _publish(published_run, "students", "lab/pinned", hub.endpoint)["revision"]
    second = _publish(published_run, "kdci", "lab/pinned", hub.endpoint)["revision"]
    assert first != second
    old = hubmod.pull(f"lab/pinned@{first}", tmp_path / "a", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    new = hubmod.pull("lab/pinned", tmp_path / "b", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    assert not (old / "confounder_dictionary.safetensors").exists()
    assert (new / "confounder_dictionary.safetensors").exists()


def test_tampered_download_is_refused_and_nothing_is_left(published_run: Path, hub: FakeHub, tmp_path: Path) -> None:
    from repro.registry import hub as hubmod

    _publish(published_run, "students", "lab/tampered", hub.endpoint)
    staged = tmp_path / "evil"
    shutil.copytree(published_run / "models/students/dafl/teacher0-seed0", staged)
    (staged / "operative_config.gin").write_text("# replaced\n")
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.endpoint).upload_file(path_or_fileobj=str(staged / "operative_config.gin"),
                                             path_in_repo="operative_config.gin", repo_id="lab/tampered")
    with pytest.raises(UserError, match="does not match the sha256 in the card"):
        hubmod.pull("lab/tampered", tmp_path / "models", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_hub_failures_are_one_line_errors(published_run: Path, hub: FakeHub, tmp_path: Path) -> None:
    from repro.registry import hub as hubmod

    with pytest.raises(UserError, match="does not exist .* or your token cannot see it"):
        hubmod.pull("lab/missing", tmp_path / "m", endpoint=hub.endpoint, cache_dir=tmp_path / "c", backoff=0)
    with pytest.raises(UserError, match="is not a Hub model id"):
        hubmod.pull("no-slash", tmp_path / "m", endpoint=hub.endpoint)
    closed = FakeHub().start()
    closed.stop()
    with pytest.raises(UserError, match="does not answer"):
        hubmod.pull("lab/x", tmp_path / "m", endpoint=closed.endpoint, cache_dir=tmp_path / "c2", backoff=0)
    with pytest.raises(UserError, match="does not answer"):
        _publish(published_run, "students", "lab/x", closed.endpoint)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_transient_server_errors_are_retried(published_run: Path, hub: FakeHub, tmp_path: Path) -> None:
    from repro.registry import hub as hubmod

    _publish(published_run, "students", "lab/flaky", hub.endpoint)
    hub.fail_next("/api/models/lab/flaky/revision", 503, times=1)
    folder = hubmod.pull("lab/flaky", tmp_path / "m", endpoint=hub.endpoint, cache_dir=tmp_path / "c", backoff=0)
    assert (folder / "model.safetensors").exists()


def test_unauthorised_publish_names_the_token(published_run: Path, tmp_path: Path) -> None:
    server = FakeHub(tokens={"hf_right"}).start()
    try:
        with pytest.raises(UserError, match="refused the request .*HF_TOKEN") as error:
            _publish(published_run, "students", "lab/locked", server.endpoint, token="hf_wrong")
        assert "hf_wrong" not in str(error.value)
        published = _publish(published_run, "students", "lab/locked", server.endpoint, token="hf_right")
        assert published["revision"]
    finally:
        server.stop()


def test_cli_pull_errors_are_one_line(tmp_path: Path) -> None:
    closed = FakeHub().start()
    closed.stop()
    result = run_cli("pull", "lab/x", "--out", str(tmp_path / "m"), env={"HF_ENDPOINT": closed.endpoint,
                                                                          "HF_HUB_DISABLE_XET": "1",
                                                                          "HF_HOME": str(tmp_path / "h")})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not answer" in result.stderr


def test_registry_records_versions_and_publication(teacher_dir: Path, hub: FakeHub, tmp_path: Path,
                                                   monkeypatch) -> None:
    from repro.registry import hub as hubmod
    from repro.tracking import runs as tracking

    monkeypatch.chdir(tmp_path)
    config.parse([REPO / "gin/experiments/digits.gin", REPO / "gin/methods/dafl.gin", REPO / "gin/profiles/smoke.gin"],
                 ["DISTILL_EPOCHS = 1"])
    model_dir = tmp_path / "models/students/dafl/teacher0-seed0"
    stages.distill(teacher_dir, model_dir, tmp_path / "ckpt", track=True)
    config.parse([REPO / "gin/experiments/digits.gin", REPO / "gin/profiles/smoke.gin"])
    stages.evaluate(model_dir, tmp_path / "metrics/students/dafl-teacher0-seed0.json", track=False)
    rows = tracking.list_registry()
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        ("digits-digits_cnn_large-digits_cnn_small-dafl", "1", "teacher0-seed0")]
    published = hubmod.publish(model_dir, "lab/registered", endpoint=hub.endpoint, metrics_dir=tmp_path / "metrics",
                               backoff=0)
    tracking.tag_published(model_dir, published["repo_id"], published["revision"])
    (row,) = tracking.list_registry()
    assert row["hub"] == "lab/registered" and row["revision"] == published["revision"]
    assert "lab/registered" in tracking.format_registry([row])


def test_cli_publish_then_evaluate_from_hub(published_run: Path, hub: FakeHub, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    published = run_cli("publish", "--repo-id", "lab/cli-kdci", "--model", "models/kdci/dafl/teacher0-seed0", "--no-track",
                        cwd=published_run, env=env)
    assert published.returncode == 0, published.stderr
    assert "lab/cli-kdci" in published.stdout and "model.safetensors" in hub.files("lab/cli-kdci")
    evaluated = run_cli("evaluate", "--gin", str(REPO / "gin/experiments/digits.gin"), "--gin",
                        str(REPO / "gin/profiles/smoke.gin"), "--from-hub", "lab/cli-kdci", "--hub-dir",
                        str(tmp_path / "pulled"), "--no-track", cwd=tmp_path, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    card = json.loads((published_run / "metrics/kdci/dafl-teacher0-seed0.json").read_text())["top1"]
    assert f"matches the card's {card:.2f}%" in evaluated.stdout
    assert (tmp_path / "pulled/lab--cli-kdci/confounder_dictionary.safetensors").is_file()


def test_interrupted_upload_is_one_line_and_leaves_no_commit(published_run: Path, hub: FakeHub) -> None:
    hub.fail_next("/commit/", 0, times=5)  # the connection drops at every commit attempt
    with pytest.raises(UserError, match="does not answer"):
        _publish(published_run, "kdci", "lab/interrupted", hub.endpoint)
    assert len(hub.commits("lab/interrupted")) == 1  # only the repository's initial commit


def test_offline_pull_serves_the_cache_and_explains_a_miss(published_run: Path, hub: FakeHub, tmp_path: Path,
                                                           monkeypatch) -> None:
    from huggingface_hub import constants

    from repro.registry import hub as hubmod

    _publish(published_run, "students", "lab/cached", hub.endpoint)
    hubmod.pull("lab/cached", tmp_path / "online", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = hubmod.pull("lab/cached", tmp_path / "offline", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "online/lab--cached/model.safetensors").read_bytes()
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        hubmod.pull("lab/never-pulled", tmp_path / "x", endpoint=hub.endpoint, cache_dir=tmp_path / "cache", backoff=0)
