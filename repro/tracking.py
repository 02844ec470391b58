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


def open_tracker(run_name: str, tags: Mapping[str, str]) -> NullTracker:
    """An MLflow tracker for a stage run, or a null one (with a note) if the store cannot be opened."""
    uri = default_tracking_uri()
    try:
        return _GuardedTracker(MlflowTracker(run_name, tags, uri))
    except Exception as exc:  # locked/unreachable store, bad URI: the run must not be lost for it
        print(f"note: MLflow tracking is off: could not open {uri} ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''}); set MLFLOW_TRACKING_URI to a working store")
        return NullTracker()
