"""The fake Hub in tests/support/hub_server.py, driven by the real huggingface_hub client (no network),
through the calls repro.registry.hub makes: create_repo, create_branch, upload_folder, repo_info,
snapshot_download (and hf_hub_download, which it runs per file)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx2  # the client's HTTP library (huggingface_hub 2.x)
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url

from support.hub_server import FakeHub

# The client itself uploads bytes with httpx2's deprecated `data=` (LFS PUT): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "org/model"
WEIGHTS = bytes(range(256)) * 600  # binary, with NUL bytes
FILES = {"README.md": b"---\nlicense: mit\n---\n# card\n", "config.json": b'{"role": "teacher"}\n',
         "operative_config.gin": b"x = 1\n", "model.safetensors": WEIGHTS}


@pytest.fixture(autouse=True)
def _client_env(monkeypatch, tmp_path):
    # Xet is decided from a constant read at import time: patching the env var alone is too late.
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # A developer's own login must never reach the fake (nor a real token leak into its logs).
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def hub():
    server = FakeHub().start()
    yield server
    server.stop()


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _snapshot(hub: FakeHub, cache: Path, revision: str | None = None, token: str | bool = False) -> dict[str, bytes]:
    folder = Path(snapshot_download(REPO, revision=revision, cache_dir=cache, endpoint=hub.endpoint, token=token,
                                    allow_patterns=["*.json", "*.safetensors", "*.gin", "README.md"]))
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_publish_then_pull_round_trip(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=False)
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == hub.endpoint
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO  # the 409 carries the url
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409

    info = api.upload_folder(repo_id=REPO, folder_path=str(_folder(tmp_path / "src", FILES)),
                             commit_message="publish")
    # The card check, preupload, the LFS batch and its pre-signed PUT (weights only), then the commit.
    assert ("POST", "/api/validate-yaml") in hub.requests
    assert ("POST", f"/api/models/{REPO}/preupload/main") in hub.requests
    assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in hub.requests
    assert sum(1 for m, p in hub.requests if m == "PUT" and p.startswith("/__lfs__/")) == 1
    assert ("POST", f"/api/models/{REPO}/commit/main") in hub.requests
    stored = hub.files(REPO)
    assert stored.pop(".gitattributes").startswith(b"*.safetensors filter=lfs")  # the Hub's initial commit
    assert stored == FILES
    assert hub.commits(REPO)[-1] == info.oid and len(hub.commits(REPO)) == 2
    assert api.repo_info(REPO).sha == info.oid

    # snapshot_download: repo_info, the tree, then HEAD + GET per file, byte for byte.
    assert _snapshot(hub, tmp_path / "cache") == FILES
    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors", endpoint=hub.endpoint), token=False)
    assert meta.commit_hash == info.oid and meta.size == len(WEIGHTS)
    assert meta.etag == hashlib.sha256(WEIGHTS).hexdigest()  # LFS files are named by their sha256

    # Publishing the same weights again: the LFS batch says they are stored, nothing is uploaded.
    api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="copy.safetensors", repo_id=REPO)
    assert sum(1 for m, p in hub.requests if m == "PUT") == 1
    assert hub.files(REPO)["copy.safetensors"] == WEIGHTS


def test_pinned_revisions_and_branches(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=False)
    api.create_repo(REPO)
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="config.json", repo_id=REPO).oid
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="config.json", repo_id=REPO).oid
    assert first != second and hub.commits(REPO)[-2:] == [first, second]
    assert _snapshot(hub, tmp_path / "c1", revision=first)["config.json"] == b"v1"  # a sha skips repo_info
    assert _snapshot(hub, tmp_path / "c2")["config.json"] == b"v2"

    # A branch, as publish --revision creates one: exist_ok swallows the 409.
    api.create_branch(REPO, branch="exp")
    api.create_branch(REPO, branch="exp", exist_ok=True)
    on_branch = api.upload_file(path_or_fileobj=b"v3", path_in_repo="config.json", repo_id=REPO, revision="exp").oid
    assert _snapshot(hub, tmp_path / "c3", revision="exp")["config.json"] == b"v3"
    assert api.repo_info(REPO, revision="exp").sha == on_branch
    assert hub.files(REPO)["config.json"] == b"v2" and hub.files(REPO, first)["config.json"] == b"v1"


@pytest.mark.parametrize("branch", ["feature/x", "v1.0"])
def test_branch_names_with_slashes_and_dots(hub, tmp_path, branch):
    # The client quotes a branch into one URL segment ("feature%2Fx"); the fake must decode it whole.
    api = HfApi(endpoint=hub.endpoint, token=False)
    api.create_repo(REPO)
    api.create_branch(REPO, branch=branch)
    oid = api.upload_file(path_or_fileobj=b"v", path_in_repo="config.json", repo_id=REPO, revision=branch).oid
    assert ("POST", f"/api/models/{REPO}/commit/{branch.replace('/', '%2F')}") in hub.requests
    assert api.repo_info(REPO, revision=branch).sha == oid == hub.commits(REPO)[-1]
    assert _snapshot(hub, tmp_path / "c", revision=branch)["config.json"] == b"v"
    assert "config.json" not in hub.files(REPO)  # main is untouched


def test_errors_map_to_client_exceptions(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "x.txt", cache_dir=tmp_path, endpoint=hub.endpoint, token=False)
    api.create_repo(REPO)
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch", cache_dir=tmp_path, endpoint=hub.endpoint, token=False)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "absent.txt", cache_dir=tmp_path, endpoint=hub.endpoint, token=False)


def test_injected_failures_and_stop(hub):
    api = HfApi(endpoint=hub.endpoint, token=False)
    api.create_repo(REPO)

    # repo_info is a single request: the 503 reaches the caller (repro retries it).
    hub.fail_next("/revision/", 503)
    with pytest.raises(HfHubHTTPError) as err:
        api.repo_info(REPO, revision="main")
    assert err.value.response.status_code == 503
    assert api.repo_info(REPO, revision="main").sha  # the failure was used up

    # Status 0 drops the connection unanswered; the client does not retry the commit.
    hub.fail_next("/commit/", 0)
    with pytest.raises(httpx2.TransportError):
        api.upload_file(path_or_fileobj=b"y", path_in_repo="y.json", repo_id=REPO)
    assert "y.json" not in hub.files(REPO) and len(hub.commits(REPO)) == 1

    # A stopped Hub refuses connections.
    hub.stop()
    with pytest.raises(httpx2.ConnectError):
        api.repo_info(REPO)


def test_tokens(tmp_path):
    hub = FakeHub(tokens={"hf_good"}).start()
    try:
        for token in (False, "hf_wrong"):
            for exist_ok in (False, True):  # with exist_ok the client also tries repo_info: refused too
                with pytest.raises(HfHubHTTPError) as err:
                    HfApi(endpoint=hub.endpoint, token=token).create_repo(REPO, exist_ok=exist_ok)
                assert err.value.response.status_code == 401
                assert not isinstance(err.value, RepositoryNotFoundError)
        good = HfApi(endpoint=hub.endpoint, token="hf_good")
        good.create_repo(REPO)
        good.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.safetensors", repo_id=REPO)  # PUT has no token
        with pytest.raises(HfHubHTTPError):
            _snapshot(hub, tmp_path / "anonymous")
        assert _snapshot(hub, tmp_path / "good", token="hf_good") == {"model.safetensors": WEIGHTS}
    finally:
        hub.stop()
