"""The MLflow store is never lost or left RUNNING (issue 14, tracking part), with real SQLite stores,
real processes and real locks:

1. processes that start on a new store at once all record their run, and the store ends migrated;
2. a store that cannot be used stops the command before it trains: one ``error:`` line, nothing written;
3. a store locked mid-run: one ``note:``, no traceback, and the run still ends FINISHED.

The lock tests wait out MLflow's 20 s SQLite busy timeout (it is what makes a write fail), so they
take about 20 s each.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO
from repro.tracking import runs as tracking
from support.cli_errors import assert_one_line_error, run_main, snapshot

SMOKE = ["--gin", "gin/experiments/digits.gin", "--gin", "gin/profiles/smoke.gin"]
HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")  # no other connection may read or write until we let go
print("held", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


@pytest.fixture(scope="module")
def made_store(tmp_path_factory) -> Path:
    """A store created by another process, as an earlier command would (MLflow keeps each store it
    opened in the process, schema check included: a store made here would never be checked again).
    Tests copy it: creating one costs seconds."""
    db = tmp_path_factory.mktemp("made") / "mlflow.db"
    subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                    "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{db}"], check=True, timeout=120,
                   capture_output=True)
    return db


class LockHolder:
    """Another process holding ``BEGIN EXCLUSIVE`` on a SQLite file until :meth:`release`."""

    def __init__(self, db: Path) -> None:
        self._process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        assert self._process.stdout.readline().strip() == "held"

    def release(self, after_s: float = 0.0) -> None:
        time.sleep(after_s)
        if self._process.poll() is None:
            self._process.stdin.write("\n")
            self._process.stdin.flush()
            self._process.wait(timeout=30)


@pytest.fixture
def lock_holders() -> Iterator[list[LockHolder]]:
    holders: list[LockHolder] = []
    yield holders
    for holder in holders:  # a failed test must not leave a process behind
        holder.release()


def _schema(db: Path) -> tuple[str, list[str]]:
    """``(alembic version, leftover _alembic_tmp_ tables)`` of a SQLite store."""
    with sqlite3.connect(db) as connection:
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        leftovers = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE substr(name, 1, 13) = '_alembic_tmp_'")]
    return version, leftovers


# --- 1. first use of a new store under concurrency ----------------------------------------------------

STAGE = """
import sys
from repro.tracking import runs as tracking
import mlflow.tracking  # the slow imports happen before the start signal, so the stages meet at the store
print("ready", flush=True)
sys.stdin.readline()
tracker = tracking.open_tracker(sys.argv[1], {"stage": "probe"})
tracker.log_metrics({"loss": 1.0}, step=1)
tracker.finish()
print(tracker.run_id, flush=True)
"""


def test_stages_starting_together_on_a_new_store_all_record_their_run(tmp_path) -> None:
    """Like `dvc exp run --queue` with several workers: N stage processes of one pipeline execution open
    a store that does not exist yet at the same instant. Every run is recorded under one parent,
    nothing is printed, and the store is at MLflow's schema head with no half-done migration."""
    stages, db = 4, tmp_path / "new" / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", tracking.PIPELINE_ENV: "queued-experiments"}
    processes = [subprocess.Popen([sys.executable, "-c", STAGE, f"stage-{index}"], cwd=REPO, env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for index in range(stages)]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    for process in processes:  # the start signal, as close together as this process can send it
        process.stdin.write("go\n")
        process.stdin.flush()
    finished = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * stages, [err for _, err in finished]
    client = _client(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    children = [run for run in runs if run.data.tags["stage"] == "probe"]
    (parent,) = [run for run in runs if run.data.tags["stage"] == "pipeline"]
    assert sorted(run.info.run_name for run in children) == [f"stage-{index}" for index in range(stages)]
    assert {run.info.run_id for run in children} == {out.strip() for out, _ in finished}
    assert all(run.info.status == "FINISHED" and run.data.metrics == {"loss": 1.0} for run in children)
    assert all(run.data.tags[tracking.PARENT_TAG] == parent.info.run_id for run in children)
    reference = tmp_path / "alone.db"  # the schema head: what one process alone makes of a new store
    _client(f"sqlite:///{reference}").search_experiments()
    assert _schema(db) == (_schema(reference)[0], [])
    assert [err for _, err in finished if err.strip()] == []  # no note, no MLflow INFO lines, no traceback


# --- 2. a store that cannot be used: one error before any work -----------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _store_at_older_schema(made_store: Path, db: Path, leftover_table: bool) -> None:
    """A store whose schema is one migration behind (made by an older MLflow); with ``leftover_table``,
    also the ``_alembic_tmp_runs`` table a migration interrupted midway leaves."""
    import mlflow.store
    from alembic.script import ScriptDirectory

    shutil.copyfile(made_store, db)
    version, _ = _schema(db)
    migrations = ScriptDirectory(str(Path(mlflow.store.__file__).parent / "db_migrations"))
    older = migrations.get_revision(version).down_revision
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (older,))
        if leftover_table:
            connection.execute("CREATE TABLE _alembic_tmp_runs (run_uuid VARCHAR(32))")


def _bad_store(case: str, folder: Path, made_store: Path,
               lock_holders: list[LockHolder]) -> tuple[str, tuple[str, ...]]:
    """``(tracking URI, fragments the error must name)`` for an unusable store of kind ``case``."""
    db = folder / "mlflow.db"
    if case == "server not answering":
        uri = f"http://127.0.0.1:{_free_port()}"
        return uri, (uri, "does not answer", "MLFLOW_TRACKING_URI", "--no-track")
    if case == "corrupt database":
        db.write_bytes(b"this is not a SQLite database\n" * 200)
        return f"sqlite:///{db}", (str(db), "file is not a database", "MLFLOW_TRACKING_URI", "--no-track")
    if case == "folder is a file":
        (folder / "notes.txt").write_text("a file, not a folder\n")
        uri = f"sqlite:///{folder / 'notes.txt' / 'mlflow.db'}"
        return uri, (uri, "notes.txt is not a folder", "MLFLOW_TRACKING_URI", "--no-track")
    if case == "in-memory database":
        return "sqlite://", ("sqlite://", "in-memory", "vanish", "MLFLOW_TRACKING_URI", "--no-track")
    if case == "older schema":
        _store_at_older_schema(made_store, db, leftover_table=False)
        return f"sqlite:///{db}", (str(db), "out-of-date database schema", f"mlflow db upgrade sqlite:///{db}")
    if case == "half-migrated":
        _store_at_older_schema(made_store, db, leftover_table=True)
        return f"sqlite:///{db}", (str(db), "_alembic_tmp_runs", "move the file aside", "MLFLOW_TRACKING_URI")
    if case == "locked database":
        shutil.copyfile(made_store, db)
        lock_holders.append(LockHolder(db))
        return f"sqlite:///{db}", (str(db), "database is locked", "another process holds it", "--no-track")
    raise AssertionError(case)


BAD_STORES = ["server not answering", "corrupt database", "folder is a file", "in-memory database", "older schema",
              "half-migrated", "locked database"]


@pytest.mark.parametrize("case", BAD_STORES)
def test_unusable_store_stops_the_command_before_it_evaluates(case, teacher_dir, tmp_path, made_store, lock_holders,
                                                               capfd, monkeypatch) -> None:
    """Two runs in one command: one error line (not a note per run), exit 2, no metrics written and
    the store's folder untouched."""
    store_folder, out = tmp_path / "store", tmp_path / "out"
    store_folder.mkdir()
    out.mkdir()
    uri, fragments = _bad_store(case, store_folder, made_store, lock_holders)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    before = snapshot(tmp_path)
    outcome = run_main(["evaluate", *SMOKE, "--model", teacher_dir, "--metrics", out / "a.json",
                        "--model", teacher_dir, "--metrics", out / "b.json"], capfd, monkeypatch)
    assert_one_line_error(outcome, *fragments)
    assert outcome.stdout == ""
    assert snapshot(tmp_path) == before


def test_no_track_runs_whatever_the_store(teacher_dir, tmp_path, capfd, monkeypatch) -> None:
    """The fix the error names works: --no-track never opens the store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    outcome = run_main(["evaluate", *SMOKE, "--model", teacher_dir, "--metrics", tmp_path / "a.json", "--no-track"],
                       capfd, monkeypatch)
    assert outcome.code == 0 and outcome.stderr_lines == [] and (tmp_path / "a.json").is_file()


@pytest.mark.parametrize("argv", [["registry"], ["audit", "0123456789abcdef0123456789abcdef"]],
                         ids=["registry", "audit"])
def test_reading_a_store_that_does_not_exist_creates_none(argv, tmp_path, capfd, monkeypatch) -> None:
    db = tmp_path / "typo" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    outcome = run_main(argv, capfd, monkeypatch)
    assert_one_line_error(outcome, f"no MLflow store at {db}", "MLFLOW_TRACKING_URI")
    assert not (tmp_path / "typo").exists()


def test_reading_a_locked_store_is_one_error_line(tmp_path, made_store, lock_holders, capfd, monkeypatch) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copyfile(made_store, db)
    lock_holders.append(LockHolder(db))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    outcome = run_main(["registry"], capfd, monkeypatch)
    assert_one_line_error(outcome, str(db), "database is locked", "MLFLOW_TRACKING_URI")


# --- 3. a store locked mid-run -------------------------------------------------------------------------

def test_store_locked_mid_run_is_one_note_and_the_run_still_finishes(tmp_path, lock_holders, capfd) -> None:
    """Another process locks the store while the run logs: one note, no traceback spray; training
    code goes on (the tracker never raises); the run is closed FINISHED once the lock is gone, tagged
    as incomplete, with what it logged before the lock."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracker = tracking.MlflowTracker("locked-mid-run", {"stage": "probe"}, uri)
    tracker.log_metrics({"loss": 1.0}, step=1)
    capfd.readouterr()
    holder = LockHolder(db)
    lock_holders.append(holder)
    tracker.log_metrics({"loss": 0.5}, step=2)  # waits out SQLite's busy timeout, then gives up
    tracker.log_params({"lr": 0.1})  # tracking is off: not even tried
    threading.Thread(target=holder.release, args=(1.0,)).start()  # the lock goes while the run ends
    tracker.finish()
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert out == "" and len(lines) == 1, lines
    assert lines[0].startswith("note: MLflow tracking is off") and uri in lines[0] and "database is locked" in lines[0]
    run = _client(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert "database is locked" in run.data.tags["tracking_incomplete"]
    assert [point.step for point in _client(uri).get_metric_history(tracker.run_id, "loss")] == [1]
    assert run.data.params == {}


def test_store_locked_until_after_the_run_is_closed_by_the_next_command(tmp_path, lock_holders, capfd) -> None:
    """The lock outlasts the run's end: one note says so, and the next command that opens the store
    records the run (and its pipeline parent) FINISHED, at the time the run ended."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracker = tracking.MlflowTracker("locked-at-the-end", {"stage": "probe"}, uri, pipeline="locked-execution",
                                     close_wait_s=0)
    tracker.log_metrics({"loss": 1.0}, step=1)
    capfd.readouterr()
    holder = LockHolder(db)
    lock_holders.append(holder)
    ended = int(time.time() * 1000)
    tracker.finish()
    holder.release()
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"note: MLflow run {tracker.run_id} is still open"), lines
    assert "next repro command that opens this store records it as FINISHED" in lines[0]
    assert _client(uri).get_run(tracker.run_id).info.status == "RUNNING"
    following = tracking.MlflowTracker("next-command", {"stage": "probe"}, uri)
    following.finish()
    run = _client(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and ended <= run.info.end_time < ended + 5000
    assert _client(uri).get_run(tracker.parent_id).info.status == "FINISHED"
    assert "tracking_incomplete" not in run.data.tags  # everything was logged; only the close was late
