"""Experiment tracking: the only module that imports mlflow.

A tracker is passed into the code that logs; library users get :class:`NullTracker`. When the
MLflow store cannot be opened or stops answering, the run goes on and says tracking is off.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

EXPERIMENT = "kdci-repro"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_provenance(cwd: Path | None = None) -> dict[str, str]:
    """The commit the code ran at and whether the work tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit or "unknown", "git_dirty": str(dirty).lower()}


class NullTracker:
    """Records nothing; what the library uses unless a tracker is given."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def finish(self, failed: bool = False) -> None: ...
    def register_model(self, name: str, folder: Path, tags: Mapping[str, str], alias: str) -> None: ...


class MlflowTracker(NullTracker):
    """One MLflow run: tags, params, per-epoch metrics and artefacts."""

    def __init__(self, run_name: str, tags: Mapping[str, str], uri: str | None = None,
                 experiment: str = EXPERIMENT) -> None:
        import mlflow

        self._mlflow = mlflow
        self.uri = uri or default_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment)
        self._run = mlflow.start_run(run_name=run_name, tags=dict(tags))
        self.run_id = self._run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        clipped = {key[:250]: str(value)[:_MAX_PARAM_CHARS] for key, value in params.items()}
        items = list(clipped.items())
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self._mlflow.log_params(dict(items[start:start + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # MLflow metric keys allow '/', so names like "synthesis/onehot" group in the UI.
        self._mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=folder)

    def log_text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def finish(self, failed: bool = False) -> None:
        self._mlflow.end_run(status="FAILED" if failed else "FINISHED")

    def register_model(self, name: str, folder: Path, tags: Mapping[str, str], alias: str) -> None:
        """Log the artefact folder (safetensors weights included) as this run's ``model`` artifacts and
        register it as a new version of ``name`` with ``alias`` (MLflow aliases; stages are deprecated)."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._mlflow.log_artifacts(str(folder), artifact_path="model")
        client = MlflowClient(self.uri)
        try:
            client.create_registered_model(name, description="kdci-repro models of one dataset, pair and method")
        except MlflowException:  # already registered: add a version
            pass
        version = client.create_model_version(name, source=f"{self._run.info.artifact_uri}/model", run_id=self.run_id,
                                              tags={key: str(value) for key, value in tags.items()})
        client.set_registered_model_alias(name, alias, version.version)


class _GuardedTracker(NullTracker):
    """Wraps a tracker so that a failing store turns tracking off instead of failing the run."""

    def __init__(self, inner: NullTracker) -> None:
        self._inner, self.run_id = inner, inner.run_id

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        if self._inner is None:
            return
        try:
            getattr(self._inner, name)(*args, **kwargs)
        except Exception as exc:  # any store failure: keep training, stop tracking
            print(f"note: MLflow tracking is off for the rest of this run ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''})")
            self._inner = None

    def log_params(self, params: Mapping[str, Any]) -> None: self._call("log_params", params)
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: self._call("log_metrics", metrics, step)
    def log_artifact(self, path: Path, folder: str | None = None) -> None: self._call("log_artifact", path, folder)
    def log_text(self, text: str, name: str) -> None: self._call("log_text", text, name)
    def finish(self, failed: bool = False) -> None: self._call("finish", failed)
    def register_model(self, name: str, folder: Path, tags: Mapping[str, str], alias: str) -> None:
        self._call("register_model", name, folder, tags, alias)


def open_tracker(run_name: str, tags: Mapping[str, str]) -> NullTracker:
    """An MLflow tracker for a stage run, or a null one (with a note) if the store cannot be opened."""
    uri = default_tracking_uri()
    try:
        return _GuardedTracker(MlflowTracker(run_name, tags, uri))
    except Exception as exc:  # locked/unreachable store, bad URI: the run must not be lost for it
        print(f"note: MLflow tracking is off: could not open {uri} ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''}); set MLFLOW_TRACKING_URI to a working store")
        return NullTracker()


def registered_name(config: Mapping[str, Any]) -> str:
    """Registry name of an artefact: dataset, pair and method (+ ``-kdci``), e.g.
    ``digits-digits_cnn_large-digits_cnn_small-dafl-kdci``; teachers: ``digits-digits_cnn_large-teacher``."""
    data, arch = config["data"]["name"], config["architecture"]["name"]
    if config.get("role") != "student":
        return f"{data}-{arch}-teacher"
    method = config["method"]
    base = method.get("base", method)["name"]
    return f"{data}-{config['teacher']['architecture']['name']}-{arch}-{base}" + ("-kdci" if "kdci" in method else "")


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(default_tracking_uri())


def tag_published(model_dir: Path, repo_id: str, revision: str) -> None:
    """Tag the registered versions holding ``model_dir``'s weights with the Hub repo id and revision."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    sha = config["files"]["model.safetensors"]
    try:
        client = _client()
        tagged = 0
        for version in client.search_model_versions(f"name = '{registered_name(config)}'"):
            if version.tags.get("weights_sha256") == sha:
                client.set_model_version_tag(version.name, version.version, "hub_repo_id", repo_id)
                client.set_model_version_tag(version.name, version.version, "hub_revision", revision)
                tagged += 1
        if not tagged:
            print(f"note: no MLflow model version holds {model_dir}'s weights; nothing tagged")
    except Exception as exc:  # the upload happened; a store problem must not hide that
        print(f"note: MLflow registry not updated ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")


def list_registry() -> list[dict[str, str]]:
    """Every registered model version: name, version, aliases, run, seed, Hub repo id and revision."""
    client = _client()
    rows = []
    for model in client.search_registered_models():
        aliases = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for version in client.search_model_versions(f"name = '{model.name}'"):
            rows.append({"name": model.name, "version": str(version.version),
                         "aliases": ",".join(sorted(aliases.get(str(version.version), []))), "run_id": version.run_id,
                         "hub": version.tags.get("hub_repo_id", ""), "revision": version.tags.get("hub_revision", "")})
    return sorted(rows, key=lambda row: (row["name"], int(row["version"])))


def format_registry(rows: list[dict[str, str]]) -> str:
    if not rows:
        return f"no registered models in {default_tracking_uri()}: run the pipeline with tracking on"
    lines = ["| model | version | aliases | run | Hub repository | revision |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['version']} | {r['aliases']} | {r['run_id'][:8]} | {r['hub'] or '—'} | "
              f"{r['revision'][:10] or '—'} |" for r in rows]
    return "\n".join(lines)
