"""A local Hugging Face Hub for the tests: the part of the Hub's HTTP API that ``repro publish`` and
``repro pull`` (repro/registry/hub.py) reach through the real ``huggingface_hub`` 2.4 client, on
127.0.0.1, standard library only::

    hub = FakeHub().start()
    api = HfApi(endpoint=hub.endpoint, token=False)
    ...
    hub.stop()

Served, for model repositories:

* publish: ``create_repo`` (the repository starts with the Hub's initial ``.gitattributes`` commit; an
  existing one answers 409 with its url, which ``exist_ok=True`` accepts), ``create_branch`` (409 if it
  exists), ``upload_folder``/``upload_file``: the README metadata check (``/api/validate-yaml``, always
  valid), ``preupload`` (``*.safetensors`` go through LFS, as the initial ``.gitattributes`` says), the
  LFS batch (an object already stored is not asked for again) with a pre-signed ``PUT`` that carries no
  Authorization header, as on S3, and the NDJSON commit.
* pull: ``repo_info`` (to resolve a branch to a sha), the recursive tree listing ``snapshot_download``
  reads, and ``HEAD``/``GET`` on ``/{repo}/resolve/{revision}/{path}`` with the headers the client caches
  by (``X-Repo-Commit``, ``ETag``, and ``X-Linked-Etag``/``X-Linked-Size`` for LFS files).
* A revision is a branch or a full commit sha; every commit gets a fresh sha, so a pinned sha keeps
  serving old content after later commits. Branch names are not checked (``feature/x`` works, and so
  does ``../../x``): the tests play a hostile endpoint with it, so the client must refuse such names.
* Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and
  ``X-Error-Message``, from which the client raises its typed exceptions.
* With ``tokens``, every request except the pre-signed ``PUT`` needs ``Authorization: Bearer <one of
  them>``; otherwise 401 "Invalid credentials in Authorization header", which the client raises as a
  plain ``HfHubHTTPError`` (not ``RepositoryNotFoundError``).

The caller passes ``endpoint=hub.endpoint`` and ``token=`` explicitly (``HF_ENDPOINT`` is read at import;
a developer's login must not reach the fake) and turns Xet off with
``huggingface_hub.constants.HF_HUB_DISABLE_XET = True`` (also read at import): Xet uploads bypass the
LFS endpoints served here.

Test hooks: :meth:`fail_next` (answer a status, or drop the connection with status 0), :meth:`stop`
(connections refused afterwards), :attr:`requests` (every request as ``(method, path)``), :meth:`files`
and :meth:`commits`. Answers are HTTP/1.0 (one connection per request), so no pooled connection
outlives :meth:`stop`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

LFS_PATTERN = "*.safetensors"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Repo:
    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}
    order: list[str] = field(default_factory=list)  # commit shas, oldest first
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha
    lfs: dict[str, bytes] = field(default_factory=dict)  # uploaded LFS objects: sha256 -> content


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


class FakeHub:
    """An in-memory Hub on 127.0.0.1; see the module docstring for what it serves."""

    username = "fake-user"

    def __init__(self, tokens: set[str] | None = None) -> None:
        self.tokens = set(tokens) if tokens is not None else None
        self.endpoint = ""
        self.requests: list[tuple[str, str]] = []
        self._repos: dict[str, _Repo] = {}
        self._uploads: dict[str, tuple[str, str, int]] = {}  # signature -> (repo id, sha256, size)
        self._failures: list[list] = []  # [path_contains, status, times_left]
        self._lock = threading.Lock()  # one request at a time (the client uploads LFS files in threads)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> FakeHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("_Bound", (_Handler,), {"hub": self}))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: later connections are refused. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail_next(self, path_contains: str, status: int, times: int = 1) -> None:
        """The next ``times`` requests whose path (query included) contains ``path_contains`` are answered
        ``status`` instead of being served; ``status=0`` closes the connection without an answer."""
        with self._lock:
            self._failures.append([path_contains, status, times])

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Content at a revision (branch or sha)."""
        with self._lock:
            repo = self._repos[repo_id]
            return dict(repo.commits[repo.branches.get(revision, revision)])

    def commits(self, repo_id: str) -> list[str]:
        """Every commit sha of the repository, oldest first (the first is the initial commit)."""
        with self._lock:
            return list(self._repos[repo_id].order)

    def _commit(self, repo: _Repo, branch: str, files: dict[str, bytes]) -> str:
        sha = secrets.token_hex(20)
        repo.commits[sha], repo.branches[branch] = files, sha
        repo.order.append(sha)
        return sha


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # no per-request stderr log
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        path = self.path.partition("?")[0]
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with hub._lock:
            hub.requests.append((method, path))
            try:
                for failure in hub._failures:
                    if failure[0] in self.path:
                        failure[2] -= 1
                        if failure[2] <= 0:
                            hub._failures.remove(failure)
                        if failure[1] == 0:
                            return  # the connection closes unanswered
                        raise _HubError(failure[1], f"Injected failure ({failure[1]})")
                self._route(method, [unquote(s) for s in path.split("/")[1:]])
            except _HubError as err:
                headers = {"X-Error-Message": err.message, **err.headers}
                if err.code:
                    headers["X-Error-Code"] = err.code
                self._send(err.status, err.body or {"error": err.message}, headers)

    def _route(self, method: str, segs: list[str]) -> None:
        if segs[0] == "__lfs__" and method == "PUT":  # a pre-signed upload URL: the signature is the credential
            return self._store_lfs(segs[1])
        if self.hub.tokens is not None:
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or token not in self.hub.tokens:
                raise _HubError(401, "Invalid credentials in Authorization header")
        if segs[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if segs[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._send(200, {"errors": [], "warnings": []})
        if segs[:2] == ["api", "models"] and len(segs) >= 4:
            repo_id, action, arg = f"{segs[2]}/{segs[3]}", (segs[4:] or [""])[0], (segs[5:] or ["main"])[0]
            route = {("GET", ""): self._repo_info, ("GET", "revision"): self._repo_info, ("GET", "tree"): self._tree,
                     ("POST", "branch"): self._create_branch, ("POST", "preupload"): self._preupload,
                     ("POST", "commit"): self._commit}.get((method, action))
            if route is not None:
                return route(self._repo(repo_id), arg)
        if len(segs) == 6 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{segs[0]}/{segs[1][:-4]}")
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(self._repo(f"{segs[0]}/{segs[1]}"), segs[3], "/".join(segs[4:]))
        raise _HubError(404, f"No route for {method} {self.path}")

    def _json(self) -> dict:
        return json.loads(self.body or b"{}")

    def _repo(self, repo_id: str) -> _Repo:
        if repo_id not in self.hub._repos:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return self.hub._repos[repo_id]

    def _sha(self, repo: _Repo, revision: str) -> str:
        sha = repo.branches.get(revision, revision)
        if sha not in repo.commits:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # -- publish -------------------------------------------------------------------------------------

    def _create_repo(self) -> None:
        payload = self._json()
        repo_id = f"{payload.get('organization') or self.hub.username}/{payload['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        if repo_id in self.hub._repos:
            raise _HubError(409, "You already created this model repo", body={"error": "exists", "url": url})
        repo = self.hub._repos[repo_id] = _Repo(repo_id)
        gitattributes = f"{LFS_PATTERN} filter=lfs diff=lfs merge=lfs -text\n".encode()
        self.hub._commit(repo, "main", {".gitattributes": gitattributes})
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _create_branch(self, repo: _Repo, branch: str) -> None:
        if branch in repo.branches:
            raise _HubError(409, f"Reference refs/heads/{branch} already exists")
        repo.branches[branch] = self._sha(repo, self._json().get("startingPoint") or "main")
        self._send(200, {})

    def _preupload(self, repo: _Repo, revision: str) -> None:
        self._sha(repo, revision)
        files = [{"path": f["path"], "shouldIgnore": False,
                  "uploadMode": "lfs" if fnmatch.fnmatch(f["path"].rsplit("/", 1)[-1], LFS_PATTERN) else "regular"}
                 for f in self._json()["files"]]
        self._send(200, {"files": files})

    def _lfs_batch(self, repo_id: str) -> None:
        repo, objects = self._repo(repo_id), []
        for obj in self._json()["objects"]:
            if obj["oid"] not in repo.lfs:  # no "actions": the object is already stored
                sig = secrets.token_urlsafe(16)
                self.hub._uploads[sig] = (repo_id, obj["oid"], obj["size"])
                obj = {**obj, "actions": {"upload": {"href": f"{self.hub.endpoint}/__lfs__/{sig}"}}}
            objects.append(obj)
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _store_lfs(self, sig: str) -> None:
        if sig not in self.hub._uploads:
            raise _HubError(403, "Unknown or expired upload URL")
        repo_id, oid, size = self.hub._uploads.pop(sig)
        if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
            raise _HubError(400, "Uploaded content does not match the announced oid and size")
        self._repo(repo_id).lfs[oid] = self.body
        self._send(200, b"", content_type="text/plain")

    def _commit(self, repo: _Repo, branch: str) -> None:
        lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        if branch not in repo.branches:  # the Hub commits to a branch only
            raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        files = dict(repo.commits[repo.branches[branch]])
        for item in lines[1:]:  # lines[0] is the header (summary, description)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile" and value["oid"] in repo.lfs:
                files[value["path"]] = repo.lfs[value["oid"]]
            else:
                raise _HubError(422, f"Unsupported or incomplete operation {item['key']} on {value.get('path')}")
        sha = self.hub._commit(repo, branch, files)
        url = f"{self.hub.endpoint}/{repo.repo_id}/commit/{sha}"  # the client parses the repo id out of it
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    # -- pull ----------------------------------------------------------------------------------------

    def _repo_info(self, repo: _Repo, revision: str) -> None:
        self._send(200, {"id": repo.repo_id, "sha": self._sha(repo, revision)})

    def _tree(self, repo: _Repo, revision: str) -> None:
        # Only the recursive listing of a flat repository (what publish uploads) is served.
        files = repo.commits[self._sha(repo, revision)]
        self._send(200, [{"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)}
                         for path, data in sorted(files.items())])

    def _resolve_file(self, repo: _Repo, revision: str, path: str) -> None:
        sha = self._sha(repo, revision)
        if path not in repo.commits[sha]:
            # X-Repo-Commit lets the client cache the absence.
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = repo.commits[sha][path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{_git_oid(data)}"'}
        if fnmatch.fnmatch(path.rsplit("/", 1)[-1], LFS_PATTERN):
            headers |= {"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": len(data)}
        self._send(200, data, headers, "application/octet-stream")


__all__ = ["LFS_PATTERN", "FakeHub"]
