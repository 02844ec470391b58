"""``repro audit RUN_ID|METRICS_JSON``: how a recorded number was produced, from the MLflow record.

Given a run id, or a metrics JSON a stage wrote, prints the run (name, status, times), its pipeline
execution's parent run, the code (git commit, dirty flag), the
DVC stage and command, tags, the operative gin bindings, the final metrics, the artefacts, the
teacher and student weights (sha256) and the registered model version. For an evaluation it also
names the run that trained the evaluated weights (the registered version holding the same sha256).
The store is read through :mod:`repro.tracking`, the only module that talks to MLflow.

A metrics JSON names no run (a rerun with the same seed must write the same bytes): the run that
wrote it is the one tagged ``metrics_sha256`` = the sha256 of the file's bytes, searched for in every
experiment of the store; several such runs (bit-identical reruns) are listed, the newest is shown.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from repro.errors import UserError
from repro.tracking import runs as tracking

_RUN_ID = re.compile(r"[0-9a-f]{32}")
# Tags shown on their own lines, not again under "tags".
_SHOWN = {"stage", "dvc_stage", "command", "git_commit", "git_dirty", "weights_sha256", "teacher_weights_sha256",
          tracking.PIPELINE_KEY_TAG}
_CHECKED_METRICS = ("top1", "top5", "intervention_off_top1")  # metrics JSON keys the run logs as test/<key>


def _path_forms(path: Path) -> list[str]:
    """The ways a stage may have been given ``path`` (its ``metrics_file`` tag): as typed, normalised,
    absolute, and relative to the working directory."""
    absolute = Path(os.path.abspath(path))
    forms = [str(path), os.path.normpath(path), str(absolute), str(path.resolve())]
    for base in (Path.cwd(), Path.cwd().resolve()):
        try:
            forms.append(str(absolute.relative_to(base)))
        except ValueError:
            pass
    return list(dict.fromkeys(forms))


def _writers(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """``(sha256 of the file, runs that wrote exactly these bytes, newest first)``; a one-line
    :class:`UserError` naming the fix when no run in the store did."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    uri, writers = tracking.runs_tagged("metrics_sha256", [sha])
    if writers:
        return sha, writers
    _, named = tracking.runs_tagged("metrics_file", _path_forms(path))
    fix = "re-run the stage with tracking on, or set MLFLOW_TRACKING_URI to the store that recorded it"
    if named:
        newest = named[0]
        raise UserError(f"no run in {uri} wrote the current bytes of {path} (sha256 {sha}): the file was changed "
                        f"or written by a run not in this store; {len(named)} run(s) wrote "
                        f"{newest['tags'].get('metrics_file', path)} here, the newest is {newest['run_id']} "
                        f"({newest['name']}): {fix}")
    raise UserError(f"no run in {uri} wrote {path} (no run tagged with its sha256 {sha} or its path): written with "
                    f"tracking off or recorded in another store: {fix}")


def resolve(reference: str) -> tuple[str, dict[str, Any] | None, str | None, list[str]]:
    """``(run id, metrics JSON, its sha256, ids of every run that wrote those bytes, newest first)`` for
    a metrics JSON path (the run is the newest writer); ``(run id, None, None, [])`` for a run id."""
    path = Path(reference)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise UserError(f"metrics file {path} does not exist: give a run id or a metrics JSON a stage wrote")
        try:
            metrics = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path} is not a JSON file: give a run id or a metrics JSON a stage wrote") from None
        sha, writers = _writers(path)
        return writers[0]["run_id"], metrics if isinstance(metrics, dict) else {}, sha, [w["run_id"] for w in writers]
    if not _RUN_ID.fullmatch(reference):
        raise UserError(f"{reference!r} is neither an MLflow run id (32 hex digits) nor a metrics JSON file")
    return reference, None, None, []


def _when(millis: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(millis / 1000)) if millis else "-"


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _version(version: dict[str, Any]) -> str:
    aliases = f", alias {', '.join(version['aliases'])}" if version["aliases"] else ""
    hub = f", on the Hub as {version['tags']['hub_repo_id']}" if version["tags"].get("hub_repo_id") else ""
    return f"{version['name']} version {version['version']}{aliases}{hub}"


def format_record(record: dict[str, Any], metrics_file: dict[str, Any] | None = None,
                  metrics_path: str | None = None, metrics_sha256: str | None = None,
                  writers: list[str] | tuple[str, ...] = ()) -> str:
    """The audit text of :func:`repro.tracking.run_record`'s dict."""
    tags = record["tags"]
    lines: list[str] = []

    def row(label: str, text: str) -> None:
        lines.append(f"{label:<15}{text}")

    duration = (f", {(record['end_time'] - record['start_time']) / 1000:.1f} s"
                if record["end_time"] and record["start_time"] else "")
    row("run", f"{record['run_id']}  {record['name']}")
    row("status", f"{record['status']} (started {_when(record['start_time'])}{duration})")
    row("store", f"{record['store']} (experiment {record['experiment']})")
    parent = record["parent"]
    row("pipeline run", f"{parent['run_id']}  {parent['name']} ({parent['status']}; execution "
                        f"{parent['tags'].get(tracking.PIPELINE_KEY_TAG, '?')})" if parent else
        "none (a standalone invocation, not part of a pipeline execution)")
    row("git commit", f"{tags.get('git_commit', 'unknown')} (uncommitted changes: {tags.get('git_dirty', 'unknown')})")
    row("dvc stage", f"{tags.get('dvc_stage', 'none')} (stage {tags.get('stage', '?')})")
    row("command", record["command"] or "(not recorded)")
    teacher_run = tags.get("stage") == "teacher" or tags.get("role") == "teacher"
    row("teacher sha256" if teacher_run else "student sha256", tags.get("weights_sha256", "(not recorded)"))
    if tags.get("teacher_weights_sha256"):
        row("teacher sha256", tags["teacher_weights_sha256"])
    for version in record["registered"]:
        row("registered", _version(version))
    for producer in record["producers"]:
        run = producer.get("run") or {}
        made_by = run.get("tags", {})
        row("weights from", f"{_version(producer)}, trained by run {producer['run_id']} ({run.get('name', '?')}; "
                            f"dvc stage {made_by.get('dvc_stage', '?')}; git {made_by.get('git_commit', '?')[:12]})")
    if tags.get("weights_sha256") and not record["registered"] and not record["producers"]:
        row("registered", "no model version holds these weights")
    if metrics_file is not None:
        written_as = tags.get("metrics_file")
        as_ = f" as {written_as}" if written_as and written_as != str(metrics_path) else ""
        row("metrics file", f"{metrics_path} (sha256 {metrics_sha256}: these exact bytes were written by this run{as_})"
            if metrics_sha256 else str(metrics_path))
        if len(writers) > 1:
            lines.append(f"  {len(writers)} runs wrote these exact bytes: {', '.join(writers)} "
                         "(bit-identical reruns; newest first, the newest shown)")
        for key in _CHECKED_METRICS:
            if key in metrics_file and f"test/{key}" in record["metrics"]:
                logged = record["metrics"][f"test/{key}"]
                verdict = "matches" if abs(float(metrics_file[key]) - logged) < 1e-6 else "DIFFERS from"
                lines.append(f"  {key} {metrics_file[key]} {verdict} the run's logged test/{key} {_number(logged)}")
    row("tags", "  ".join(f"{k}={v}" for k, v in sorted(tags.items()) if k not in _SHOWN))
    lines.append(f"final metrics ({len(record['metrics'])})")
    lines += [f"  {name} = {_number(value)}" for name, value in sorted(record["metrics"].items())]
    lines.append(f"params: operative gin bindings ({len(record['params'])})")
    lines += [f"  {name} = {value}" for name, value in sorted(record["params"].items())]
    lines.append(f"artefacts ({len(record['artifacts'])})")
    lines += [f"  {item['path']}" + (f"  ({item['size']} bytes)" if item.get("size") is not None else "")
              for item in record["artifacts"]]
    return "\n".join(lines)


def audit(reference: str) -> str:
    """The audit text for a run id or a metrics JSON path."""
    run_id, metrics, sha, writers = resolve(reference)
    return format_record(tracking.run_record(run_id), metrics, reference if metrics is not None else None, sha, writers)
