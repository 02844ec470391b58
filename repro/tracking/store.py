"""Opening an MLflow tracking store safely, and closing runs a failing store left open.

Three faults, three answers:

* **First use under concurrency.** Several processes creating one new SQLite store at once (``dvc exp
  run --queue`` workers, parallel ``dvc repro`` stages) interleave MLflow's Alembic migrations and
  leave it half-migrated (``_alembic_tmp_*`` tables; runs lost, later ones untracked). So a store is
  opened (created, migrated, or checked to be at the schema head) under a file lock of this machine
  keyed on the store; the other processes wait, then find it ready.
* **A store that cannot be used at all** (an in-memory or unparsable URI, a folder that cannot hold
  the database, a corrupt or out-of-date database, a database locked beyond SQLite's wait, a server
  that does not answer) is a :class:`~repro.errors.UserError`, raised when a run opens: before the
  stage trains, so the command ends with one ``error:`` line naming the fix (set
  ``MLFLOW_TRACKING_URI`` to a usable store, or ``--no-track``) and nothing is lost. We chose an
  error over a ``note:`` because a note scrolls past in a long log and leaves every later stage
  silently untracked; stopping costs nothing when nothing has been trained yet.
* **A store that fails mid-run** (another process holds the SQLite file locked past MLflow's 20 s
  busy wait): see :class:`repro.tracking.runs.MlflowTracker`: one ``note:``, training goes on, and
  the run is closed when the store answers again, here (:func:`close_run`) or, when it still fails
  at the end of the run, by the next command that opens the store (:func:`remember_close`).

MLflow logs a traceback before it raises, and INFO lines when it creates a store; :func:`quiet`
holds those back so the user sees our one line instead. Locks and the list of runs to close live
in the temporary folder, keyed on the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from repro.errors import UserError

# Loggers that write to stderr while we talk to a store: MLflow (a traceback per failed query, INFO
# on creation), Alembic and SQLAlchemy (migrations), urllib3 (HTTP retries).
_QUIET_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "urllib3")
INCOMPLETE_TAG = "tracking_incomplete"  # on a run whose store failed mid-run: why its record is partial
FAILED_STAGE_TAG = "failed_stage"  # on a pipeline parent run: a stage of it failed
WRITE_FIX = ("set MLFLOW_TRACKING_URI to a usable store (e.g. sqlite:///mlflow.db in a writable folder) "
             "or pass --no-track")
READ_FIX = "set MLFLOW_TRACKING_URI to the store that recorded the runs"


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (MLflow's SQL errors run to many lines)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def note(text: str) -> None:
    """One ``note:`` line on stderr (stdout stays for what a command produces)."""
    print(f"note: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hold back the store libraries' own log lines and warnings: a failure is reported once, by us."""
    import mlflow  # noqa: F401  (MLflow sets its loggers' levels on import: import it before we change them)

    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` store (relative to the working directory unless
    absolute); None for other stores. An in-memory SQLite URI is refused: its runs vanish."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    if path in ("", ":memory:"):
        raise UserError(f"MLflow store {uri} is an in-memory SQLite database: its runs vanish when the command ends; "
                        f"{WRITE_FIX}")
    return Path(os.path.abspath(path))


def store_key(uri: str) -> str:
    """One name per store: a SQLite store by its absolute path, whatever folder the URI was relative to."""
    path = sqlite_file(uri)
    return f"sqlite:///{path}" if path is not None else uri


def _temp_file(kind: str, *parts: str, suffix: str) -> Path:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"repro-{kind}-{digest}{suffix}"


@contextlib.contextmanager
def machine_lock(kind: str, *parts: str) -> Iterator[None]:
    """Serialise a critical section between the processes of this machine (``fcntl`` file lock on
    a file named after ``kind`` and ``parts``); a no-op where there is no ``fcntl`` (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(_temp_file(kind, *parts, suffix=".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on an HTTP store nobody answers (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered (a proxy or a server without /health): the store decides
    except OSError as exc:
        raise ConnectionError(f"{uri} does not answer ({getattr(exc, 'reason', exc)})") from None


def _check_sqlite_folder(uri: str, path: Path) -> None:
    """A new or existing SQLite file needs a folder we may write (SQLite keeps its journal beside
    the file); asked before MLflow, which otherwise retries for about 100 s."""
    existing = next(folder for folder in (path.parent, *path.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise UserError(f"cannot create MLflow store {uri}: {existing} {what}; {WRITE_FIX}")
    if path.exists() and (not path.is_file() or not os.access(path, os.R_OK | os.W_OK)):
        raise UserError(f"cannot write MLflow store {uri}: {path} is not a writable file; {WRITE_FIX}")


def _leftover_migration(uri: str) -> str | None:
    """The ``_alembic_tmp_*`` table an interrupted migration left in a SQLite store, if any."""
    path = sqlite_file(uri)
    if path is None or not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            row = db.execute("SELECT name FROM sqlite_master WHERE substr(name, 1, 13) = '_alembic_tmp_'").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def store_error(uri: str, exc: BaseException, fix: str = WRITE_FIX) -> UserError:
    """The one-line error for a store that could not be opened or read, with the fix that fits."""
    reason = first_line(exc)
    leftover = _leftover_migration(uri)
    if leftover:
        fix = (f"its first migration was interrupted (table {leftover} left behind, e.g. by processes that created "
               f"it at once): move the file aside and let the next command create the store anew, or {fix}")
    elif "database is locked" in reason:
        fix = f"another process holds it locked: wait for it to finish, or {fix}"
    elif "out-of-date database schema" in reason:
        fix = f"back the file up and run `mlflow db upgrade {uri}`, or {fix}"
    return UserError(f"cannot use MLflow store {uri} ({reason}): {fix}")


def open_store(uri: str, create: bool = True) -> Any:
    """An ``MlflowClient`` on ``uri`` once its store is ready; a one-line :class:`UserError` if it
    cannot be used. A writer (``create``) may create the store; a reader (``repro audit``,
    ``repro registry``) refuses a SQLite file that does not exist rather than create an empty one.

    Creating or migrating a store happens under :func:`machine_lock` keyed on the store, so the
    processes that start on a new store at once wait for the first to finish instead of migrating
    it together; runs a failing store left open (:func:`remember_close`) are closed here too.
    """
    import mlflow  # noqa: F401  (imported before quiet(): see there)
    from mlflow.tracking import MlflowClient

    fix = WRITE_FIX if create else READ_FIX
    path = sqlite_file(uri)
    if path is not None and create:
        _check_sqlite_folder(uri, path)
    if path is not None and not create and not path.is_file():
        raise UserError(f"no MLflow store at {path} ({uri}): {READ_FIX}")
    try:
        check_reachable(uri)
        with machine_lock("mlflow-store", store_key(uri)), quiet():
            client = MlflowClient(uri)  # builds the store: creates and migrates a new database, checks an old one
            client.search_experiments(max_results=1)  # a store that answers, not only a URI that parses
            if create:
                _close_remembered(client, uri)
    except UserError:
        raise
    except Exception as exc:  # bad URI, corrupt, locked, out of date, unreachable
        raise store_error(uri, exc, fix) from None
    return client


def close_run(client: Any, entry: dict[str, Any]) -> None:
    """End run ``entry['run_id']`` with ``entry['status']`` at ``entry['end_time']`` (ms), tagged
    :data:`INCOMPLETE_TAG` when its store failed mid-run; its pipeline parent ends with it, FAILED
    for good once a stage of it failed. Raises whatever the store raises."""
    run_id, status = entry["run_id"], entry["status"]
    if entry.get("incomplete"):
        client.set_tag(run_id, INCOMPLETE_TAG, entry["incomplete"])
    client.set_terminated(run_id, status=status, end_time=entry["end_time"])
    parent = entry.get("parent_id")
    if parent is not None:
        if status == "FAILED":
            client.set_tag(parent, FAILED_STAGE_TAG, entry.get("stage") or "unknown")
        failed = FAILED_STAGE_TAG in client.get_run(parent).data.tags
        client.set_terminated(parent, status="FAILED" if failed else "FINISHED", end_time=entry["end_time"])


def _pending_file(uri: str) -> Path:
    return _temp_file("mlflow-pending", store_key(uri), suffix=".json")


def _read_pending(uri: str) -> list[dict[str, Any]]:
    try:
        entries = json.loads(_pending_file(uri).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if isinstance(entry, dict) and "run_id" in entry]


def _write_pending(uri: str, entries: list[dict[str, Any]]) -> None:
    path = _pending_file(uri)
    if not entries:
        path.unlink(missing_ok=True)
        return
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(entries, indent=1))
    partial.replace(path)


def remember_close(uri: str, entry: dict[str, Any]) -> None:
    """Keep ``entry`` (see :func:`close_run`) for the next :func:`open_store` of ``uri``: the run
    ends then, with the status and end time it had here, instead of staying RUNNING."""
    with machine_lock("mlflow-store", store_key(uri)):
        _write_pending(uri, [*_read_pending(uri), entry])


def _close_remembered(client: Any, uri: str) -> None:
    """Close the runs :func:`remember_close` kept for this store (called under its lock). A run
    that is no longer RUNNING, or not in this store, is dropped; one the store refuses is kept."""
    from mlflow.exceptions import MlflowException

    pending = _read_pending(uri)
    left = []
    for entry in pending:
        try:
            if client.get_run(entry["run_id"]).info.status == "RUNNING":
                close_run(client, entry)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                left.append(entry)
        except Exception:  # the store fails again: try at the next open
            left.append(entry)
    if left != pending:
        _write_pending(uri, left)


def wait_and_close(client: Any, uri: str, entry: dict[str, Any], wait_s: float) -> bool:
    """Try :func:`close_run` until it succeeds or ``wait_s`` seconds have passed (each try may
    itself wait: SQLite's busy timeout, MLflow's HTTP retries); True if the run was closed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with quiet():
                check_reachable(uri)
                close_run(client, entry)
            return True
        except Exception:  # still locked or unreachable
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
