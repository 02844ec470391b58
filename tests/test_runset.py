"""One place composes a run's gin files (repro/pipeline/runset.py): the stages' `--params` form gives
exactly the configuration of the files spelled out, and a half-given cell is refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gin
import pytest
import yaml

from conftest import REPO, run_cli
from repro import config
from repro.errors import UserError
from repro.pipeline import runset

PARAMS = {"experiment": "digits", "profile": "smoke", "methods": ["dafl"], "seeds": [0]}


def test_gin_files_order_experiment_method_kdci_profile_extras() -> None:
    files = runset.gin_files(PARAMS, "cmi", kdci=True, extras=["ablations"], gin_root=Path("gin"))
    assert [str(f) for f in files] == ["gin/experiments/digits.gin", "gin/methods/cmi.gin", "gin/kdci.gin",
                                      "gin/profiles/smoke.gin", "gin/ablations.gin"]
    assert [str(f) for f in runset.gin_files(PARAMS)] == ["gin/experiments/digits.gin", "gin/profiles/smoke.gin"]


@pytest.mark.parametrize("kdci", [False, True])
def test_composed_config_equals_the_files_spelled_out(kdci: bool, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    by_hand = ["gin/experiments/digits.gin", "gin/methods/fast.gin", *(["gin/kdci.gin"] if kdci else []),
               "gin/profiles/smoke.gin"]
    config.parse(by_hand, ["SEED=3"])
    expected = gin.config_str()
    config.parse(runset.gin_files(PARAMS, "fast", kdci), ["SEED = 3"])
    assert gin.config_str() == expected


def test_distill_with_params_refuses_a_half_given_run(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    result = run_cli("distill", "--params", str(params), "--seed", "0", "--no-track")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --params needs --method (its cells: every teacher seed x seed of params.yaml), e.g. --method dafl")
    result = run_cli("distill", "--params", str(params), "--method", "dafl", "--out", str(tmp_path / "s"), "--no-track")
    assert result.returncode == 2 and "drop --teacher/--out" in result.stderr
    result = run_cli("distill", "--gin", "gin/experiments/digits.gin", "--kdci", "--teacher", str(tmp_path / "t"),
                     "--out", str(tmp_path / "s"), "--no-track")
    assert result.returncode == 2 and "also pass --params params.yaml" in result.stderr
    result = run_cli("distill", "--params", str(params), "--method", "dafl", "--teacher-seed", "7", "--no-track")
    assert result.returncode == 2 and "no cell of params.yaml matches" in result.stderr
    assert not (tmp_path / "s").exists()


def test_runs_cover_every_teacher_and_seed_and_name_their_places() -> None:
    params = {**PARAMS, "methods": ["dafl", "cmi"], "teacher_seeds": [0, 3], "seeds": [1, 2]}
    cells = list(runset.runs(params))
    assert [(c.method, c.teacher_seed, c.seed) for c in cells] == [
        (m, t, s) for m in ("dafl", "cmi") for t in (0, 3) for s in (1, 2)]
    assert [c.seed for c in runset.runs(params, method="cmi", teacher_seed=3)] == [1, 2]
    cell = cells[1]
    assert cell.teacher_dir == Path("models/teachers/seed0")
    assert cell.model_dir("kdci") == Path("models/kdci/dafl/teacher0-seed2")
    assert cell.metrics_path("control") == Path("metrics/control/dafl-teacher0-seed2.json")
    assert cell.arms()[0] == (Path("models/students/dafl/teacher0-seed2"), Path("metrics/students/dafl-teacher0-seed2.json"))


@pytest.mark.parametrize("teacher_seeds, message", [
    ([], "teacher_seeds must be a non-empty list"), ([0, 0], "teacher_seeds must be a non-empty list"),
    ([-1], "teacher_seeds must be"), ("0", "teacher_seeds must be"), ([True], "teacher_seeds must be")])
def test_read_params_refuses_bad_teacher_seeds(teacher_seeds, message: str, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**PARAMS, "teacher_seeds": teacher_seeds}))
    with pytest.raises(UserError, match=message):
        runset.read_params(params, REPO / "gin")
    params.write_text(yaml.safe_dump({**PARAMS, "teacher_seed": 0}))  # the key before teacher seeds were a list
    with pytest.raises(UserError, match="teacher_seed is now a list, teacher_seeds"):
        runset.read_params(params, REPO / "gin")


def test_distill_with_params_trains_every_cell_of_the_method(teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    # Two teacher seeds' folders (the same teacher copied: what is checked is the bookkeeping) x 2 seeds.
    monkeypatch.chdir(tmp_path)
    for seed in (0, 1):
        target = tmp_path / "models/teachers" / f"seed{seed}"
        shutil.copytree(teacher_dir, target)
        record = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**record, "seed": seed}))
    (tmp_path / "gin").symlink_to(REPO / "gin")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**PARAMS, "teacher_seeds": [0, 1], "seeds": [0, 1]}))
    result = run_cli("distill", "--params", str(params), "--method", "dafl", "--kdci", "--teacher-seed", "1",
                     "--no-track", "--checkpoint-dir", str(tmp_path / "c"), "--bind", "DISTILL_EPOCHS = 2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "models/kdci/dafl").iterdir()) == ["teacher1-seed0", "teacher1-seed1"]
    record = json.loads((tmp_path / "models/kdci/dafl/teacher1-seed1/config.json").read_text())
    assert record["method"]["name"] == "dafl+kdci" and record["seed"] == 1 and record["teacher"]["seed"] == 1
