"""One place composes a run's gin files (repro/pipeline/runset.py): the stages' `--params` form gives
exactly the configuration of the files spelled out, and a half-given cell is refused with one line."""

from __future__ import annotations

from pathlib import Path

import gin
import pytest
import yaml

from conftest import REPO, run_cli
from repro import config
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


def test_distill_with_params_needs_a_whole_cell(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    result = run_cli("distill", "--params", str(params), "--method", "dafl", "--teacher", str(tmp_path / "t"),
                     "--out", str(tmp_path / "s"), "--no-track")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --params needs --method and --seed (one cell of the run set), e.g. --method dafl --seed 0")
    result = run_cli("distill", "--gin", "gin/experiments/digits.gin", "--kdci", "--teacher", str(tmp_path / "t"),
                     "--out", str(tmp_path / "s"), "--no-track")
    assert result.returncode == 2 and "also pass --params params.yaml" in result.stderr
    assert not (tmp_path / "s").exists()


def test_distill_with_params_trains_the_cell(teacher_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    result = run_cli("distill", "--params", str(params), "--method", "dafl", "--seed", "1", "--kdci",
                     "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"), "--no-track",
                     "--checkpoint-dir", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    record = (tmp_path / "s" / "config.json").read_text()
    assert '"name": "dafl+kdci"' in record and '"seed": 1' in record
