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
from support.cli_errors import assert_one_line_error, run_main, snapshot
from support.hub_server import FakeHub


@pytest.fixture(autouse=True)
def _classic_upload_flow(monkeypatch, tmp_path):
    # Xet uploads bypass the server's LFS endpoints (stack notes); the cache is per test.
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    from huggingface_hub import constants

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


# -- Hub ids and revisions are names, never paths (issue 14) -------------------------------------------
# Through `repro.cli.main` in this process; the FakeHub accepts any branch name (as a hostile or broken
# endpoint might), so the refusals below are the client's own.

SMOKE_GIN = ["--gin", REPO / "gin/experiments/digits.gin", "--gin", REPO / "gin/profiles/smoke.gin"]
BAD_IDS = {
    "parent-org": "../x",
    "parent-name": "org/..",
    "dot-name": "org/.",
    "three-parts": "a/b/c",
    "no-org": "name-only",
    "over-length": "org/" + "n" * 97,
    "newline": "org/na\nme",
    "tab": "org/na\tme",
    "space": "org/a b",
    "empty": "",
    "empty-name": "org/",
    "non-ascii": "org/nämé",
}
BAD_REVISIONS = {
    "parent-path": "../../../../x", "dot-dot": "..", "dot-dot-inside": "a..b", "leading-slash": "/main",
    "trailing-slash": "main/", "double-slash": "a//b", "backslash": "a\\b", "space": "a b", "newline": "a\nb",
    "tilde": "a~1", "caret": "a^2", "colon": "a:b", "question": "a?", "star": "a*", "bracket": "a[0]", "at": "@",
    "leading-dash": "-x", "lock-suffix": "x.lock", "leading-dot": ".hidden", "dot-part": "a/.b", "trailing-dot": "x.",
    "non-ascii": "brånch", "over-length": "x" * 256, "empty": "",
}


@pytest.fixture()
def cli_hub(hub: FakeHub, tmp_path: Path, monkeypatch) -> FakeHub:
    """The in-process CLI talks to ``hub`` and caches under tmp_path/hf (the cache path is read at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf/hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub


def _tree(root: Path) -> tuple[dict[str, str], set[str]]:
    """Every file's digest and every folder under ``root``: an empty folder counts as a write too."""
    return snapshot(root), {str(path.relative_to(root)) for path in root.rglob("*") if path.is_dir()}


def _refused(argv: list, hub: FakeHub, root: Path, capfd, monkeypatch, *fragments: str) -> str:
    """Run ``repro ARGV``: one ``error:`` line naming ``fragments``, no Hub request, nothing under root."""
    before, requests = _tree(root), len(hub.requests)
    line = assert_one_line_error(run_main(argv, capfd, monkeypatch), *fragments)
    assert hub.requests[requests:] == [] and _tree(root) == before
    return line


def _verb(verb: str, root: Path, model: Path, repo_id: str = "lab/x", revision: str | None = None) -> list:
    if verb == "publish":
        return ["publish", "--model", model, f"--repo-id={repo_id}", "--no-track", "--out", root / "out",
                *([f"--revision={revision}"] if revision is not None else [])]
    reference = repo_id if revision is None else f"{repo_id}@{revision}"
    if verb == "pull":
        return ["pull", reference, "--out", root / "models/hub"]
    return ["evaluate", *SMOKE_GIN, f"--from-hub={reference}", "--hub-dir", root / "models/hub", "--no-track"]


@pytest.mark.parametrize("case", BAD_IDS)
@pytest.mark.parametrize("verb", ["publish", "pull", "evaluate"])
def test_bad_hub_id_is_refused(verb: str, case: str, cli_hub: FakeHub, teacher_dir: Path, tmp_path: Path, capfd,
                               monkeypatch) -> None:
    (tmp_path / "work").mkdir()
    bad = BAD_IDS[case]
    _refused(_verb(verb, tmp_path / "work", teacher_dir, repo_id=bad), cli_hub, tmp_path, capfd, monkeypatch,
             repr(bad), "is not a Hub model id", "write ORG/NAME")


@pytest.mark.parametrize("case", BAD_REVISIONS)
@pytest.mark.parametrize("verb", ["publish", "pull", "evaluate"])
def test_bad_revision_is_refused(verb: str, case: str, cli_hub: FakeHub, teacher_dir: Path, tmp_path: Path, capfd,
                                 monkeypatch) -> None:
    (tmp_path / "work").mkdir()
    bad = BAD_REVISIONS[case]
    _refused(_verb(verb, tmp_path / "work", teacher_dir, revision=bad), cli_hub, tmp_path, capfd, monkeypatch,
             f"revision {bad!r}", "is not a branch", "give a branch")


def test_publish_refuses_a_commit_sha_as_its_branch(cli_hub: FakeHub, teacher_dir: Path, tmp_path: Path, capfd,
                                                    monkeypatch) -> None:
    _refused(_verb("publish", tmp_path, teacher_dir, revision="a" * 40), cli_hub, tmp_path, capfd, monkeypatch,
             "a commit sha cannot receive commits")


def test_publish_to_a_path_revision_is_refused(published_run: Path, cli_hub: FakeHub, tmp_path: Path, capfd,
                                               monkeypatch) -> None:
    from repro.registry import hub as hubmod

    model = published_run / "models/students/dafl/teacher0-seed0"
    _refused(["publish", "--model", model, "--repo-id", "lab/attack", "--revision", "../../../../x", "--no-track"],
             cli_hub, tmp_path, capfd, monkeypatch, "'../../../../x'", "contains '..'")
    with pytest.raises(UserError, match=r"revision '\.\./\.\./\.\./\.\./x' is not a branch name"):
        _publish(published_run, "students", "lab/attack", cli_hub.endpoint, revision="../../../../x")
    with pytest.raises(UserError, match="is not a Hub model id"):  # the library entry point checks as well
        hubmod.publish(model, "lab/x@main", dry_run=True, out_dir=tmp_path / "out")
    assert cli_hub.requests == [] and not (tmp_path / "out").exists()


def test_pull_of_a_path_revision_changes_nothing_outside_out(published_run: Path, cli_hub: FakeHub, tmp_path: Path,
                                                             capfd, monkeypatch) -> None:
    from huggingface_hub import HfApi

    from repro.registry import hub as hubmod

    # A branch named like a path, served by a hostile endpoint: the cache would write refs/<revision>,
    # i.e. tmp_path/victim, with the commit sha (huggingface_hub does not check revisions itself).
    revision = "../../../../victim"
    staged = hubmod.stage_folder(published_run / "models/students/dafl/teacher0-seed0", "lab/attack",
                                 tmp_path / "staged", published_run / "metrics", published_run / "none.json")
    api = HfApi(endpoint=cli_hub.endpoint, token=False)
    api.create_repo("lab/attack")
    api.create_branch("lab/attack", branch=revision)
    api.upload_folder(repo_id="lab/attack", folder_path=str(staged), revision=revision)
    shutil.rmtree(staged)
    (tmp_path / "victim").write_text("precious\n")
    _refused(["pull", f"lab/attack@{revision}", "--out", tmp_path / "models/hub"], cli_hub, tmp_path, capfd,
             monkeypatch, repr(revision), "is not a branch, tag or commit name")
    assert (tmp_path / "victim").read_text() == "precious\n"
    with pytest.raises(UserError, match="is not a branch, tag or commit name"):
        hubmod.load_student(f"lab/attack@{revision}", endpoint=cli_hub.endpoint, models_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists() and not (tmp_path / "hf").exists()


def test_evaluate_checks_every_reference_before_the_first_pull(published_run: Path, cli_hub: FakeHub,
                                                               tmp_path: Path, capfd, monkeypatch) -> None:
    _publish(published_run, "students", "lab/good", cli_hub.endpoint)
    _refused(["evaluate", *SMOKE_GIN, "--from-hub", "lab/good", "--from-hub", "lab/x@../../x", "--hub-dir",
              tmp_path / "pulled", "--no-track"], cli_hub, tmp_path, capfd, monkeypatch, "'../../x'")


def test_composed_publish_ids_are_checked_before_any_upload(cli_hub: FakeHub, tmp_path: Path, capfd,
                                                            monkeypatch) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text()) | {"teacher_seeds": [0], "seeds": [0],
                                                                    "methods": ["dafl"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    # ORG/<86 characters>-teacher0 fits the Hub's 96, ORG/<86>-dafl-teacher0-seed0 does not.
    prefix = "org/" + "p" * 86
    line = _refused(["publish", "--repo-id", prefix, "--params", tmp_path / "params.yaml", "--out", tmp_path / "out",
                     "--no-track"], cli_hub, tmp_path, capfd, monkeypatch,
                    f"{prefix}-dafl-teacher0-seed0", "the Hub allows 96", "shorten or correct the --repo-id prefix")
    assert "106 characters" in line
    _refused(["publish", "--repo-id", "org/name-", "--params", tmp_path / "params.yaml", "--dry-run", "--out",
              tmp_path / "out", "--no-track"], cli_hub, tmp_path, capfd, monkeypatch, "'org/name-'")


def test_pull_refuses_a_destination_that_links_outside_out(published_run: Path, cli_hub: FakeHub, tmp_path: Path,
                                                           capfd, monkeypatch) -> None:
    _publish(published_run, "students", "lab/linked", cli_hub.endpoint)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine\n")
    out = tmp_path / "models/hub"
    out.mkdir(parents=True)
    (out / "lab--linked").symlink_to(elsewhere, target_is_directory=True)
    _refused(["pull", "lab/linked", "--out", out], cli_hub, tmp_path, capfd, monkeypatch,
             "lab--linked resolves to", f"outside {out}")
    _refused(["evaluate", *SMOKE_GIN, "--from-hub", "lab/linked", "--hub-dir", out, "--no-track"], cli_hub, tmp_path,
             capfd, monkeypatch, "lab--linked resolves to")
    assert (elsewhere / "keep.txt").read_text() == "mine\n" and (out / "lab--linked").is_symlink()


def test_a_card_naming_a_path_is_refused(published_run: Path, hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    from repro.registry import hub as hubmod

    _publish(published_run, "students", "lab/evilcard", hub.endpoint)
    card = hub.files("lab/evilcard")[CARD_FILE].decode()
    (tmp_path / CARD_FILE).write_text(card.replace("checksums:\n", "checksums:\n  ../../outside.json: '0'\n", 1))
    HfApi(endpoint=hub.endpoint).upload_file(path_or_fileobj=str(tmp_path / CARD_FILE), path_in_repo=CARD_FILE,
                                             repo_id="lab/evilcard")
    with pytest.raises(UserError, match=r"lists '\.\./\.\./outside\.json', not a file name"):
        hubmod.pull("lab/evilcard", tmp_path / "models", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("revision", ["v1.0", "feature/x", "sha"])
def test_branch_tag_and_sha_revisions_still_work(revision: str, published_run: Path, cli_hub: FakeHub,
                                                 tmp_path: Path, capfd, monkeypatch) -> None:
    branch = "main" if revision == "sha" else revision
    published = _publish(published_run, "kdci", "lab/good.model_1", cli_hub.endpoint, revision=branch)
    assert published["revision"] == cli_hub.commits("lab/good.model_1")[-1]
    reference = f"lab/good.model_1@{published['revision'] if revision == 'sha' else revision}"
    pulled = run_main(["pull", reference, "--out", tmp_path / "models/hub"], capfd, monkeypatch)
    assert pulled.code == 0, pulled.stderr_lines
    assert (tmp_path / "models/hub/lab--good.model_1/confounder_dictionary.safetensors").is_file()
    if revision == "feature/x":  # evaluate --from-hub takes the same references
        evaluated = run_main(["evaluate", *SMOKE_GIN, "--from-hub", reference, "--hub-dir", tmp_path / "again",
                              "--no-track"], capfd, monkeypatch)
        assert evaluated.code == 0, evaluated.stderr_lines
        assert "matches the card's" in evaluated.stdout
