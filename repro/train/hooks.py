"""What the training code logs to: the tracker protocol and the tracker that records nothing.

A tracker is passed into the code that logs (the engine, the stages); only :mod:`repro.tracking`
implements one that writes somewhere, so nothing below the pipeline imports mlflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


class Tracker:
    """One recorded run: tags, params, per-step metrics, files, and its registered model.

    The interface, with every method a no-op; :mod:`repro.tracking` implements one that records.
    """

    run_id: str | None = None

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def finish(self, failed: bool = False) -> None: ...
    def register_model(self, name: str, folder: Path, tags: Mapping[str, str], alias: str) -> None: ...


class NullTracker(Tracker):
    """Records nothing; what the library uses unless a tracker is given."""
