"""The controlled-shift experiment: strengths set the pool's skew and degradation, the measured shift
follows, and both students are distilled and evaluated at every strength."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO
from repro.pipeline import shift_sweep


def test_sweep_distills_both_students_and_measures_a_growing_shift(teacher_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("experiment: digits\nprofile: smoke\nseeds: [0]\nmethods: [dafl]\nshift_sweep: true\n")
    gin_dir = tmp_path / "gin"
    gin_dir.mkdir()
    # The shipped sweep file plus small settings: two strengths, DFND only, one epoch.
    (gin_dir / "shift_sweep.gin").write_text((REPO / "gin/shift_sweep.gin").read_text() + "\n".join([
        "", "sweep_settings.strengths = [0.0, 1.0]", "sweep_settings.methods = ['dfnd']", "DISTILL_EPOCHS = 1", "KDCI.warmup_epochs = 0",
        "ShiftedDigits.count = 1024", "distill.substitution_sample_size = 512", ""]))
    for folder in ("experiments", "profiles", "methods", "pools", "data", "pairs", "families"):
        (gin_dir / folder).symlink_to(REPO / "gin" / folder)
    for name in ("kdci.gin", "base.gin"):
        (gin_dir / name).symlink_to(REPO / "gin" / name)
    result = shift_sweep.run_sweep(params, teacher_dir, tmp_path / "out", gin_root=gin_dir,
                                   work_dir=tmp_path / "models", track=False)
    rows = {row["strength"]: row for row in result["rows"]}
    assert set(rows) == {0.0, 1.0} and rows[1.0]["skew"] == 3.0
    for row in rows.values():
        assert 0 <= row["baseline_top1"] <= 100 and 0 <= row["kdci_top1"] <= 100
    # A degraded pool is measurably further from the real test data in the teacher's feature space.
    assert rows[1.0]["frechet_distance"] > rows[0.0]["frechet_distance"]
    written = json.loads((tmp_path / "out/shift_sweep.json").read_text())
    assert written["rows"] == result["rows"]
    assert "| dfnd | 1 | 3 |" in (tmp_path / "out/shift_sweep.md").read_text()
    assert (tmp_path / "out/shift_sweep.png").stat().st_size > 1000


def test_sweep_is_a_documented_no_op_when_off(teacher_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("experiment: digits\nprofile: smoke\nseeds: [0]\nmethods: [dafl]\nshift_sweep: false\n")
    assert shift_sweep.run_sweep(params, teacher_dir, tmp_path / "out", gin_root=REPO / "gin") == {}
    assert "dvc exp run -S shift_sweep=true" in (tmp_path / "out/shift_sweep.md").read_text()
