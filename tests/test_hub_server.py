"""The fake Hub in tests/hub_server.py, driven by the real huggingface_hub client (no network)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub")
import httpx2  # noqa: E402 - the client's HTTP library (huggingface_hub 2.x)
from hub_server import FakeHub  # noqa: E402 - tests/ is on sys.path, as for conftest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url  # noqa: E402

# The client itself uploads bytes with httpx2's deprecated `data=` (LFS PUT): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "org/model"
BIG = bytes(range(256)) * 6000  # 1.5 MB binary: above lfs_threshold and with NUL bytes


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
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _download(hub: FakeHub, filename: str, cache: Path, revision: str | None = None, **kw) -> bytes:
    path = hf_hub_download(REPO, filename, revision=revision, cache_dir=cache, endpoint=hub.endpoint,
                           token=kw.pop("token", False), **kw)
    return Path(path).read_bytes()


def test_round_trip_with_lfs(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=False)
    url = api.create_repo(REPO, private=True)
    assert url.repo_id == REPO and url.endpoint == hub.endpoint
    api.create_repo(REPO, private=True, exist_ok=True)  # 409 swallowed by the client
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409

    files = {"README.md": b"---\nlicense: mit\n---\n# card\n", "notes.txt": b"hello hub\n",
             "weights/model.bin": BIG}
    info = api.upload_folder(repo_id=REPO, folder_path=str(_folder(tmp_path / "src", files)),
                             commit_message="first upload")

    # The commit went through preupload, the LFS batch + pre-signed PUT + verify, then the NDJSON commit.
    methods_paths = hub.requests
    assert ("POST", f"/api/models/{REPO}/preupload/main") in methods_paths
    assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in methods_paths
    assert any(m == "PUT" and p.startswith("/__lfs__/upload/") for m, p in methods_paths)
    assert ("POST", f"/{REPO}.git/info/lfs/objects/verify") in methods_paths
    assert ("POST", f"/api/models/{REPO}/commit/main") in methods_paths
    assert hub.is_lfs(REPO, "weights/model.bin") and not hub.is_lfs(REPO, "notes.txt")

    stored = hub.files(REPO)
    assert stored.pop(".gitattributes").startswith(b"*.safetensors filter=lfs")  # the Hub's initial commit
    assert stored == files
    assert hub.commits(REPO)[-1] == info.oid and len(hub.commits(REPO)) == 2

    # Revision info, listing and tree metadata.
    model = api.model_info(REPO, files_metadata=True)
    assert model.sha == info.oid and model.private is True
    lfs = {s.rfilename: s.lfs for s in model.siblings}
    assert lfs["weights/model.bin"].size == len(BIG) and lfs["notes.txt"] is None
    assert api.repo_info(REPO, revision=info.oid).sha == info.oid
    assert sorted(api.list_repo_files(REPO)) == sorted([".gitattributes", *files])
    tree = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert tree["weights/model.bin"].lfs.sha256 == hashlib.sha256(BIG).hexdigest()
    assert type(tree["weights"]).__name__ == "RepoFolder"

    # Each file into a fresh cache, byte for byte; then a whole snapshot.
    for name, data in files.items():
        assert _download(hub, name, tmp_path / f"cache-{name.replace('/', '_')}") == data
    snap = Path(snapshot_download(REPO, cache_dir=tmp_path / "snap", endpoint=hub.endpoint, token=False))
    assert snap.name == info.oid
    got = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
    assert {k: v for k, v in got.items() if k != ".gitattributes"} == files

    # Unchanged files are dropped client-side thanks to the oids in the preupload answer: no new commit.
    api.upload_folder(repo_id=REPO, folder_path=str(tmp_path / "src"), commit_message="same again")
    assert len(hub.commits(REPO)) == 2


def test_revision_pinning_and_branches(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=False)
    api.create_repo(REPO)
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id=REPO).oid
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=REPO).oid
    assert first != second and hub.commits(REPO)[-2:] == [first, second]

    assert _download(hub, "a.txt", tmp_path / "c1", revision=first) == b"v1"
    assert _download(hub, "a.txt", tmp_path / "c2") == b"v2"
    assert _download(hub, "a.txt", tmp_path / "c3", revision=first[:10]) == b"v1"  # unique sha prefix
    snap = snapshot_download(REPO, revision=first, cache_dir=tmp_path / "s", endpoint=hub.endpoint, token=False)
    assert (Path(snap) / "a.txt").read_bytes() == b"v1"
    assert hub.files(REPO, first)["a.txt"] == b"v1"

    # A branch (as repro.registry.hub.publish creates one) and a tag resolve like main.
    api.create_branch(REPO, branch="exp")
    api.create_branch(REPO, branch="exp", exist_ok=True)
    on_branch = api.upload_file(path_or_fileobj=b"v3", path_in_repo="a.txt", repo_id=REPO, revision="exp").oid
    api.create_tag(REPO, tag="v1.0", revision=first)
    assert _download(hub, "a.txt", tmp_path / "c4", revision="exp") == b"v3"
    assert _download(hub, "a.txt", tmp_path / "c5", revision="v1.0") == b"v1"
    assert hub.files(REPO)["a.txt"] == b"v2"
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second, "exp": on_branch}
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == list(reversed(hub.commits(REPO, "main")))


def test_errors_map_to_client_exceptions(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "x.txt", cache_dir=tmp_path, endpoint=hub.endpoint, token=False)
    api.create_repo(REPO)
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "absent.txt", cache_dir=tmp_path, endpoint=hub.endpoint, token=False)


def test_injected_failures(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=False)
    api.create_repo(REPO)

    # repo_info is a single request: the 503 reaches the caller.
    hub.fail_next("/revision/", 503)
    with pytest.raises(HfHubHTTPError) as err:
        api.repo_info(REPO, revision="main")
    assert err.value.response.status_code == 503
    assert api.repo_info(REPO, revision="main").sha  # the failure was used up

    # preupload goes through http_backoff: one 503 is retried (after ~1 s) and the commit lands.
    hub.fail_next("/preupload/", 503)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    preuploads = [r for r in hub.requests if r[1].endswith("/preupload/main")]
    assert preuploads == [("POST", f"/api/models/{REPO}/preupload/main")] * 2

    # status 0 drops the connection unanswered; the commit endpoint is not retried by the client.
    hub.fail_next("/commit/", 0)
    with pytest.raises(httpx2.TransportError):
        api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=REPO)
    assert "y.txt" not in hub.files(REPO)

    # An unresponsive Hub: the metadata HEAD has a timeout, so it fails instead of hanging.
    hub.set_unresponsive()
    with pytest.raises(httpx2.TimeoutException):
        get_hf_file_metadata(hf_hub_url(REPO, "x.txt", endpoint=hub.endpoint), token=False, timeout=0.3)
    hub.set_unresponsive(False)
    assert _download(hub, "x.txt", tmp_path / "c") == b"x"

    # A stopped Hub refuses connections.
    hub.stop()
    with pytest.raises(httpx2.ConnectError):
        api.repo_info(REPO)


def test_auth_and_private_repos(tmp_path):
    hub = FakeHub(tokens={"hf_good"}).start()
    try:
        anonymous = HfApi(endpoint=hub.endpoint, token=False)
        wrong = HfApi(endpoint=hub.endpoint, token="hf_wrong")
        good = HfApi(endpoint=hub.endpoint, token="hf_good")
        for api in (anonymous, wrong):
            with pytest.raises(HfHubHTTPError) as err:
                api.create_repo(REPO)
            assert err.value.response.status_code == 401
            assert not isinstance(err.value, RepositoryNotFoundError)
        good.create_repo(REPO, private=True)
        good.upload_file(path_or_fileobj=BIG, path_in_repo="model.safetensors", repo_id=REPO)

        # A private repo is invisible without a valid token, readable with one.
        with pytest.raises(RepositoryNotFoundError):
            anonymous.repo_info(REPO)
        with pytest.raises(RepositoryNotFoundError):
            _download(hub, "model.safetensors", tmp_path / "anon")
        with pytest.raises(HfHubHTTPError) as err:
            wrong.repo_info(REPO)
        assert err.value.response.status_code == 401
        with pytest.raises(HfHubHTTPError):
            anonymous.upload_file(path_or_fileobj=b"z", path_in_repo="z.txt", repo_id=REPO)
        assert _download(hub, "model.safetensors", tmp_path / "good", token="hf_good") == BIG
    finally:
        hub.stop()


def test_multipart_dedup_and_cdn_redirect(hub, tmp_path):
    api = HfApi(endpoint=hub.endpoint, token=False)
    api.create_repo(REPO)
    hub.multipart_chunk_size = 512 * 1024
    api.upload_file(path_or_fileobj=BIG, path_in_repo="a.safetensors", repo_id=REPO)
    assert sum(1 for m, p in hub.requests if m == "PUT" and p.startswith("/__lfs__/part/")) == 3
    assert any(p.startswith("/__lfs__/complete/") for _, p in hub.requests)

    # Same content under another name: the LFS batch says it is already stored, nothing is uploaded.
    before = len([r for r in hub.requests if r[0] == "PUT"])
    api.upload_file(path_or_fileobj=BIG, path_in_repo="b.safetensors", repo_id=REPO)
    assert len([r for r in hub.requests if r[0] == "PUT"]) == before
    assert hub.files(REPO)["b.safetensors"] == BIG

    # LFS downloads redirected to another origin, as to a CDN.
    hub.redirect_lfs_downloads = True
    assert _download(hub, "b.safetensors", tmp_path / "cdn") == BIG
    assert any(p.startswith("/__lfs__/cdn/") for _, p in hub.requests)
    assert os.path.isdir(tmp_path / "cdn")
