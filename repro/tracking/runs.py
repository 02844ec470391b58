"""Experiment tracking: with :mod:`repro.tracking.store`, the only modules that import mlflow.

A tracker is passed into the code that logs; library users get :class:`~repro.train.hooks.NullTracker`.
A store that cannot be used stops the command before it trains (one ``error:`` line); one that fails
mid-run turns tracking off with one ``note:`` and the training goes on; the run is never left
RUNNING. :mod:`repro.tracking.store` gives the reasons and opens a new store safely under concurrency.

Stage runs of one pipeline execution are nested under a parent run (MLflow's ``mlflow.parentRunId``
tag). ``dvc repro`` starts every stage as its own process, so the execution is identified by
:func:`pipeline_key`: ``REPRO_PIPELINE_RUN`` when set, else the nearest ``dvc`` ancestor process.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from repro.artefact import ArtefactRecord, read_config
from repro.errors import UserError
from repro.tracking import store
from repro.train.hooks import Tracker

EXPERIMENT = "kdci-repro"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
PIPELINE_ENV = "REPRO_PIPELINE_RUN"
PIPELINE_KEY_TAG = "pipeline_key"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
NOTE_TAG = "mlflow.note.content"  # the run description the MLflow UI shows and edits
# Tags worth a word in a run's description, in the order they are told.
_DESCRIBED = ("method", "kdci", "network", "pair", "dataset", "teacher_seed", "seed", "profile", "dvc_stage")
# The UI opens an experiment in its GenAI view ("Evaluation runs") unless told it holds model training.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# Tags a parent run copies from its first stage: what the whole execution shares.
_PIPELINE_TAGS = ("git_commit", "git_dirty", "profile", "experiment")
# How long the end of a run waits for a store that failed (a SQLite writer holding the file, a server
# restarting) before leaving the close to the next command; each try may itself wait 20 s (SQLite).
CLOSE_WAIT_S = 60.0


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


def standard_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` plus MLflow's own system tags (``mlflow.user``, ``mlflow.source.name``/``type``,
    ``mlflow.source.git.commit``), which the UI shows as the run's user, source and version.

    Written here rather than by ``mlflow.tracking.context.registry.resolve_tags``: its context
    providers import GitPython and probe for notebooks and Databricks on every run (0.3 s of a stage's
    start-up, issue 16), and the commit is already known (:func:`git_provenance`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry or login name (some containers)
        user = "unknown"
    system = {"mlflow.user": user, "mlflow.source.type": "LOCAL",
              "mlflow.source.name": " ".join(tags.get("command", command_line()).split()[:2]),
              NOTE_TAG: run_description(tags)}
    if tags.get("git_commit", "unknown") != "unknown":
        system["mlflow.source.git.commit"] = tags["git_commit"]
    return {**system, **tags}


def run_description(tags: Mapping[str, str]) -> str:
    """The run's description in the MLflow UI (``mlflow.note.content``): what the stage ran, on what,
    and the command that ran it."""
    facts = [f"{name.replace('_', ' ')} {tags[name]}" for name in _DESCRIBED if tags.get(name) not in (None, "", "none")]
    what = f"Stage `{tags.get('stage', 'run')}`" + (f" ({', '.join(facts)})" if facts else "")
    return f"{what}. Command: `{tags.get('command', command_line())}`."


def command_line() -> str:
    """The command this process runs, as a user would type it (``repro distill --gin ...``)."""
    ours = bool(sys.argv) and Path(sys.argv[0]).name in ("repro", "cli.py")  # console script or -m repro.cli
    return shlex.join(["repro", *sys.argv[1:]] if ours else sys.argv)


def _process(pid: int) -> tuple[str, int, str, list[str]] | None:
    """``(comm, parent pid, start time in clock ticks since boot, argv)`` from /proc, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields after it start at the last ')'.
    comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    return comm, int(fields[1]), fields[19], [arg.decode(errors="replace") for arg in argv if arg]


def _is_dvc(comm: str, argv: list[str]) -> bool:
    # `dvc` is a Python script: comm is "dvc" and argv is [python, .../dvc, verb]; `python -m dvc` too.
    program = Path(argv[0]).name if argv else ""
    script = Path(argv[1]).name if len(argv) > 1 else ""
    by_python = program.startswith("python") and (script == "dvc" or argv[1:3] == ["-m", "dvc"])
    return comm == "dvc" or program == "dvc" or by_python


def pipeline_key(environ: Mapping[str, str] | None = None) -> str | None:
    """Which pipeline execution this process belongs to, or None when it runs on its own.

    ``REPRO_PIPELINE_RUN`` (set by a user or CI) wins. Otherwise the nearest ``dvc`` ancestor
    process: its pid and start time (and the boot id) name one ``dvc repro`` / ``dvc exp run``
    execution; each queued experiment runs under its own ``dvc exp exec-run`` process.
    """
    environ = os.environ if environ is None else environ
    if environ.get(PIPELINE_ENV):
        return re.sub(r"[^\w.:@/+-]", "_", environ[PIPELINE_ENV])[:200]  # safe inside a search filter
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return None  # no /proc (macOS, Windows): only the environment variable groups runs
    pid = os.getppid()
    for _ in range(64):  # a bounded walk up to init
        found = _process(pid) if pid > 1 else None
        if found is None:
            return None
        comm, parent, started, argv = found
        if _is_dvc(comm, argv):
            return f"dvc:{boot}:{pid}:{started}"
        pid = parent
    return None


def pipeline_parent(client: Any, uri: str, experiment_id: str, key: str, tags: Mapping[str, str]) -> str:
    """The parent run of pipeline execution ``key``: found by its key tag, else created (named
    ``pipeline <commit> <date>``, with the stage's commit, profile and experiment) by the first stage
    to ask; a file lock keeps two processes of this machine from both creating it."""
    with store.machine_lock("pipeline", uri, key):
        found = client.search_runs([experiment_id], f"tags.{PIPELINE_KEY_TAG} = '{key}' and tags.stage = 'pipeline'",
                                   order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            parent = found[0].info.run_id
            client.update_run(parent, status="RUNNING")  # a stage of it runs again
            return parent
        name = f"pipeline {tags.get('git_commit', 'unknown')[:7]} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        shared = {name_: tags[name_] for name_ in _PIPELINE_TAGS if name_ in tags}
        run = client.create_run(experiment_id, run_name=name, tags={
            "stage": "pipeline", PIPELINE_KEY_TAG: key, **shared,
            NOTE_TAG: "One pipeline execution; its stage runs are nested under it."})
        return run.info.run_id


class MlflowTracker(Tracker):
    """One MLflow run: tags, params, per-epoch metrics and artefacts; nested under the parent run of
    its pipeline execution when ``pipeline`` (a :func:`pipeline_key`) is given.

    Opening a store that cannot be used raises :class:`UserError` (before the stage trains; see
    :mod:`repro.tracking.store`). A store that fails mid-run turns tracking off for the rest of the
    run (one ``note:`` on stderr) instead of failing the training: every recording method goes
    through :meth:`_guarded`. The run still ends FINISHED or FAILED, never RUNNING: :meth:`finish`
    waits up to ``close_wait_s`` for the store, and if it still fails leaves the close to the next
    command that opens the store.

    Runs are written through ``MlflowClient`` with an explicit run id (no fluent active run): a
    failing store cannot leave a half-ended run active in this process for the next stage to trip on.
    """

    def __init__(self, run_name: str, tags: Mapping[str, str], uri: str | None = None,
                 experiment: str = EXPERIMENT, pipeline: str | None = None, close_wait_s: float = CLOSE_WAIT_S) -> None:
        self.uri = uri or default_tracking_uri()
        self.close_wait_s = close_wait_s
        self._client = store.open_store(self.uri)
        tags = dict(tags)
        self.parent_id = None
        try:
            with store.quiet():
                experiment_id = _experiment_id(self._client, self.uri, experiment)
                if pipeline is not None:
                    self.parent_id = pipeline_parent(self._client, self.uri, experiment_id, pipeline, tags)
                    tags.update({PARENT_TAG: self.parent_id, PIPELINE_KEY_TAG: pipeline})
                run = self._client.create_run(experiment_id, run_name=run_name, tags=standard_tags(tags))
        except Exception as exc:  # the store answered the open but refuses a write: locked, read-only
            raise store.store_error(self.uri, exc) from None
        self.run_id = run.info.run_id
        self._artifact_uri = run.info.artifact_uri
        self._stage = tags.get("dvc_stage") if tags.get("dvc_stage", "none") != "none" else tags.get("stage", run_name)
        self._off: str | None = None  # why tracking stopped mid-run, once it has

    def _guarded(self, record: Callable[[], Any]) -> None:
        if self._off is not None:
            return
        try:
            with store.quiet():
                record()
        except Exception as exc:  # any store failure: keep training, stop tracking
            self._off = store.first_line(exc)
            store.note(f"MLflow tracking is off for the rest of run {self.run_id}: {self.uri} failed ({self._off}); "
                       "the training goes on and the run is closed when the store answers again")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._guarded(lambda: self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key[:250], str(value)[:_MAX_PARAM_CHARS]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self._guarded(lambda batch=items[start:start + 100]: self._client.log_batch(self.run_id, params=batch))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        # MLflow metric keys allow '/', so names like "synthesis/onehot" group in the UI.
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        self._guarded(lambda: self._client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._guarded(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path=folder))

    def log_text(self, text: str, name: str) -> None:
        self._guarded(lambda: self._client.log_text(self.run_id, text, name))

    def finish(self, failed: bool = False) -> None:
        """End the run FINISHED or FAILED (and its pipeline parent with it). A store that fails now
        is waited for up to ``close_wait_s``; after that the close is kept for the next command
        that opens this store, with this moment as the run's end time."""
        entry = {"run_id": self.run_id, "status": "FAILED" if failed else "FINISHED",
                 "end_time": int(time.time() * 1000), "parent_id": self.parent_id, "stage": self._stage,
                 "incomplete": self._off}
        try:
            if store.wait_and_close(self._client, self.uri, entry, self.close_wait_s):
                return
        except KeyboardInterrupt:  # a second Ctrl-C while waiting: keep the close for later, then stop
            self._close_later(entry)
            raise
        self._close_later(entry)

    def _close_later(self, entry: dict[str, Any]) -> None:
        store.remember_close(self.uri, entry)
        store.note(f"MLflow run {self.run_id} is still open in {self.uri} (the store does not answer); the next repro "
                   f"command that opens this store records it as {entry['status']}")

    def register_model(self, name: str, folder: Path, tags: Mapping[str, str], alias: str) -> None:
        """Log the artefact folder (safetensors weights included) as this run's ``model`` artifacts and
        register it as a new version of ``name`` with ``alias`` (MLflow aliases; stages are deprecated)."""
        self._guarded(lambda: self._register_model(name, folder, tags, alias))

    def _register_model(self, name: str, folder: Path, tags: Mapping[str, str], alias: str) -> None:
        from mlflow.exceptions import MlflowException

        self._client.log_artifacts(self.run_id, str(folder), artifact_path="model")
        try:
            self._client.create_registered_model(name, description="kdci-repro models of one dataset, pair and method")
        except MlflowException:  # already registered: add a version
            pass
        version = self._client.create_model_version(name, source=f"{self._artifact_uri}/model", run_id=self.run_id,
                                                    tags={key: str(value) for key, value in tags.items()})
        self._client.set_registered_model_alias(name, alias, version.version)


def _experiment_id(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing (by whichever process asks first)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # a store made before the tag was set
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # another process created it just now


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artefacts of a SQLite store's experiment go in ``mlruns/<experiment>/`` beside the database
    file, not into whatever folder the command that created it ran in (MLflow's default,
    ``./mlruns``, e.g. the checkout when the store is elsewhere); None: the store decides."""
    path = store.sqlite_file(uri)
    return (path.parent / "mlruns" / experiment).as_uri() if path is not None else None


def open_tracker(run_name: str, tags: Mapping[str, str]) -> Tracker:
    """An MLflow tracker for a stage run (nested under its pipeline execution's parent run, if any)
    on :func:`default_tracking_uri`; a one-line :class:`UserError` if that store cannot be used."""
    return MlflowTracker(run_name, tags, default_tracking_uri(), pipeline=pipeline_key())


def registered_name(record: ArtefactRecord) -> str:
    """Registry name of an artefact: dataset, pair and method (+ ``-kdci``), e.g.
    ``digits-digits_cnn_large-digits_cnn_small-dafl-kdci``; teachers: ``digits-digits_cnn_large-teacher``."""
    data = record["data"]["name"]
    if record.role != "student":
        return f"{data}-{record.network}-teacher"
    arm = "" if record.arm == "baseline" else f"-{record.arm}"
    return f"{data}-{record.teacher_network}-{record.network}-{record.base_method}{arm}"


@contextlib.contextmanager
def _reading(uri: str) -> Iterator[Any]:
    """A client on the existing store ``uri`` for a command that reads it (audit, registry); any
    failure of the store, now or while reading, is one :class:`UserError` naming the fix."""
    client = store.open_store(uri, create=False)
    try:
        with store.quiet():
            yield client
    except UserError:
        raise
    except Exception as exc:  # locked, unreachable, or refused mid-read
        raise store.store_error(uri, exc, store.READ_FIX) from None


def tag_published(model_dir: Path, repo_id: str, revision: str) -> None:
    """Tag the registered versions holding ``model_dir``'s weights with the Hub repo id and revision."""
    config = read_config(model_dir)
    sha = config.weights_sha256
    try:
        with _reading(default_tracking_uri()) as client:
            tagged = 0
            for version in client.search_model_versions(f"name = '{registered_name(config)}'"):
                if version.tags.get("weights_sha256") == sha:
                    client.set_model_version_tag(version.name, version.version, "hub_repo_id", repo_id)
                    client.set_model_version_tag(version.name, version.version, "hub_revision", revision)
                    tagged += 1
        if not tagged:
            store.note(f"no MLflow model version holds {model_dir}'s weights; nothing tagged")
    except UserError as exc:  # the upload happened; a store problem must not hide that
        store.note(f"MLflow registry not updated: {exc}")


def list_registry() -> list[dict[str, str]]:
    """Every registered model version: name, version, aliases, run, seed, Hub repo id and revision."""
    rows = []
    with _reading(default_tracking_uri()) as client:
        for model in client.search_registered_models():
            aliases = {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            for version in client.search_model_versions(f"name = '{model.name}'"):
                rows.append({"name": model.name, "version": str(version.version),
                             "aliases": ",".join(sorted(aliases.get(str(version.version), []))),
                             "run_id": version.run_id, "hub": version.tags.get("hub_repo_id", ""),
                             "revision": version.tags.get("hub_revision", "")})
    return sorted(rows, key=lambda row: (row["name"], int(row["version"])))


def format_registry(rows: list[dict[str, str]]) -> str:
    if not rows:
        return f"no registered models in {default_tracking_uri()}: run the pipeline with tracking on"
    lines = ["| model | version | aliases | run | Hub repository | revision |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['version']} | {r['aliases']} | {r['run_id'][:8]} | {r['hub'] or '—'} | "
              f"{r['revision'][:10] or '—'} |" for r in rows]
    return "\n".join(lines)


def _run_summary(run: Any) -> dict[str, Any]:
    return {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
            "start_time": run.info.start_time, "end_time": run.info.end_time,
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "parent_id": run.data.tags.get(PARENT_TAG),
            "params": dict(run.data.params), "metrics": dict(run.data.metrics)}


def _version_summary(client: Any, version: Any) -> dict[str, Any]:
    aliases = client.get_model_version(version.name, version.version).aliases  # search results omit them
    return {"name": version.name, "version": str(version.version), "run_id": version.run_id,
            "aliases": sorted(aliases or []), "tags": dict(version.tags or {})}


def run_record(run_id: str) -> dict[str, Any]:
    """What the store holds about one run, for ``repro audit``: the run (name, status, tags, params,
    latest metrics), its artefact paths, its pipeline's parent run, the model versions it registered
    and, for a run that used weights it did not make (evaluation), the versions and runs that made them."""
    from mlflow.exceptions import MlflowException

    uri = default_tracking_uri()
    with _reading(uri) as client:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise UserError(f"no MLflow run {run_id!r} in {uri}: check the id (`mlflow ui` lists runs) or set "
                                "MLFLOW_TRACKING_URI to the store that recorded it") from None
            raise
        return _describe(client, uri, run)


def _describe(client: Any, uri: str, run: Any) -> dict[str, Any]:
    """:func:`run_record`'s dict of ``run``."""
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id

    def artifacts(path: str | None = None) -> list[dict[str, Any]]:
        found = []
        for item in client.list_artifacts(run_id, path):
            found += artifacts(item.path) if item.is_dir else [{"path": item.path, "size": item.file_size}]
        return found

    record = _run_summary(run)
    record.update(store=uri, experiment=client.get_experiment(run.info.experiment_id).name, artifacts=artifacts(),
                  command=run.data.tags.get("command", ""), parent=None, registered=[], producers=[])
    if record["parent_id"]:
        with contextlib.suppress(MlflowException):  # a deleted parent: the child still stands
            record["parent"] = _run_summary(client.get_run(record["parent_id"]))
    record["registered"] = [_version_summary(client, v) for v in client.search_model_versions(f"run_id = '{run_id}'")]
    sha = run.data.tags.get("weights_sha256", "")
    if sha and not record["registered"] and re.fullmatch(r"[0-9a-f]{64}", sha):
        for version in client.search_model_versions(f"tags.weights_sha256 = '{sha}'"):
            producer = _version_summary(client, version)
            with contextlib.suppress(MlflowException):
                producer["run"] = _run_summary(client.get_run(version.run_id))
            record["producers"].append(producer)
    return record


def runs_tagged(key: str, values: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """``(store uri, runs)``: the runs of every active experiment whose tag ``key`` is one of
    ``values``, newest first, as :func:`run_record`'s run summaries (how ``repro audit`` finds the
    run that wrote a metrics file)."""
    uri = default_tracking_uri()
    with _reading(uri) as client:
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        found: dict[str, Any] = {}
        for value in dict.fromkeys(values):
            if "'" in value or not experiments:
                continue  # not expressible in a search filter (a path with a quote)
            for run in client.search_runs(experiments, f"tags.{key} = '{value}'",
                                          order_by=["attributes.start_time DESC"]):
                found[run.info.run_id] = run
    newest = sorted(found.values(), key=lambda run: (run.info.start_time or 0, run.info.end_time or 0), reverse=True)
    return uri, [_run_summary(run) for run in newest]
