"""Publish artefacts to the Hugging Face Hub, pull them back, load them.

One Hub repository per model (the teacher and every student): the Hub's model card, ``model-index``
results and revision history are per repository, and a student is then loadable by one id. The
repository holds exactly the local artefact (``config.json``, ``model.safetensors``,
``operative_config.gin``, ``confounder_dictionary.safetensors`` for KDCI students, the
``substitution_sample.safetensors`` that ``repro diagnose`` reads), the model's
``metrics.json`` and a ``README.md`` card whose front matter lists the sha256 of every other file.

Safety: only ``*.json``, ``*.safetensors``, ``*.gin`` and ``README.md`` are ever downloaded (no
pickles); every downloaded file is checked against the card's checksums and config.json's digests
before it is copied into ``models/``; the copy is made under a temporary name and renamed, so an
interrupted pull leaves nothing half-written. Repository ids and revisions are names, never paths: they
are validated (:func:`split_reference`, :func:`validate_repo_id`, :func:`validate_revision`) before any
Hub call or local write, and a pulled model is only ever placed inside the folder the command names
(:func:`repo_folder`). The token comes from ``HF_TOKEN`` or the Hub's own
login (``hf auth login``) through huggingface_hub, and is never printed, logged or written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from repro import artefact, io
from repro.errors import UserError
from repro.kdci import model as _kdci_model  # noqa: F401  (registers how a KDCI student is rebuilt)
from repro.registry.card import (
    CARD_FILE,
    METRICS_FILE,
    read_card_checksums,
    render_card,
)

ALLOWED_PATTERNS = ["*.json", "*.safetensors", "*.gin", CARD_FILE]
T = TypeVar("T")


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


# What the Hub allows in a repository name (huggingface_hub's validator enforces the same 96).
NAME_LIMIT = 96
# A revision is a branch or tag name or a commit sha, never a path: a conservative subset of git's
# ref-name rules (``git check-ref-format``), checked before huggingface_hub writes ``refs/<revision>``
# into its cache (stack notes: a revision with ``../`` writes outside it).
_REVISION_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
REVISION_LIMIT = 255  # a ref is a file under .git/refs: one path component's worth
ID_FIX = f"write ORG/NAME (ASCII letters, digits, '-', '_', '.'; NAME at most {NAME_LIMIT} characters)"
_REF_NAME = "(letters, digits, '.', '_', '-', parts joined by single '/')"


def _repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` is not an ``ORG/NAME`` we can use, or None."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id

    if not repo_id:
        return "it is empty"
    if any(char.isspace() or not char.isprintable() for char in repo_id):
        return "it contains whitespace or a control character"
    parts = repo_id.split("/")
    if len(parts) != 2:
        return f"it has {len(parts) - 1} '/', ORG/NAME has exactly one"
    if any(part in ("", ".", "..") for part in parts):
        return "ORG and NAME must be names, not empty, '.' or '..'"
    if len(parts[1]) > NAME_LIMIT:
        return f"NAME is {len(parts[1])} characters, the Hub allows {NAME_LIMIT}"
    try:
        hub_validate_repo_id(repo_id)
    except HFValidationError as exc:  # the rules the Hub itself applies (characters, '--', '..', '.git')
        return str(exc).replace(f": '{repo_id}'", "").rstrip(".")
    return None


def validate_repo_id(repo_id: str, fix: str = ID_FIX) -> str:
    """``repo_id`` if it is a usable ``ORG/NAME``; otherwise a :class:`UserError` naming it and ``fix``."""
    problem = _repo_id_problem(repo_id)
    if problem:
        raise UserError(f"{repo_id!r} is not a Hub model id ({problem}): {fix}")
    return repo_id


def _revision_problem(revision: str) -> str | None:
    """Why ``revision`` is not a branch, tag or commit name, or None."""
    if not revision:
        return "it is empty"
    if len(revision) > REVISION_LIMIT:
        return f"it is {len(revision)} characters, at most {REVISION_LIMIT}"
    if not _REVISION_CHARS.fullmatch(revision):
        bad = sorted({char for char in revision if not _REVISION_CHARS.fullmatch(char)})
        return f"it contains {', '.join(map(repr, bad))}"
    if ".." in revision:
        return "it contains '..'"
    if revision.startswith("-"):
        return "it starts with '-'"
    parts = revision.split("/")
    if "" in parts:
        return "it starts or ends with '/' or contains '//'"
    if any(part.startswith(".") or part.endswith((".", ".lock")) for part in parts):
        return "a part starts with '.' or ends with '.' or '.lock'"
    return None


def validate_revision(revision: str, branch: bool = False, where: str = "") -> str:
    """``revision`` if it is a branch or tag name (or, unless ``branch``, a 40-hex commit sha);
    otherwise a :class:`UserError`. Never a path: it is checked before any Hub call or cache write."""
    problem = _revision_problem(revision)
    if problem is None and branch and _COMMIT_SHA.fullmatch(revision):
        problem = "a commit sha cannot receive commits"
    if problem:
        kind, fix = (("a branch", f"give a branch name {_REF_NAME}") if branch else
                     ("a branch, tag or commit", f"give a branch or tag name {_REF_NAME} or a 40-hex commit sha"))
        raise UserError(f"revision {revision!r}{where} is not {kind} name ({problem}): {fix}")
    return revision


def split_reference(reference: str) -> tuple[str, str | None]:
    """``ORG/NAME[@REVISION]`` -> (repo id, revision or None), both validated."""
    repo_id, at, revision = reference.partition("@")
    validate_repo_id(repo_id, f"{ID_FIX}, optionally followed by @REVISION")
    if at:
        validate_revision(revision, where=f" in {reference!r}")
    return repo_id, revision or None


def _partial(folder: Path) -> Path:
    """The sibling a folder is assembled in before it is renamed into place."""
    return folder.with_name(f".{folder.name}.partial")


def repo_folder(root: Path, repo_id: str) -> Path:
    """``root/<ORG>--<NAME>``, where a repository is placed locally; refused (before anything is
    written) unless it and its partial sibling resolve inside ``root``, e.g. through a link."""
    folder = Path(root) / validate_repo_id(repo_id).replace("/", "--")
    base = Path(root).resolve()
    for path in (folder, _partial(folder)):
        resolved = path.resolve()
        if resolved == base or not resolved.is_relative_to(base):
            raise UserError(f"{path} resolves to {resolved}, outside {root}: remove that link or choose another "
                            "output folder; nothing was written")
    return folder


def _hub_call(action: str, call: Callable[[], T], endpoint: str, repo_id: str, attempts: int = 3,
              backoff: float = 1.0) -> T:
    """Run a Hub call; retry connection failures and 5xx answers with exponential backoff; map the
    client's exceptions to one-line :class:`UserError` messages (never including the token)."""
    import httpx2 as httpx  # huggingface_hub 2.x speaks httpx2 (stack notes)
    from huggingface_hub import errors

    for attempt in range(attempts):
        try:
            return call()
        except errors.RepositoryNotFoundError:
            raise UserError(f"{action}: {repo_id} does not exist on {endpoint} or your token cannot see it: check "
                            "the id, and HF_TOKEN / `hf auth login` for private repositories") from None
        except errors.RevisionNotFoundError:
            raise UserError(f"{action}: {repo_id} has no such revision on {endpoint}: check the @REVISION") from None
        except errors.LocalEntryNotFoundError:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise UserError(f"{action}: {repo_id} is not in the local cache and HF_HUB_OFFLINE is set: "
                                "pull it once online") from None
            # snapshot_download reports an unreachable Hub (refused connection, 5xx) this way: retry it.
            if attempt == attempts - 1:
                raise UserError(f"{action}: the Hub at {endpoint} does not answer and {repo_id} is not in the "
                                "local cache: check the network or HF_ENDPOINT; nothing was written locally") from None
        except errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise UserError(f"{action}: the Hub at {endpoint} refused the request ({status}): set HF_TOKEN or "
                                f"run `hf auth login` with a token allowed to write to {repo_id.split('/')[0]}") from None
            if status is not None and status < 500 or attempt == attempts - 1:
                raise UserError(f"{action}: the Hub at {endpoint} answered {status} for {repo_id}: "
                                "try again later; nothing was written locally") from None
        except (httpx.TransportError, OSError) as exc:
            if attempt == attempts - 1:
                raise UserError(f"{action}: the Hub at {endpoint} does not answer ({type(exc).__name__}): check the "
                                "network or HF_ENDPOINT; nothing was written locally") from None
        time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def stage_folder(model_dir: Path, repo_id: str, out_dir: Path, metrics_dir: Path = Path("metrics"),
                 results_path: Path = Path("reports/results.json")) -> Path:
    """Write the repository content for ``model_dir`` into ``out_dir`` (the ``--dry-run`` output)."""
    model_dir = Path(model_dir)
    config = artefact.read_config(model_dir)
    artefact.load_artefact(model_dir)  # refuses incomplete or corrupt artefacts before anything is staged
    partial = _partial(out_dir)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in [artefact.CONFIG_FILE, *config["files"]]:  # every file config.json vouches for
        shutil.copy2(model_dir / name, partial / name)
    metrics = _metrics_of(model_dir, config, metrics_dir)
    (partial / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    checksums = {path.name: io.sha256_of(path) for path in sorted(partial.iterdir())}
    (partial / CARD_FILE).write_text(render_card(repo_id, config, metrics, results, checksums,
                                                 _paired_metrics(config, metrics_dir)))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return out_dir


def _cell(config: artefact.ArtefactRecord, metrics_dir: Path):
    """The pipeline cell (baseline method, teacher seed, seed) a student belongs to, with its metrics paths."""
    from repro.pipeline.runset import run_for

    return run_for(config.base_method, config.teacher_seed or 0, config.seed or 0, metrics=metrics_dir)


def _metrics_of(model_dir: Path, config: artefact.ArtefactRecord, metrics_dir: Path) -> dict[str, Any]:
    if config.role == "teacher":
        from repro.pipeline.runset import teacher_metrics

        path = teacher_metrics(config.seed or 0, metrics_dir)
    else:
        cell = _cell(config, metrics_dir)
        path = {"kdci": cell.kdci_metrics, "control": cell.control_metrics}.get(config.arm, cell.baseline_metrics)
    if not path.exists():
        raise UserError(f"{path} is missing: evaluate {model_dir} first (`dvc repro evaluate`), the card's "
                        "numbers come from it")
    metrics = json.loads(path.read_text())
    if Path(metrics.get("model", "")).resolve() != model_dir.resolve():
        raise UserError(f"{path} describes {metrics.get('model')}, not {model_dir}: re-run the evaluation")
    return metrics


def _paired_metrics(config: artefact.ArtefactRecord, metrics_dir: Path) -> dict[str, float]:
    """Top-1 of the same seed's baseline and KDCI students (the card's per-seed comparison)."""
    if config.role != "student":
        return {}
    cell = _cell(config, metrics_dir)
    return {label: json.loads(path.read_text())["top1"]
            for label, path in (("baseline", cell.baseline_metrics), ("kdci", cell.kdci_metrics)) if path.exists()}


def publish(model_dir: Path, repo_id: str, *, revision: str | None = None, private: bool = False,
            dry_run: bool = False, out_dir: Path | None = None, endpoint: str | None = None,
            token: str | None = None, metrics_dir: Path = Path("metrics"),
            results_path: Path = Path("reports/results.json"), backoff: float = 1.0) -> dict[str, str]:
    """Stage ``model_dir`` as a Hub repository and (unless ``dry_run``) upload it.

    Returns ``{"repo_id", "revision" (commit sha), "folder"}``; with ``dry_run`` the folder is kept at
    ``out_dir`` (default ``hub/<ORG>--<NAME>``) and nothing is sent. The id and the revision (a branch)
    are checked before anything is written or sent.
    """
    validate_repo_id(repo_id)
    if revision is not None:
        validate_revision(revision, branch=True)
    folder = Path(out_dir) if out_dir else repo_folder(Path("hub"), repo_id)
    if not dry_run:
        folder = Path(tempfile.mkdtemp(prefix="kdci-publish-")) / repo_id.replace("/", "--")
    stage_folder(model_dir, repo_id, folder, metrics_dir, results_path)
    if dry_run:
        print(f"dry run: {folder} holds what would be uploaded to {repo_id} (card: {folder / CARD_FILE})")
        return {"repo_id": repo_id, "revision": "", "folder": str(folder)}
    from huggingface_hub import HfApi

    url = _endpoint(endpoint)
    api = HfApi(endpoint=url, token=token)
    try:
        _hub_call("publish", lambda: api.create_repo(repo_id, private=private, exist_ok=True), url, repo_id,
                  backoff=backoff)
        if revision and revision != "main":
            _hub_call("publish", lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), url, repo_id,
                      backoff=backoff)
        info = _hub_call("publish", lambda: api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), revision=revision, allow_patterns=ALLOWED_PATTERNS,
            commit_message=f"kdci-repro: publish {Path(model_dir).as_posix()}"), url, repo_id, backoff=backoff)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    sha = getattr(info, "oid", None) or ""
    print(f"published {model_dir} -> {url}/{repo_id} (revision {sha or revision or 'main'})")
    return {"repo_id": repo_id, "revision": sha, "folder": ""}


def pull(reference: str, models_dir: Path = Path("models/hub"), *, endpoint: str | None = None,
         token: str | None = None, cache_dir: Path | None = None, backoff: float = 1.0) -> Path:
    """Download ``ORG/NAME[@REVISION]`` (cached; ``HF_HUB_OFFLINE`` honoured), verify every file, and
    place it at ``models_dir/<ORG>--<NAME>`` (replaced as a whole). Returns that folder. The reference and
    the destination are checked before any Hub call or local write."""
    from huggingface_hub import snapshot_download

    repo_id, revision = split_reference(reference)
    target = repo_folder(Path(models_dir), repo_id)
    url = _endpoint(endpoint)
    snapshot = Path(_hub_call("pull", lambda: snapshot_download(
        repo_id, revision=revision, allow_patterns=ALLOWED_PATTERNS, cache_dir=cache_dir, endpoint=url,
        token=token), url, repo_id, backoff=backoff))
    verify_folder(snapshot, reference)
    partial = _partial(target)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for path in snapshot.iterdir():
            if path.is_file():
                shutil.copy2(path.resolve(), partial / path.name)  # cache entries are symlinks to blobs
        verify_folder(partial, reference)
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"pulled {reference} -> {target}")
    return target


def verify_folder(folder: Path, reference: str) -> dict[str, Any]:
    """Check a downloaded repository: card checksums, config digests, loadable weights."""
    card = folder / CARD_FILE
    if not card.exists():
        raise UserError(f"{reference} has no {CARD_FILE}: it was not published by repro; refusing to load it")
    checksums = read_card_checksums(card.read_text())
    if not checksums:
        raise UserError(f"{reference}: its card lists no checksums; refusing files that cannot be verified")
    for name, expected in checksums.items():
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:  # a card is remote input
            raise UserError(f"{reference}: its card lists {name!r}, not a file name of the repository; refusing it")
        path = folder / name
        if not path.exists():
            raise UserError(f"{reference}: {name} listed in the card was not downloaded; pull again")
        if io.sha256_of(path) != expected:
            raise UserError(f"{reference}: {name} does not match the sha256 in the card: corrupt or tampered "
                            "download; remove it from the cache and pull again")
    artefact.load_artefact(folder)  # config.json's own digests and the safetensors weights
    return checksums


def load_student(reference: str, *, endpoint: str | None = None, token: str | None = None,
                 models_dir: Path = Path("models/hub")):
    """``load_student("ORG/NAME[@REV]")`` or ``load_student("models/kdci/dafl/seed0")`` -> ``(model, config)``: a
    ready ``nn.Module`` in eval mode (a ``DeconfoundedStudent`` with its dictionary for KDCI students). A local
    artefact folder is loaded as it is (its digests checked); anything else is pulled from the Hub first."""
    if Path(reference).is_dir():
        return artefact.load_artefact(Path(reference))
    return artefact.load_artefact(pull(reference, models_dir, endpoint=endpoint, token=token))


def card_metrics(folder: Path) -> dict[str, Any]:
    """The metrics file published with the model (the card's numbers)."""
    return json.loads((Path(folder) / METRICS_FILE).read_text())
