"""Damaged or hostile artefacts, checkpoints and output paths (issue 14): each case ends with exit
status 2 and one ``error:`` line naming the path or value and the fix, before any training where
possible, and nothing that was on disk is lost.

Covered: two writers of one output or checkpoint folder (a lock file holding the writer's pid; a
stale one is taken over), unwritable ``--metrics`` and ``--checkpoint-dir`` destinations, config.json
fields of the wrong type or naming files outside the artefact, weights of the wrong dtype, and
NaN/inf in a teacher's weights or in a resume checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import REPO
from support.cli_errors import assert_one_line_error, run_main, snapshot

EXPERIMENT = ["--gin", "gin/experiments/digits.gin"]
DAFL_SMOKE = [*EXPERIMENT, "--gin", "gin/methods/dafl.gin", "--gin", "gin/profiles/smoke.gin",
              "--bind", "distill.substitution_sample_size = 0"]
TEACHER_SMOKE = [*EXPERIMENT, "--gin", "gin/profiles/smoke.gin"]


def _redigest(artefact: Path, name: str) -> None:
    """Make config.json vouch for ``name`` as it is now (damage the digest cannot catch)."""
    from repro.io import sha256_of

    record = json.loads((artefact / "config.json").read_text())
    record["files"][name] = sha256_of(artefact / name)
    (artefact / "config.json").write_text(json.dumps(record))


def _edit_config(artefact: Path, change: Callable[[dict], None]) -> None:
    record = json.loads((artefact / "config.json").read_text())
    change(record)
    (artefact / "config.json").write_text(json.dumps(record))


def _rewrite_weights(artefact: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(artefact / "model.safetensors"))
    change(weights)
    save_file(weights, str(artefact / "model.safetensors"), metadata={"format": "pt"})
    _redigest(artefact, "model.safetensors")


def _locks(root: Path) -> list[Path]:
    return sorted(root.rglob("*.lock"))


class Workspace:
    """A tmp folder with a previous artefact (``out``), a previous metrics file and a damaged-on-demand
    copy of the teacher; ``unchanged()`` checks every file that was there is still there, byte for byte."""

    def __init__(self, root: Path, teacher: Path) -> None:
        self.root, self.out, self.metrics = root, root / "out", root / "metrics.json"
        self.checkpoints, self.teacher = root / "checkpoints", root / "teacher"
        shutil.copytree(teacher, self.out)
        shutil.copytree(teacher, self.teacher)
        self.metrics.write_text('{"top1": 12.5}\n')
        self.before: dict[str, str] = {}

    def freeze(self) -> None:
        self.before = snapshot(self.root)

    def distill(self, teacher: Path | None = None, out: Path | None = None) -> list:
        return ["distill", *DAFL_SMOKE, "--teacher", teacher or self.teacher, "--out", out or self.out,
                "--checkpoint-dir", self.checkpoints, "--no-track"]

    def train_teacher(self, metrics: Path) -> list:
        return ["train-teacher", *TEACHER_SMOKE, "--out", self.out, "--metrics", metrics,
                "--checkpoint-dir", self.checkpoints, "--no-track"]

    def evaluate(self, metrics: Path, model: Path | None = None) -> list:
        return ["evaluate", *EXPERIMENT, "--model", model or self.teacher, "--metrics", metrics, "--no-track"]

    def unchanged(self) -> None:
        assert snapshot(self.root) == self.before
        assert not _locks(self.root)


@pytest.fixture
def ws(tmp_path: Path, teacher_dir: Path) -> Workspace:
    return Workspace(tmp_path / "ws", teacher_dir)


# ---------------------------------------------------------------- two writers of one folder

HOLDER = """
import sys, time
from pathlib import Path
from repro import io
with io.exclusive(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def hold():
    """``hold(folder, what)``: a separate process holds ``folder`` as repro's stages do; killed after the test."""
    holders: list[subprocess.Popen] = []

    def start(folder: Path, what: str) -> subprocess.Popen:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), what], cwd=REPO, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        return holder

    yield start
    for holder in holders:
        holder.kill()
        holder.wait()


def _checkpoint_folder(checkpoints: Path, out: Path) -> Path:
    return checkpoints / Path(*[part for part in out.parts if part != "/"])


def test_an_output_folder_held_by_another_process_is_refused_naming_its_pid(ws: Workspace, hold, capfd,
                                                                              monkeypatch) -> None:
    holder = hold(ws.out, "output folder")
    ws.freeze()
    outcome = run_main(ws.distill(), capfd, monkeypatch)
    assert_one_line_error(outcome, f"output folder {ws.out} is in use by another process (pid {holder.pid}",
                          "wait for it to finish")
    assert "epoch 1" not in outcome.stdout
    assert snapshot(ws.root) == ws.before


def test_a_checkpoint_folder_held_by_another_process_is_refused(ws: Workspace, hold, capfd, monkeypatch) -> None:
    """Two --out spellings can share one checkpoint folder (``/a/b`` and ``a/b`` both map to
    checkpoints/a/b): the checkpoint folder is held too."""
    folder = _checkpoint_folder(ws.checkpoints, ws.out)
    holder = hold(folder, "checkpoint folder")
    ws.freeze()
    outcome = run_main(ws.distill(), capfd, monkeypatch)
    assert_one_line_error(outcome, f"checkpoint folder {folder} is in use by another process (pid {holder.pid}")
    assert snapshot(ws.root) == ws.before


def test_a_running_distillation_holds_its_out_until_interrupted(ws: Workspace, capfd, monkeypatch) -> None:
    """A real `repro distill` process holds its --out: a second distillation into it is refused at once
    naming the first one's pid; the first keeps training, and Ctrl-C releases its locks."""
    env = {**{k: v for k, v in os.environ.items() if k != "REPRO_DEBUG"}, "OMP_NUM_THREADS": "1"}
    out = ws.root / "student"
    argv = [*map(str, ws.distill(out=out)), "--bind", "DISTILL_EPOCHS = 500"]
    first = subprocess.Popen([sys.executable, "-m", "repro.cli", *argv], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lock, deadline = ws.root / ".student.lock", time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        outcome = run_main(argv, capfd, monkeypatch)
        assert_one_line_error(outcome, f"output folder {out} is in use by another process (pid {first.pid}, "
                                       f"lock {lock}): wait for it to finish")
        assert first.poll() is None  # the first one was not disturbed
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 130, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not out.exists() and not _locks(ws.root)


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_removed(ws: Workspace, capfd, monkeypatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = ws.root / "student"
    stale = ws.root / ".student.lock"
    stale.write_text(f"{dead.pid}\n")
    outcome = run_main([*ws.distill(out=out), "--bind", "DISTILL_EPOCHS = 1"], capfd, monkeypatch)
    assert outcome.code == 0, outcome.stderr_lines
    assert (out / "config.json").is_file() and not _locks(ws.root)
    assert not ws.checkpoints.exists()  # the finished stage leaves no resume state and no empty folders


def test_locks_are_released_when_the_stage_fails(ws: Workspace, tmp_path: Path, capfd, monkeypatch) -> None:
    ws.freeze()
    outcome = run_main(ws.distill(teacher=tmp_path / "no-teacher"), capfd, monkeypatch)
    assert_one_line_error(outcome, "no model artefact at")
    ws.unchanged()
    assert not ws.checkpoints.exists()


# ---------------------------------------------------------------- destinations that cannot be written

def _metrics_folder(ws: Workspace) -> tuple[Path, tuple[str, ...]]:
    folder = ws.root / "metrics"
    folder.mkdir()
    (folder / "old.json").write_text("{}\n")
    return folder, (f"--metrics {folder} is a folder", f"{folder}/metrics.json")


def _metrics_under_a_file(ws: Workspace) -> tuple[Path, tuple[str, ...]]:
    return ws.metrics / "m.json", (f"--metrics {ws.metrics / 'm.json'} cannot be written: {ws.metrics} is a file",)


def _metrics_in_a_read_only_folder(ws: Workspace) -> tuple[Path, tuple[str, ...]]:
    folder = ws.root / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "m.json", (f"cannot be written: {folder} is not writable",)


METRICS_CASES = {"a folder": _metrics_folder, "under a file": _metrics_under_a_file,
                 "in a read-only folder": _metrics_in_a_read_only_folder}


def _skip_if_root(case: str) -> None:
    if case == "in a read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")


@pytest.mark.parametrize("verb", ["train-teacher", "evaluate"])
@pytest.mark.parametrize("case", list(METRICS_CASES))
def test_unwritable_metrics_destination_is_refused_before_any_work(case: str, verb: str, ws: Workspace, capfd,
                                                                   monkeypatch) -> None:
    _skip_if_root(case)
    metrics, fragments = METRICS_CASES[case](ws)
    ws.freeze()
    argv = ws.train_teacher(metrics) if verb == "train-teacher" else ws.evaluate(metrics)
    outcome = run_main(argv, capfd, monkeypatch)
    assert_one_line_error(outcome, *fragments)
    assert "epoch 1" not in outcome.stdout
    ws.unchanged()
    assert not ws.checkpoints.exists()


def test_several_evaluations_check_every_metrics_file_first(ws: Workspace, capfd, monkeypatch) -> None:
    """With two --model/--metrics pairs, a bad second destination stops the command before the first
    evaluation writes anything."""
    folder, fragments = _metrics_folder(ws)
    ws.freeze()
    argv = [*ws.evaluate(ws.metrics), "--model", ws.teacher, "--metrics", folder]
    assert_one_line_error(run_main(argv, capfd, monkeypatch), *fragments)
    ws.unchanged()


def test_checkpoint_dir_that_is_a_file(ws: Workspace, capfd, monkeypatch) -> None:
    ws.checkpoints.write_text("not a folder\n")
    ws.freeze()
    outcome = run_main(ws.distill(out=ws.root / "student"), capfd, monkeypatch)
    assert_one_line_error(outcome, f"checkpoint folder {_checkpoint_folder(ws.checkpoints, ws.root / 'student')} "
                                   f"cannot be created: {ws.checkpoints} is a file", "--checkpoint-dir")
    assert "epoch 1" not in outcome.stdout
    ws.unchanged()


def test_out_under_a_file(ws: Workspace, capfd, monkeypatch) -> None:
    ws.freeze()
    out = ws.metrics / "student"
    outcome = run_main(ws.distill(out=out), capfd, monkeypatch)
    assert_one_line_error(outcome, f"output folder {out} cannot be created: {ws.metrics} is a file")
    assert "epoch 1" not in outcome.stdout
    ws.unchanged()


def _report_metrics(ws: Workspace) -> Path:
    """The smallest metrics folder `repro report` builds a table from: one teacher's file."""
    folder = ws.root / "run-metrics"
    (folder / "teachers").mkdir(parents=True)
    (folder / "teachers" / "seed0.json").write_text(json.dumps(
        {"top1": 99.0, "seed": 0, "network": "digits_cnn_large", "role": "teacher", "model": str(ws.teacher)}))
    return folder


def _folder_out_a_file(ws: Workspace) -> tuple[Path, str]:
    return ws.metrics, f"--out {ws.metrics} is a file, not a folder: give a folder path, or move the file away"


def _folder_out_below_a_file(ws: Workspace) -> tuple[Path, str]:
    return ws.metrics / "sub", f"--out {ws.metrics / 'sub'} cannot be written: {ws.metrics} is a file, not a folder"


FOLDER_OUT_CASES = {"a file": _folder_out_a_file, "below a file": _folder_out_below_a_file}


@pytest.mark.parametrize("verb", ["report", "verify"])
@pytest.mark.parametrize("case", list(FOLDER_OUT_CASES))
def test_report_folder_that_cannot_be_written_is_refused(case: str, verb: str, ws: Workspace, capfd,
                                                         monkeypatch) -> None:
    """`repro report --out` and `repro verify --out` name the folder that receives their files: a file
    there (or above it) is refused with one line, not a FileExistsError/NotADirectoryError traceback."""
    out, fragment = FOLDER_OUT_CASES[case](ws)
    argv = [verb, "--out", out, *(["--metrics-dir", _report_metrics(ws)] if verb == "report" else [])]
    ws.freeze()
    assert_one_line_error(run_main(argv, capfd, monkeypatch), fragment)
    ws.unchanged()


def _compare_out_a_folder(ws: Workspace) -> tuple[Path, str]:
    folder = ws.root / "reports"
    folder.mkdir()
    (folder / "results.md").write_text("keep me\n")
    return folder, f"--out {folder} is a folder: give a file path, e.g. {folder / 'paper_comparison.md'}"


def _compare_out_below_a_file(ws: Workspace) -> tuple[Path, str]:
    out = ws.metrics / "c.md"
    return out, f"--out {out} cannot be written: {ws.metrics} is a file, not a folder"


COMPARE_OUT_CASES = {"a folder": _compare_out_a_folder, "below a file": _compare_out_below_a_file}


@pytest.mark.parametrize("case", list(COMPARE_OUT_CASES))
def test_comparison_file_that_cannot_be_written_is_refused(case: str, ws: Workspace, capfd, monkeypatch) -> None:
    """`repro compare --out` names a file: a folder (IsADirectoryError) or a path below a file
    (FileExistsError) is refused with one line, before the inputs are read."""
    out, fragment = COMPARE_OUT_CASES[case](ws)
    ws.freeze()
    argv = ["compare", "--published", REPO / "reports/published_numbers.csv",
            "--results", REPO / "reports/results.json", "--metrics-dir", REPO / "metrics", "--out", out]
    assert_one_line_error(run_main(argv, capfd, monkeypatch), fragment)
    ws.unchanged()


def _out_is_the_teacher(ws: Workspace) -> tuple[Path, Path, str]:
    return ws.teacher, ws.teacher, f"is the teacher's folder ({ws.teacher}): the student would replace the teacher"


def _out_links_to_the_teacher(ws: Workspace) -> tuple[Path, Path, str]:
    link = ws.root / "student"
    link.symlink_to(ws.teacher, target_is_directory=True)
    return ws.teacher, link, f"is the teacher's folder ({ws.teacher}): the student would replace the teacher"


def _out_inside_the_teacher(ws: Workspace) -> tuple[Path, Path, str]:
    return ws.teacher, ws.teacher / "student", f"is inside the teacher's folder {ws.teacher}"


def _out_contains_the_teacher(ws: Workspace) -> tuple[Path, Path, str]:
    teacher = ws.out / "teacher"  # ws.out is an artefact, so only the overlap stops its replacement
    shutil.copytree(ws.teacher, teacher)
    return teacher, ws.out, f"contains the teacher {teacher}: replacing it would delete the teacher"


OVERLAP_CASES = {"the teacher's folder": _out_is_the_teacher, "a link to it": _out_links_to_the_teacher,
                 "inside it": _out_inside_the_teacher, "containing it": _out_contains_the_teacher}


@pytest.mark.parametrize("case", list(OVERLAP_CASES))
def test_out_that_overlaps_the_teacher_is_refused_before_training(case: str, ws: Workspace, capfd,
                                                                  monkeypatch) -> None:
    """`--out` naming the teacher's folder would replace the teacher by its student (and exit 0);
    one inside it or containing it would write into it or delete it. Refused before any lock or epoch."""
    teacher, out, fragment = OVERLAP_CASES[case](ws)
    ws.freeze()
    outcome = run_main(ws.distill(teacher=teacher, out=out), capfd, monkeypatch)
    assert_one_line_error(outcome, f"--out {out} {fragment}", "choose an --out outside the teacher's folder")
    assert "epoch 1" not in outcome.stdout
    ws.unchanged()
    assert not ws.checkpoints.exists()


def test_an_artefact_recording_no_role_is_not_taken_as_the_teacher(ws: Workspace, capfd, monkeypatch) -> None:
    _edit_config(ws.teacher, lambda record: record.pop("role"))
    ws.freeze()
    outcome = run_main(ws.distill(out=ws.root / "student"), capfd, monkeypatch)
    assert_one_line_error(outcome, f"--teacher {ws.teacher} is not a teacher artefact (config.json records no role)",
                          "pass a teacher artefact, e.g. models/teachers/seed0")
    assert "epoch 1" not in outcome.stdout
    ws.unchanged()


# ---------------------------------------------------------------- config.json


def _set(*keys: str, value) -> Callable[[dict], None]:
    def change(record: dict) -> None:
        for key in keys[:-1]:
            record = record[key]
        record[keys[-1]] = value
    return change


def _drop_weights_digest(record: dict) -> None:
    del record["files"]["model.safetensors"]


CONFIG_FIELDS = {
    "seed a string": (_set("seed", value="x"), "field 'seed' is 'x'", "an integer"),
    "seed a boolean": (_set("seed", value=True), "field 'seed' is True", "an integer"),
    "data a list": (_set("data", value=[]), "field 'data' is []", "an object"),
    "files a string": (_set("files", value="x"), "field 'files' is 'x'", "an object"),
    "architecture a number": (_set("architecture", value=3), "field 'architecture' is 3", "an object"),
    "architecture name a number": (_set("architecture", "name", value=3), "field 'architecture.name' is 3", "a string"),
    "architecture kwargs a list": (_set("architecture", "kwargs", value=[1]), "field 'architecture.kwargs' is [1]",
                                   "an object"),
    "class count a string": (_set("data", "num_classes", value="ten"), "field 'data.num_classes' is 'ten'",
                             "a positive integer"),
    "zero channels": (_set("data", "channels", value=0), "field 'data.channels' is 0", "a positive integer"),
    "mean a string": (_set("data", "mean", value="x"), "field 'data.mean' is 'x'", "a list of 1 finite number"),
    "std of zero": (_set("data", "std", value=[0.0]), "field 'data.std' is [0.0]", "a list of 1 positive number"),
    "method a string": (_set("method", value="x"), "field 'method' is 'x'", "an object"),
    "method name a list": (_set("method", "name", value=[]), "field 'method.name' is []", "a string"),
    "role a number": (_set("role", value=5), "field 'role' is 5", "'teacher' or 'student'"),
    "teacher record a string": (_set("teacher", value="x"), "field 'teacher' is 'x'", "an object"),
    "platform a list": (_set("platform", value=[]), "field 'platform' is []", "an object"),
    "digest a number": (_set("files", "model.safetensors", value=5), "field 'files' entry 'model.safetensors' is 5",
                        "a sha256"),
    "no weights digest": (_drop_weights_digest, "field 'files' has no 'model.safetensors'", None),
}


@pytest.mark.parametrize("case", list(CONFIG_FIELDS))
def test_config_field_of_the_wrong_type_is_named(case: str, ws: Workspace, capfd, monkeypatch) -> None:
    change, field, expected = CONFIG_FIELDS[case]
    _edit_config(ws.teacher, change)
    ws.freeze()
    line = assert_one_line_error(run_main(ws.evaluate(ws.metrics), capfd, monkeypatch),
                                 f"{ws.teacher / 'config.json'} {field}", "re-run the stage that wrote it")
    assert expected is None or f"expected {expected}" in line
    ws.unchanged()


def _outside(ws: Workspace, name: str) -> None:
    secret = ws.root / "secret.txt"
    secret.write_text("not part of the artefact\n")
    _edit_config(ws.teacher, _set("files", name.format(secret=secret), value=_sha256(secret)))


def _sha256(path: Path) -> str:
    from repro.io import sha256_of

    return sha256_of(path)


OUTSIDE = {"relative ../": "../secret.txt", "absolute": "{secret}", "nested ..": "sub/../../secret.txt",
           "a sub-folder": "sub/x.bin", "empty": "", "dot": "."}


@pytest.mark.parametrize("case", list(OUTSIDE))
def test_files_outside_the_artefact_are_refused(case: str, ws: Workspace, capfd, monkeypatch) -> None:
    """config.json's file list decides what is hashed, loaded and published: a name that leaves the
    artefact folder (here with the outside file's true digest) would make repro read or upload it."""
    _outside(ws, OUTSIDE[case])
    name = OUTSIDE[case].format(secret=ws.root / "secret.txt")
    ws.freeze()
    outcome = run_main(ws.evaluate(ws.metrics), capfd, monkeypatch)
    assert_one_line_error(outcome, f"field 'files' entry {name!r} is not a file name inside {ws.teacher}")
    ws.unchanged()


def test_publishing_never_copies_a_file_from_outside_the_artefact(ws: Workspace, capfd, monkeypatch) -> None:
    _outside(ws, "../secret.txt")
    ws.freeze()
    outcome = run_main(["publish", "--repo-id", "org/teacher", "--model", ws.teacher, "--dry-run", "--out",
                        ws.root / "hub", "--no-track"], capfd, monkeypatch)
    assert_one_line_error(outcome, "field 'files' entry '../secret.txt' is not a file name inside")
    ws.unchanged()


# ---------------------------------------------------------------- weights


def _as(dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(weights: dict[str, torch.Tensor]) -> None:
        for name, tensor in weights.items():
            if tensor.is_floating_point():
                weights[name] = tensor.to(dtype)
    return change


def _first_float(weights: dict[str, torch.Tensor]) -> str:
    return sorted(name for name, tensor in weights.items() if tensor.is_floating_point())[0]


DTYPES = {"float64": torch.float64, "int32": torch.int32, "float16": torch.float16}


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_weights_of_another_dtype_are_refused(dtype: str, ws: Workspace, capfd, monkeypatch) -> None:
    _rewrite_weights(ws.teacher, _as(DTYPES[dtype]))
    ws.freeze()
    outcome = run_main(ws.evaluate(ws.metrics), capfd, monkeypatch)
    assert_one_line_error(outcome, f"{ws.teacher / 'model.safetensors'} holds", f"as {dtype}", "expected float32")
    ws.unchanged()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_in_the_teacher_is_refused_at_load_time(value: str, ws: Workspace, capfd, monkeypatch) -> None:
    """Formerly the student's loss became NaN and the message blamed the learning rate and named a
    checkpoint that was never written."""
    names: list[str] = []

    def poison(weights: dict[str, torch.Tensor]) -> None:
        names.append(_first_float(weights))
        weights[names[0]] = weights[names[0]].clone()
        weights[names[0]].view(-1)[0] = float(value)

    _rewrite_weights(ws.teacher, poison)
    ws.freeze()
    outcome = run_main(ws.distill(out=ws.root / "student"), capfd, monkeypatch)
    assert_one_line_error(outcome, f"{ws.teacher / 'model.safetensors'} holds NaN/inf in {names[0]!r}: "
                                   "re-train or re-import the teacher")
    assert "epoch 1" not in outcome.stdout
    ws.unchanged()
    assert not ws.checkpoints.exists()


def test_nan_in_a_resume_checkpoint_is_refused(tmp_path: Path) -> None:
    """Training never checkpoints a NaN (it stops first), so a NaN in last.pt is damage: resuming from it
    would end in a 'lower the learning rates' message that blames the wrong thing."""
    from repro.errors import UserError
    from repro.train import resume

    path = tmp_path / "last.pt"
    resume.save_training_state(path, {"fingerprint": "abc", "epoch": 1, "model": {"w": torch.tensor([1.0, float("nan")])},
                                      "optimizer": {}, "method": {"g": {"b": torch.tensor([float("inf")])}}, "rng": {}})
    with pytest.raises(UserError, match=r"checkpoint .*last.pt holds NaN/inf in model tensor 'w': delete it"):
        resume.load_training_state(path, "abc")
