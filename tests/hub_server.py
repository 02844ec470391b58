"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

``FakeHub`` speaks enough of the Hub's HTTP API for the real ``huggingface_hub`` 2.4 client to create
repositories, commit files (regular and through the legacy Git LFS flow), list and download them, and
resolve revisions, all on 127.0.0.1::

    hub = FakeHub().start()
    api = HfApi(endpoint=hub.endpoint, token=False)
    ...
    hub.stop()

What the client needs from the caller (measured on huggingface_hub 2.4):

* Pass ``endpoint=hub.endpoint`` explicitly (``HfApi(endpoint=...)``, ``hf_hub_download(..., endpoint=...)``,
  ``snapshot_download(..., endpoint=...)``): ``HF_ENDPOINT`` is read once, at import.
* Turn Xet off: ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True`` (also read at import, so setting the
  environment variable afterwards has no effect). With ``hf_xet`` installed and Xet on, uploads go to a
  proprietary chunk store this server does not implement; its ``xet-*-token`` routes answer 501 saying so.
* Pass ``token=`` explicitly (``False`` for anonymous) so a developer's own login never reaches the fake.
* The client's HTTP session has no timeout except on the metadata ``HEAD`` and on downloads, so a test
  that calls :meth:`FakeHub.set_unresponsive` must use a call that has one (or it waits until ``stop()``).

Behaviour that mirrors the real Hub:

* ``create_repo`` makes an initial commit holding a ``.gitattributes`` (so ``files()`` and snapshots
  contain it, and ``commits()`` starts with it); creating an existing repository answers 409.
* Every commit gets a fresh 40-hex sha; revisions resolve as a branch, a tag, ``refs/pr/N``, a full sha
  or a unique sha prefix (>= 7), so a pinned sha keeps serving old content after later commits.
* ``preupload`` answers ``"lfs"`` for files of at least ``lfs_threshold`` bytes, for names matching
  ``LFS_PATTERNS`` (``*.safetensors``, ``*.bin``, ...) and for binary samples (a NUL byte), as the Hub
  refuses binary files in plain git. LFS objects go through ``/{repo}.git/info/lfs/objects/batch``, a
  pre-signed ``PUT`` (no Authorization header, like S3) and a ``verify`` call; multipart uploads are used
  when ``multipart_chunk_size`` is set and a file is larger than it.
* Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and
  ``X-Error-Message`` headers, which the client maps to its typed exceptions.
* Auth (only when ``tokens`` is given): a wrong bearer token is refused everywhere (401, "Invalid
  credentials in Authorization header"); write endpoints need a valid token (401); a private repository
  is invisible to anonymous readers (401 + ``RepoNotFound``, which the client raises as
  ``RepositoryNotFoundError``). Without ``tokens`` nothing is checked and ``private`` is only a flag.
* ``redirect_lfs_downloads = True`` makes LFS files answer ``resolve`` with a 302 to a signed URL on
  ``localhost`` (another origin than ``127.0.0.1``, as a CDN is), so the client takes the metadata from
  the redirect and downloads without forwarding the Authorization header.

Test hooks: :meth:`fail_next` (answer a status, or drop the connection with status 0),
:meth:`set_unresponsive` (read requests, answer nothing), :meth:`stop` (connection refused afterwards),
:attr:`requests` (every request as ``(method, path)``), :meth:`files` and :meth:`commits`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode

# URL prefixes of the repository types, as in huggingface_hub.constants.REPO_TYPES_URL_PREFIXES.
_PREFIX_TO_TYPE = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_TYPE_TO_PREFIX = {value: f"{key}/" for key, value in _PREFIX_TO_TYPE.items()} | {"model": ""}
# The API spells the type in the plural: /api/models/..., /api/datasets/...
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.npy", "*.npz",
                "*.pkl", "*.gguf", "*.msgpack", "*.tar", "*.gz", "*.zip", "*.parquet", "*.arrow")
_LFS_SPEC = "version https://git-lfs.github.com/spec/v1"


def _git_blob_oid(data: bytes) -> str:
    # The git object id of a blob: what the Hub reports as a file's "oid"/"blobId" and what the client
    # compares (as `_local_oid`) with the preupload answer to skip unchanged regular files.
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    # The only format huggingface_hub.utils.parse_datetime accepts.
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class _Blob:
    data: bytes
    lfs: bool
    sha256: str
    git_oid: str  # for LFS files: the oid of the pointer file, as in git
    pointer_size: int

    @classmethod
    def make(cls, data: bytes, lfs: bool) -> "_Blob":
        sha256 = hashlib.sha256(data).hexdigest()
        if not lfs:
            return cls(data, False, sha256, _git_blob_oid(data), 0)
        pointer = f"{_LFS_SPEC}\noid sha256:{sha256}\nsize {len(data)}\n".encode()
        return cls(data, True, sha256, _git_blob_oid(pointer), len(pointer))

    @property
    def etag(self) -> str:
        # The Hub's ETag is the git oid for regular files and the sha256 for LFS files; the client names
        # its cache blobs after it.
        return self.sha256 if self.lfs else self.git_oid

    @property
    def local_oid(self) -> str:
        # What CommitOperationAdd._local_oid computes for the same content (sha256 for LFS uploads).
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class _Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, _Blob]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)  # name (main, refs/pr/1) -> sha
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # commit shas in creation order
    lfs: dict[str, bytes] = field(default_factory=dict)  # LFS store of this repository: sha256 -> content
    pr_count: int = 0


class _HubError(Exception):
    """An HTTP error answer; raised anywhere in a handler, turned into a response by the dispatcher."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}  # more fields of the JSON body


class _Drop(Exception):
    """Close the connection without answering."""


class FakeHub:
    """An in-memory Hub on 127.0.0.1; see the module docstring for what it emulates."""

    username = "fake-user"
    lfs_threshold = 1024 * 1024  # bytes; at or above this size preupload answers "lfs"
    multipart_chunk_size: int | None = None  # LFS files larger than this are uploaded in parts
    page_size = 1000  # entries per page of tree and commit listings (Link header pagination)
    redirect_lfs_downloads = False

    def __init__(self, tokens: set[str] | None = None) -> None:
        self.tokens = set(tokens) if tokens is not None else None
        self.endpoint = ""
        self.requests: list[tuple[str, str]] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._failures: list[list] = []  # [path_contains, status, times_left, method]
        self._uploads: dict[str, dict] = {}  # signature -> pending LFS upload
        self._signatures: dict[str, tuple[tuple[str, str], str]] = {}  # CDN signature -> (repo key, oid)
        self._counter = 0
        self._responsive = threading.Event()
        self._responsive.set()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> "FakeHub":
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True  # idle keep-alive connections must not keep the process alive
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # A short poll interval keeps stop() fast (shutdown waits for the serve loop to notice).
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="FakeHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (later connections are refused) and close open connections. Idempotent."""
        self._stopping.set()
        self._responsive.set()  # release handlers parked by set_unresponsive
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # The client pools keep-alive connections: close them so their handler threads end too.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- test hooks ----------------------------------------------------------------------------------

    def fail_next(self, path_contains: str, status: int, times: int = 1, method: str | None = None) -> None:
        """The next ``times`` requests whose path (query included) contains ``path_contains`` (and whose
        method is ``method``, if given) are answered ``status`` instead of being served. ``status=0``
        closes the connection without an answer (the client sees a protocol/network error)."""
        with self._lock:
            self._failures.append([path_contains, status, times, method.upper() if method else None])

    def set_unresponsive(self, unresponsive: bool = True) -> None:
        """While set, requests are read but never answered (until cleared or ``stop()``)."""
        if unresponsive:
            self._responsive.clear()
        else:
            self._responsive.set()

    def files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """Stored content at a revision (branch, tag or sha). Raises KeyError if unknown."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            sha = self._resolve(repo, revision)
            if sha is None:
                raise KeyError(f"{repo_id} has no revision {revision!r}")
            return {path: blob.data for path, blob in repo.commits[sha].files.items()}

    def commits(self, repo_id: str, revision: str | None = None, *, repo_type: str = "model") -> list[str]:
        """Commit shas, oldest first: every commit of the repository, or with ``revision`` the history
        (first parents) of that revision. The first one is the initial ``.gitattributes`` commit."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            if revision is None:
                return list(repo.order)
            sha = self._resolve(repo, revision)
            if sha is None:
                raise KeyError(f"{repo_id} has no revision {revision!r}")
            return list(reversed(self._history(repo, sha)))

    def is_lfs(self, repo_id: str, path: str, revision: str = "main", *, repo_type: str = "model") -> bool:
        """Whether ``path`` is stored through LFS at ``revision``."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return repo.commits[self._resolve(repo, revision)].files[path].lfs

    # -- state helpers (called with the lock held) ---------------------------------------------------

    def _resolve(self, repo: _Repo, revision: str) -> str | None:
        for name in (revision, revision.removeprefix("refs/heads/")):
            if name in repo.branches:
                return repo.branches[name]
        if revision.removeprefix("refs/tags/") in repo.tags:
            return repo.tags[revision.removeprefix("refs/tags/")]
        rev = revision.lower()
        if rev in repo.commits:
            return rev
        if len(rev) >= 7 and all(c in "0123456789abcdef" for c in rev):
            matches = [sha for sha in repo.order if sha.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        return None

    def _history(self, repo: _Repo, sha: str) -> list[str]:
        out = []
        while sha is not None:
            out.append(sha)
            sha = repo.commits[sha].parent
        return out

    def _new_commit(self, repo: _Repo, parent: str | None, files: dict[str, _Blob], title: str,
                    description: str = "") -> _Commit:
        self._counter += 1
        # Unique even for identical content: git shas differ by author date; a counter does it here.
        seed = f"{repo.repo_type}/{repo.repo_id}\n{parent}\n{self._counter}\n{time.time_ns()}\n{title}\n"
        seed += "\n".join(f"{path} {blob.git_oid}" for path, blob in sorted(files.items()))
        sha = hashlib.sha1(seed.encode()).hexdigest()
        message = title + (f"\n\n{description}" if description else "")
        commit = _Commit(sha, parent, title, message, _now(), dict(files))
        repo.commits[sha] = commit
        repo.order.append(sha)
        return commit

    def _gitattributes(self) -> bytes:
        return "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{_TYPE_TO_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _wants_lfs(self, path: str, size: int, sample: bytes) -> bool:
        if size == 0:
            return False  # the client forces empty files to "regular" anyway
        name = path.rsplit("/", 1)[-1]
        return (size >= self.lfs_threshold or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)
                or b"\0" in sample)


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx pools connections

    # -- plumbing ------------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence the per-request stderr log
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        # The whole body is read before any answer, even an error: an unread body would be parsed as
        # the next request on this keep-alive connection.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes | dict | list | None = None, headers: dict | None = None,
              content_type: str = "application/json", length: int | None = None) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        body = body or b""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        raw_path, _, self.query = self.path.partition("?")
        with hub._lock:
            hub.requests.append((method, raw_path))
        try:
            self.body = self._read_body()
            while not hub._responsive.wait(0.05):
                pass
            if hub._stopping.is_set():
                raise _Drop
            self._inject_failure(method)
            self._route(method, raw_path)
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except _HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, {"error": err.message, **err.extra}, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _inject_failure(self, method: str) -> None:
        with self.hub._lock:
            for failure in self.hub._failures:
                contains, status, _, only_method = failure
                if contains in self.path and (only_method is None or only_method == method):
                    failure[2] -= 1
                    if failure[2] <= 0:
                        self.hub._failures.remove(failure)
                    break
            else:
                return
        if status == 0:
            raise _Drop
        raise _HubError(status, f"Injected failure ({status})")

    # -- auth ----------------------------------------------------------------------------------------

    def _authenticated(self) -> bool:
        """True if a valid token was sent; raises 401 for a wrong one (the Hub refuses those everywhere)."""
        tokens = self.hub.tokens
        header = self.headers.get("Authorization")
        if tokens is None:
            return True
        if header is None:
            return False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in tokens:
            # This exact message makes the client raise a plain HfHubHTTPError(401), not RepoNotFound.
            raise _HubError(401, "Invalid credentials in Authorization header")
        return True

    def _require_write(self) -> None:
        if not self._authenticated():
            raise _HubError(401, "You must be authenticated to access this resource")

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> _Repo:
        """The repository, honouring auth: call with the hub lock held."""
        if write:
            self._require_write()
        authenticated = self._authenticated()
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authenticated):
            # Anonymous readers cannot tell a private repository from a missing one (401 like the Hub).
            status = 404 if authenticated else 401
            raise _HubError(status, "Repository not found", "RepoNotFound")
        return repo

    def _commit_at(self, repo: _Repo, revision: str) -> _Commit:
        sha = self.hub._resolve(repo, revision)
        if sha is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    # -- routing -------------------------------------------------------------------------------------

    def _route(self, method: str, raw_path: str) -> None:
        # Segments are split before unquoting: revisions are sent quoted with safe="" (refs%2Fpr%2F1) and
        # a tree path is one quoted segment, while resolve paths keep their slashes.
        segs = [unquote(s) for s in raw_path.split("/")[1:]]
        if segs and segs[0] == "api":
            return self._route_api(method, segs[1:])
        if segs and segs[0] == "__lfs__":
            return self._route_internal_lfs(method, segs[1:])
        repo_type = "model"
        if segs and segs[0] in _PREFIX_TO_TYPE:
            repo_type, segs = _PREFIX_TO_TYPE[segs[0]], segs[1:]
        if len(segs) >= 6 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{segs[0]}/{segs[1][:-4]}"
            if method == "POST" and segs[5] == "batch":
                return self._lfs_batch(repo_type, repo_id)
            if method == "POST" and segs[5] == "verify":
                return self._lfs_verify(repo_type, repo_id)
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(repo_type, f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
        raise _HubError(404, f"No route for {method} {raw_path}")

    def _route_api(self, method: str, segs: list[str]) -> None:
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if segs == ["validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if segs == ["whoami-v2"] and method == "GET":
            if not self._authenticated() or self.headers.get("Authorization") is None:
                raise _HubError(401, "Invalid credentials in Authorization header")
            return self._send(200, {"type": "user", "name": self.hub.username, "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if len(segs) == 2 and segs[0] in _API_TYPES:
            raise _HubError(404, "Repository not found (FakeHub ids are namespace/name)", "RepoNotFound")
        if len(segs) < 3 or segs[0] not in _API_TYPES:
            raise _HubError(404, f"No route for {method} /api/{'/'.join(segs)}")
        repo_type, repo_id, rest = _API_TYPES[segs[0]], f"{segs[1]}/{segs[2]}", segs[3:]
        action = rest[0] if rest else ""
        arg = rest[1] if len(rest) > 1 else "main"
        if action.startswith("xet-"):
            raise _HubError(501, "FakeHub does not implement Xet storage: set "
                                 "huggingface_hub.constants.HF_HUB_DISABLE_XET = True in the test")
        routes = {
            ("GET", ""): lambda: self._repo_info(repo_type, repo_id, "main"),
            ("GET", "revision"): lambda: self._repo_info(repo_type, repo_id, arg),
            ("GET", "tree"): lambda: self._tree(repo_type, repo_id, arg, "/".join(rest[2:])),
            ("POST", "paths-info"): lambda: self._paths_info(repo_type, repo_id, arg),
            ("GET", "refs"): lambda: self._refs(repo_type, repo_id),
            ("GET", "commits"): lambda: self._list_commits(repo_type, repo_id, arg),
            ("POST", "preupload"): lambda: self._preupload(repo_type, repo_id, arg),
            ("POST", "commit"): lambda: self._commit(repo_type, repo_id, arg),
            ("POST", "branch"): lambda: self._create_branch(repo_type, repo_id, arg),
            ("DELETE", "branch"): lambda: self._delete_branch(repo_type, repo_id, arg),
            ("POST", "tag"): lambda: self._create_tag(repo_type, repo_id, arg),
            ("DELETE", "tag"): lambda: self._delete_tag(repo_type, repo_id, arg),
            ("PUT", "settings"): lambda: self._settings(repo_type, repo_id),
        }
        route = routes.get((method, action))
        if route is None:
            raise _HubError(404, f"No route for {method} /api/{'/'.join(segs)}")
        return route()

    def _json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError:
            raise _HubError(400, "Body is not valid JSON") from None

    def _params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    # -- repositories --------------------------------------------------------------------------------

    def _create_repo(self) -> None:
        self._require_write()
        payload = self._json()
        repo_type = payload.get("type") or "model"
        if repo_type not in _TYPE_TO_PREFIX:
            raise _HubError(400, f"Invalid repo type {repo_type!r}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or self.hub.username
        if not name or "/" in name:
            raise _HubError(400, f"Invalid repo name {name!r}")
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        hub = self.hub
        with hub._lock:
            existing = hub._repos.get((repo_type, repo_id))
            if existing is not None:
                # create_repo(exist_ok=True) reads "url" from this 409 body, as from a 200.
                raise _HubError(409, f"You already created this {repo_type} repo",
                                extra={"url": hub._repo_url(existing)})
            repo = _Repo(repo_type, repo_id, private, _now())
            hub._repos[(repo_type, repo_id)] = repo
            initial = hub._new_commit(repo, None, {".gitattributes": _Blob.make(hub._gitattributes(), False)},
                                      "initial commit")
            repo.branches["main"] = initial.sha
            url = hub._repo_url(repo)
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        self._require_write()
        payload = self._json()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.username}/{payload.get('name')}"
        with self.hub._lock:
            self._repo(repo_type, repo_id, write=True)
            del self.hub._repos[(repo_type, repo_id)]
        self._send(200, {})

    def _settings(self, repo_type: str, repo_id: str) -> None:
        payload = self._json()
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            elif "private" in payload:
                repo.private = bool(payload["private"])
        self._send(200, {})

    def _validate_yaml(self) -> None:
        # Only the front-matter framing is checked: the standard library has no YAML parser.
        content = self._json().get("content", "")
        lines = content.splitlines()
        if lines and lines[0].strip() == "---" and "---" not in [line.strip() for line in lines[1:]]:
            self._send(400, {"errors": [{"message": "front matter is not closed by '---'"}], "warnings": []},
                       {"X-Error-Message": "Invalid metadata"})
            return
        self._send(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        blobs = self._params().get("blobs", ["false"])[0].lower() in ("1", "true")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_at(repo, revision)
            siblings = []
            for path, blob in sorted(commit.files.items()):
                sibling: dict = {"rfilename": path}
                if blobs:
                    sibling |= {"size": len(blob.data), "blobId": blob.git_oid}
                    if blob.lfs:
                        sibling["lfs"] = {"size": len(blob.data), "sha256": blob.sha256,
                                          "pointerSize": blob.pointer_size}
                siblings.append(sibling)
            info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                    "author": repo_id.split("/")[0], "sha": commit.sha, "lastModified": commit.date,
                    "createdAt": repo.created_at, "private": repo.private, "gated": False, "disabled": False,
                    "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                    "usedStorage": sum(len(b.data) for c in repo.commits.values() for b in c.files.values())}
        self._send(200, info)

    # -- trees ---------------------------------------------------------------------------------------

    def _entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict | None:
        files = commit.files
        if path in files:
            blob = files[path]
            entry = {"type": "file", "oid": blob.git_oid, "size": len(blob.data), "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": blob.pointer_size}
        else:
            children = sorted((p, b.git_oid) for p, b in files.items() if p.startswith(path + "/"))
            if not children:
                return None
            oid = hashlib.sha1(repr(children).encode()).hexdigest()
            entry = {"type": "directory", "oid": oid, "size": 0, "path": path}
        if expand:
            last = self._last_commit(repo, commit, path)
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return entry

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str) -> _Commit:
        # The newest commit (first-parent history) that changed `path` or anything under it.
        def view(c: _Commit | None) -> list:
            if c is None:
                return []
            return sorted((p, b.git_oid) for p, b in c.files.items() if p == path or p.startswith(path + "/"))

        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if view(current) != view(parent):
                return current
            current = parent
        return current

    def _page(self, items: list, base_query: dict[str, list[str]]) -> None:
        # Cursor pagination with a GitHub-style Link header, which the client follows.
        start = int(base_query.pop("cursor", ["0"])[0] or 0)
        size = max(1, int(self.hub.page_size))
        page = items[start:start + size]
        headers = {}
        if start + size < len(items):
            query = urlencode([(k, v) for k, vs in base_query.items() for v in vs] + [("cursor", start + size)])
            path = self.path.partition("?")[0]
            headers["Link"] = f'<{self.hub.endpoint}{path}?{query}>; rel="next"'
        self._send(200, page, headers)

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        params = self._params()
        recursive = params.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = params.get("expand", ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_at(repo, revision)
            prefix = f"{path}/" if path else ""
            if path and not any(p.startswith(prefix) for p in commit.files):
                raise _HubError(404, f"Directory {path} not found", "EntryNotFound",
                                {"X-Repo-Commit": commit.sha})
            names: set[str] = set()
            for file_path in commit.files:
                if not file_path.startswith(prefix):
                    continue
                parts = file_path[len(prefix):].split("/")
                depth = len(parts) if recursive else 1
                for i in range(1, depth + 1):
                    names.add(prefix + "/".join(parts[:i]))
            entries = [self._entry(repo, commit, name, expand) for name in sorted(names)]
        self._page(entries, params)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        # The client posts a form (paths=a&paths=b&expand=...), not JSON.
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            form = {k: v if isinstance(v, list) else [str(v)] for k, v in self._json().items()}
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
        expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_at(repo, revision)
            entries = [self._entry(repo, commit, p.strip("/"), expand) for p in form.get("paths", [])]
        self._send(200, [e for e in entries if e is not None])  # unknown paths are left out, as on the Hub

    def _refs(self, repo_type: str, repo_id: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                        for n, s in repo.branches.items() if not n.startswith("refs/pr/")]
            prs = [{"name": n, "ref": n, "targetCommit": s}
                   for n, s in repo.branches.items() if n.startswith("refs/pr/")]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in repo.tags.items()]
        self._send(200, {"branches": branches, "converts": [], "tags": tags, "pullRequests": prs})

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_at(repo, revision)
            items = [{"id": c.sha, "authors": [{"user": self.hub.username}], "date": c.date, "title": c.title,
                      "message": c.message}
                     for c in (repo.commits[s] for s in self.hub._history(repo, commit.sha))]
        self._page(items, self._params())

    # -- refs ----------------------------------------------------------------------------------------

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        start = self._json().get("startingPoint")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            if branch in repo.branches:
                raise _HubError(409, f"Reference refs/heads/{branch} already exists")
            repo.branches[branch] = self._commit_at(repo, start or "main").sha
        self._send(200, {})

    def _delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            if branch == "main":
                raise _HubError(403, "Cannot delete the default branch")
            if repo.branches.pop(branch, None) is None:
                raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        self._send(200, {})

    def _create_tag(self, repo_type: str, repo_id: str, revision: str) -> None:
        tag = self._json().get("tag")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            if not tag:
                raise _HubError(400, "Missing tag name")
            if tag in repo.tags:
                raise _HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = self._commit_at(repo, revision).sha
        self._send(200, {})

    def _delete_tag(self, repo_type: str, repo_id: str, tag: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            if repo.tags.pop(tag, None) is None:
                raise _HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        self._send(200, {})

    # -- uploads -------------------------------------------------------------------------------------

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        files = self._json().get("files")
        if not isinstance(files, list):
            raise _HubError(400, "Expected a 'files' list")
        answers = []
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            commit = self._commit_at(repo, revision)
            for item in files:
                path, size = item.get("path"), item.get("size")
                if not isinstance(path, str) or not isinstance(size, int):
                    raise _HubError(400, "Each file needs a 'path' and a 'size'")
                sample = base64.b64decode(item.get("sample") or "")
                existing = commit.files.get(path)
                answers.append({
                    "path": path,
                    "uploadMode": "lfs" if self.hub._wants_lfs(path, size, sample) else "regular",
                    "shouldIgnore": False,
                    # Lets the client drop unchanged files from the commit, as the Hub does.
                    "oid": existing.local_oid if existing is not None else None,
                })
        self._send(200, {"files": answers, "commitOid": commit.sha})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        payload = self._json()
        hub = self.hub
        objects, multipart = [], False
        with hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            if payload.get("operation") != "upload":
                raise _HubError(400, "FakeHub only implements the LFS upload operation")
            for obj in payload.get("objects", []):
                oid, size = obj.get("oid"), obj.get("size")
                if not (isinstance(oid, str) and len(oid) == 64 and isinstance(size, int)):
                    objects.append({"oid": str(oid), "size": int(size or 0),
                                    "error": {"code": 422, "message": "Invalid oid or size"}})
                    continue
                if oid in repo.lfs:
                    objects.append({"oid": oid, "size": size})  # no "actions": already stored upstream
                    continue
                sig = secrets.token_urlsafe(16)
                hub._uploads[sig] = {"repo": (repo_type, repo_id), "oid": oid, "size": size, "parts": {}}
                verify = {"href": f"{hub._repo_url(repo)}.git/info/lfs/objects/verify"}
                chunk = hub.multipart_chunk_size
                if chunk and size > chunk:
                    # Multipart: one pre-signed URL per part under numeric keys plus chunk_size in the
                    # header; "href" is then the completion endpoint.
                    multipart = True
                    nparts = -(-size // chunk)
                    header = {str(i): f"{hub.endpoint}/__lfs__/part/{sig}/{i}" for i in range(1, nparts + 1)}
                    header["chunk_size"] = str(chunk)
                    upload = {"href": f"{hub.endpoint}/__lfs__/complete/{sig}", "header": header}
                else:
                    upload = {"href": f"{hub.endpoint}/__lfs__/upload/{sig}"}
                objects.append({"oid": oid, "size": size, "authenticated": True,
                                "actions": {"upload": upload, "verify": verify}})
        self._send(200, {"transfer": "multipart" if multipart else "basic", "objects": objects},
                   content_type="application/vnd.git-lfs+json")

    def _store_lfs(self, sig: str, data: bytes) -> None:
        hub = self.hub
        with hub._lock:
            upload = hub._uploads.get(sig)
            if upload is None:
                raise _HubError(403, "Unknown or expired upload URL")
            if len(data) != upload["size"] or hashlib.sha256(data).hexdigest() != upload["oid"]:
                raise _HubError(400, "Uploaded content does not match the announced oid/size")
            repo = hub._repos.get(upload["repo"])
            if repo is None:
                raise _HubError(404, "Repository not found", "RepoNotFound")
            repo.lfs[upload["oid"]] = data
            del hub._uploads[sig]

    def _lfs_verify(self, repo_type: str, repo_id: str) -> None:
        payload = self._json()
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            data = repo.lfs.get(payload.get("oid"))
            if data is None or len(data) != payload.get("size"):
                raise _HubError(404, "LFS object not found")
        self._send(200, {"success": True})

    def _route_internal_lfs(self, method: str, segs: list[str]) -> None:
        # Stand-ins for pre-signed storage URLs: the signature in the path is the credential.
        hub = self.hub
        if method == "PUT" and len(segs) == 2 and segs[0] == "upload":
            self._store_lfs(segs[1], self.body)
            return self._send(200, b"", content_type="text/plain")
        if method == "PUT" and len(segs) == 3 and segs[0] == "part":
            with hub._lock:
                upload = hub._uploads.get(segs[1])
                if upload is None:
                    raise _HubError(403, "Unknown or expired upload URL")
                etag = hashlib.md5(self.body).hexdigest()
                upload["parts"][etag] = self.body
            return self._send(200, b"", {"ETag": f'"{etag}"'}, content_type="text/plain")
        if method == "POST" and len(segs) == 2 and segs[0] == "complete":
            parts = sorted(self._json().get("parts", []), key=lambda p: p["partNumber"])
            with hub._lock:
                upload = hub._uploads.get(segs[1])
                if upload is None:
                    raise _HubError(403, "Unknown or expired upload URL")
                try:
                    data = b"".join(upload["parts"][p["etag"].strip('"')] for p in parts)
                except KeyError:
                    raise _HubError(400, "Completion lists a part that was not uploaded") from None
            self._store_lfs(segs[1], data)
            return self._send(200, {"success": True})
        if method in ("GET", "HEAD") and len(segs) == 2 and segs[0] == "cdn":
            with hub._lock:
                found = hub._signatures.get(segs[1])
                repo = hub._repos.get(found[0]) if found else None
                data = repo.lfs.get(found[1]) if repo else None
            if data is None:
                raise _HubError(403, "Signature expired")
            return self._send_content(data, {"ETag": f'"{found[1]}"'})
        raise _HubError(404, f"No route for {method} /__lfs__/{'/'.join(segs)}")

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        create_pr = self._params().get("create_pr", ["0"])[0] in ("1", "true")
        try:
            items = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _HubError(400, "Body is not NDJSON") from None
        if not items or items[0].get("key") != "header":
            raise _HubError(400, "The first NDJSON line must be the commit header")
        header = items[0].get("value", {})
        title = header.get("summary") or ""
        if not title:
            raise _HubError(400, "Commit summary is required")
        hub = self.hub
        with hub._lock:
            repo = self._repo(repo_type, repo_id, write=True)
            base = self._commit_at(repo, revision)
            branch = revision.removeprefix("refs/heads/")
            if not create_pr and branch not in repo.branches:
                raise _HubError(400, f"Can only commit to a branch, not to {revision!r}")
            parent = header.get("parentCommit")
            if parent and not base.sha.startswith(parent.lower()):
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(base.files)
            for item in items[1:]:
                key, value = item.get("key"), item.get("value", {})
                path = str(value.get("path", "")).strip("/")
                if not path:
                    raise _HubError(400, f"Operation {key!r} without a path")
                if key == "file":
                    raw = value.get("content", "")
                    data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                    files[path] = _Blob.make(data, lfs=False)
                elif key == "lfsFile":
                    data = repo.lfs.get(value.get("oid"))
                    if data is None or ("size" in value and value["size"] != len(data)):
                        raise _HubError(422, f"LFS object {value.get('oid')} of {path} was not uploaded")
                    files[path] = _Blob.make(data, lfs=True)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise _HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise _HubError(400, f"Unknown commit operation {key!r}")
            commit = hub._new_commit(repo, base.sha, files, title, header.get("description") or "")
            pr_url = None
            if create_pr:
                repo.pr_count += 1
                branch = f"refs/pr/{repo.pr_count}"
                pr_url = f"{hub._repo_url(repo)}/discussions/{repo.pr_count}"
            repo.branches[branch] = commit.sha
            url = f"{hub._repo_url(repo)}/commit/{commit.sha}"
        self._send(200, {"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": pr_url})

    # -- downloads -----------------------------------------------------------------------------------

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.hub
        with hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_at(repo, revision)
            blob = commit.files.get(path)
            if blob is None:
                # X-Repo-Commit lets the client cache the absence (.no_exist/<sha>/<path>).
                raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
            headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.etag}"'}
            if blob.lfs:
                headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": len(blob.data)}
                if hub.redirect_lfs_downloads:
                    sig = secrets.token_urlsafe(16)
                    hub._signatures[sig] = ((repo_type, repo_id), blob.sha256)
                    location = f"http://localhost:{hub.port}/__lfs__/cdn/{sig}"
                    return self._send(302, b"", {**headers, "Location": location}, content_type="text/plain")
        self._send_content(blob.data, headers)

    def _send_content(self, data: bytes, headers: dict) -> None:
        headers = {"Accept-Ranges": "bytes", **headers}
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and "," not in rng:
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            start = int(start_s) if start_s else max(0, len(data) - int(end_s))
            end = int(end_s) if (end_s and start_s) else len(data) - 1
            if start >= len(data) or start > end:
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, "text/plain")
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")


__all__ = ["FakeHub", "LFS_PATTERNS"]
