"""Checkpoints and artefacts on disk: written atomically and durably, never read when damaged, and a
foreign resume state is handled by one explicit rule.

The rule (repro/artefact.py): a repro checkpoint written by another configuration of the stage
(another fingerprint) is ignored with a printed note and training restarts from epoch 1; a file that
is not a readable repro checkpoint (truncated, another program's .pt or safetensors file) is refused
with one ``error:`` line and left where it is for the user to look at.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from repro import artefact, io
from repro.errors import UserError
from repro.train import resume
from support.cli_errors import assert_one_line_error, run_main, snapshot

STATE = {"fingerprint": "abc", "epoch": 1, "model": {"w": torch.ones(3)}, "optimizer": {}, "scheduler": {},
         "method": {}, "rng": {}}


def _fsynced_paths(monkeypatch) -> list[str]:
    """Record what every os.fsync in artefact.py flushes (by the path of its descriptor)."""
    synced: list[str] = []
    real = os.fsync

    def record(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real(descriptor)

    monkeypatch.setattr(io.os, "fsync", record)
    return synced


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_training_state_is_fsynced_then_renamed_into_place(tmp_path: Path, monkeypatch) -> None:
    synced = _fsynced_paths(monkeypatch)
    path = tmp_path / "run" / "last.pt"
    resume.save_training_state(path, STATE)
    assert synced == [str(path) + ".partial", str(path.parent)]  # the file before the rename, the folder after
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert resume.load_training_state(path, "abc")["epoch"] == 1


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_artefact_files_are_fsynced_before_the_folder_is_renamed(tmp_path: Path, monkeypatch) -> None:
    synced = _fsynced_paths(monkeypatch)
    out = tmp_path / "artefact"
    extra = {"extra.bin": lambda path: path.write_bytes(b"x")}
    artefact.save_artefact(out, nn.Linear(2, 2), {"architecture": {"name": "n"}, "data": {}}, "# gin", extra)
    partial = tmp_path / ".artefact.partial"
    expected = {str(partial / name) for name in ("model.safetensors", "operative_config.gin", "extra.bin", "config.json")}
    assert expected | {str(partial), str(tmp_path)} == set(synced)
    assert synced[-1] == str(tmp_path)  # the rename itself is made durable last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact"]


def test_debris_of_a_killed_write_is_never_read_and_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.with_name("last.pt.partial").write_bytes(b"PK\x03\x04 half a zip")  # a kill during torch.save
    assert resume.load_training_state(path, "abc") is None
    resume.save_training_state(path, STATE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]

    out = tmp_path / "student"
    (tmp_path / ".student.partial").mkdir()  # a kill while the artefact was being written
    (tmp_path / ".student.partial" / "model.safetensors").write_bytes(b"\0")
    (tmp_path / ".student.previous").mkdir()  # a kill between the two renames of a replacement
    artefact.save_artefact(out, nn.Linear(2, 2), {"architecture": {"name": "n"}, "data": {}}, "")
    artefact.save_artefact(out, nn.Linear(2, 2), {"architecture": {"name": "n"}, "data": {}}, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "student"]


def _truncated(path: Path) -> None:
    resume.save_training_state(path, STATE)
    path.write_bytes(path.read_bytes()[:300])


def _safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(4)}, str(path))


def _foreign_torch_file(path: Path) -> None:
    torch.save([torch.zeros(2), "not a repro checkpoint"], path)


def _pickled_object(path: Path) -> None:
    torch.save({"fingerprint": "abc", "epoch": 1, "model": nn.Linear(2, 2)}, path)  # a module, not weights


def _incomplete(path: Path) -> None:
    torch.save({"fingerprint": "abc", "epoch": 1}, path)


REFUSED = {"truncated": (_truncated, "is corrupt or not a repro checkpoint"),
           "a safetensors file": (_safetensors, "is corrupt or not a repro checkpoint"),
           "another program's .pt": (_foreign_torch_file, "is not a repro training checkpoint"),
           "a pickled module": (_pickled_object, "is corrupt or not a repro checkpoint (UnpicklingError)"),
           "incomplete state": (_incomplete, "is incomplete (missing model, optimizer, method, rng)")}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unreadable_or_foreign_checkpoint_is_refused(case: str, tmp_path: Path) -> None:
    write, fragment = REFUSED[case]
    path = tmp_path / "last.pt"
    write(path)
    before = path.read_bytes()
    with pytest.raises(UserError, match=re.escape(fragment)) as raised:
        resume.load_training_state(path, "abc")
    assert "\n" not in str(raised.value) and "delete it to start the stage over" in str(raised.value)
    assert path.read_bytes() == before  # refused, not deleted: the user decides


def test_checkpoint_of_another_configuration_is_ignored_with_a_note(tmp_path: Path, capsys) -> None:
    path = tmp_path / "last.pt"
    resume.save_training_state(path, {**STATE, "fingerprint": "other"})
    assert resume.load_training_state(path, "abc") is None
    assert capsys.readouterr().out == (f"note: ignoring checkpoint {path}: a different configuration or teacher wrote "
                                       "it; training starts from epoch 1 and overwrites it\n")


def _distill_argv(teacher: Path, root: Path) -> list:
    return ["distill", "--gin", "gin/experiments/digits.gin", "--gin", "gin/methods/dafl.gin", "--gin",
            "gin/profiles/smoke.gin", "--bind", "distill.substitution_sample_size = 0", "--teacher", teacher,
            "--out", root / "student", "--checkpoint-dir", root / "checkpoints", "--no-track"]


def _checkpoint_for(root: Path) -> Path:
    return root / "checkpoints" / Path(*[p for p in (root / "student").parts if p != "/"]) / "last.pt"


def test_cli_restarts_over_a_checkpoint_of_another_configuration(teacher_dir: Path, tmp_path: Path, capfd,
                                                                 monkeypatch) -> None:
    stale = _checkpoint_for(tmp_path)
    resume.save_training_state(stale, {**STATE, "fingerprint": "written by another --bind"})
    outcome = run_main(_distill_argv(teacher_dir, tmp_path), capfd, monkeypatch)
    assert outcome.code == 0, outcome.stderr_lines
    assert f"note: ignoring checkpoint {stale}: a different configuration or teacher wrote it" in outcome.stdout
    assert "resuming" not in outcome.stdout and "epoch 1/2" in outcome.stdout
    artefact.load_artefact(tmp_path / "student")
    assert not stale.exists()  # the stage completed and removed its resume state


def test_cli_refuses_a_corrupt_checkpoint_and_leaves_it(teacher_dir: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    corrupt = _checkpoint_for(tmp_path)
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(os.urandom(512))
    before = snapshot(tmp_path)
    outcome = run_main(_distill_argv(teacher_dir, tmp_path), capfd, monkeypatch)
    assert_one_line_error(outcome, f"checkpoint {corrupt} is corrupt or not a repro checkpoint",
                          "delete it to start the stage over")
    assert snapshot(tmp_path) == before


class _Failing:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self, path: Path) -> None:
        path.write_bytes(b"partly")
        raise self.exc


def test_full_disk_in_a_safetensors_writer_is_one_line_and_keeps_the_previous_artefact(tmp_path: Path) -> None:
    """safetensors' own writer (used for the substitution sample) reports ENOSPC as SafetensorError."""
    from safetensors import SafetensorError

    out = tmp_path / "student"
    artefact.save_artefact(out, nn.Linear(2, 2), {"architecture": {"name": "n"}, "data": {}}, "first")
    before = snapshot(tmp_path)
    disk_full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(UserError) as raised:
        artefact.save_artefact(out, nn.Linear(2, 2), {"architecture": {"name": "n"}, "data": {}}, "second",
                                 {"sample.safetensors": _Failing(disk_full)})
    assert str(raised.value) == (f"no space left on device while writing {out}; free space and re-run "
                                 "(the previous artefact is kept)")
    assert snapshot(tmp_path) == before


def test_other_write_failures_name_the_cause(tmp_path: Path) -> None:
    denied = OSError(errno.EACCES, "Permission denied")
    with pytest.raises(UserError, match=r"could not write .*student \(Permission denied\); fix the cause and re-run "
                                        r"\(nothing was written\)"):
        artefact.save_artefact(tmp_path / "student", nn.Linear(2, 2), {}, "", {"x": _Failing(denied)})
    assert list(tmp_path.iterdir()) == []


def test_a_bug_in_a_writer_is_not_disguised_as_a_disk_problem(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        artefact.save_artefact(tmp_path / "student", nn.Linear(2, 2), {}, "", {"x": _Failing(KeyError("bug"))})
    assert list(tmp_path.iterdir()) == []


def _dictionary_file(tmp_path: Path, metadata: dict | None = None, **changes: torch.Tensor) -> Path:
    import json

    from safetensors.torch import save_file

    from repro.kdci.dictionary import METADATA_KEY, build_dictionary

    dictionary = build_dictionary(torch.randn(64, 12, generator=torch.Generator().manual_seed(0)), 4, 6)
    path = tmp_path / "dictionary.safetensors"
    record = {**dictionary.metadata(), **(metadata or {})}
    save_file({**dictionary.tensors(), **changes}, str(path),
              metadata={METADATA_KEY: json.dumps({k: v for k, v in record.items() if v is not None})})
    return path


DICTIONARY_DAMAGE = {
    "metadata without the prior kind": ({"metadata": {"prior": None}}, "is not a confounder dictionary"),
    "PCA mean of another feature size": ({"pca_mean": torch.zeros(7)}, "has inconsistent shapes"),
    "cluster sizes of another N": ({"cluster_sizes": torch.ones(5)}, "has inconsistent shapes"),
    "prototypes not a matrix": ({"prototypes": torch.zeros(4, 6, 1)}, "not [N, d]"),
    "prior not a distribution": ({"prior": torch.full((4,), 0.5)}, "prior that is not a distribution"),
}


@pytest.mark.parametrize("case", list(DICTIONARY_DAMAGE))
def test_damaged_dictionary_is_refused(case: str, tmp_path: Path) -> None:
    from repro.kdci.dictionary import ConfounderDictionary

    changes, fragment = DICTIONARY_DAMAGE[case]
    path = _dictionary_file(tmp_path, **changes)
    with pytest.raises(UserError, match=re.escape(fragment)):
        ConfounderDictionary.load(path)


def test_dictionary_written_and_read_back(tmp_path: Path) -> None:
    from repro.kdci.dictionary import ConfounderDictionary, build_dictionary

    dictionary = build_dictionary(torch.randn(64, 12, generator=torch.Generator().manual_seed(0)), 4, 6)
    dictionary.save(tmp_path / "d.safetensors")
    loaded = ConfounderDictionary.load(tmp_path / "d.safetensors", 4, 6)
    assert all(torch.equal(a, b) for a, b in zip(dictionary.tensors().values(), loaded.tensors().values()))


def test_a_kill_between_the_two_renames_points_to_the_previous_artefact(tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    artefact.save_artefact(out, nn.Linear(2, 2), {"architecture": {"name": "n"}, "data": {}}, "")
    out.rename(tmp_path / ".teacher.previous")  # the state between `out -> .previous` and `.partial -> out`
    with pytest.raises(UserError, match=re.escape(f"the previous version is in {tmp_path / '.teacher.previous'}")):
        artefact.read_config(out)


def test_json_write_is_whole_or_nothing(tmp_path: Path, monkeypatch) -> None:
    """io.write_json_atomically: sorted JSON; a failed write keeps the previous file and says so in one line."""
    path = tmp_path / "metrics" / "m.json"
    io.write_json_atomically(path, {"b": 1, "a": 2.5})
    assert path.read_text() == '{\n  "a": 2.5,\n  "b": 1\n}\n'

    def full_disk(target: Path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "_open_for_writing", full_disk)
    with pytest.raises(UserError, match="no space left on device while writing .*m.json.*the previous file is kept"):
        io.write_json_atomically(path, {"a": 3})
    assert path.read_text() == '{\n  "a": 2.5,\n  "b": 1\n}\n' and not list(path.parent.glob("*.partial"))
