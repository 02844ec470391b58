"""The dose-response experiment: one strength drives each family's bindings, the measured shift follows,
and the baseline, KDCI and control students are distilled and evaluated at every strength."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO
from repro.pipeline import shift_sweep


def _gin_root(tmp_path: Path, settings: list[str]) -> Path:
    gin_dir = tmp_path / "gin"
    gin_dir.mkdir()
    # The shipped sweep file plus small settings.
    (gin_dir / "shift_sweep.gin").write_text((REPO / "gin/shift_sweep.gin").read_text() + "\n".join(["", *settings, ""]))
    for folder in ("experiments", "profiles", "methods", "pools", "data", "pairs", "families"):
        (gin_dir / folder).symlink_to(REPO / "gin" / folder)
    for name in ("kdci.gin", "kdci_control.gin", "base.gin"):
        (gin_dir / name).symlink_to(REPO / "gin" / name)
    return gin_dir


def test_sweep_distills_three_arms_and_measures_a_growing_shift(teacher_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("experiment: digits\nprofile: smoke\nseeds: [0]\nteacher_seeds: [0]\nmethods: [dafl]\n"
                      "study: true\n")
    gin_dir = _gin_root(tmp_path, [
        "sweep_settings.strengths = [0.0, 1.0]", "sweep_settings.seeds = [0]",
        "sweep_settings.families = {'pool': {'methods': ['dfnd'], 'bindings': ['POOL = @ShiftedDigits()', "
        "'ShiftedDigits.skew = {skew}', 'ShiftedDigits.degradation = {strength}']}}",
        "DISTILL_EPOCHS = 1", "KDCI.warmup_epochs = 0", "ShiftedDigits.count = 1024",
        "distill.substitution_sample_size = 512"])
    result = shift_sweep.run_sweep(params, teacher_dir, tmp_path / "out", gin_root=gin_dir,
                                   work_dir=tmp_path / "models", track=False)
    rows = {row["strength"]: row for row in result["rows"]}
    assert set(rows) == {0.0, 1.0} and rows[1.0]["skew"] == 3.0
    for row in rows.values():
        assert all(0 <= row[f"{arm}_top1"] <= 100 for arm in ("baseline", "kdci", "control"))
    control = json.loads((tmp_path / "models/pool/dfnd-s1.000/control/seed0/config.json").read_text())
    assert control["method"]["name"] == "dfnd+control"
    # A skewed, degraded pool is measurably further from the real test data.
    assert rows[1.0]["shift_score_tv"] > rows[0.0]["shift_score_tv"]
    assert rows[1.0]["frechet_distance"] > rows[0.0]["frechet_distance"]
    written = json.loads((tmp_path / "out/shift_sweep.json").read_text())
    assert written["rows"] == result["rows"] and len(written["summary"]) == 2 and written["trend"][0]["method"] == "dfnd"
    text = (tmp_path / "out/shift_sweep.md").read_text()
    assert "| pool | dfnd | 1.00 |" in text and "Does the gain grow with the shift?" in text
    assert (tmp_path / "out/shift_sweep.png").stat().st_size > 1000


def test_slope_and_verdicts_from_per_seed_gains() -> None:
    beta, interval = shift_sweep.slope([0.0, 0.1, 0.2, 0.3], [0.0, 1.0, 2.0, 3.1])
    assert beta == pytest.approx(10.3) and interval[0] > 0
    rows = [{"family": "f", "method": "m", "shift_score_tv": x, "baseline_top1": 90.0, "kdci_top1": 90.0 + 10 * x + e,
             "control_top1": 90.0 + e} for x, e in ((0.0, 0.1), (0.1, -0.1), (0.2, 0.1), (0.3, -0.1), (0.4, 0.0))]
    (trend,) = shift_sweep.trends(rows)
    assert trend["kdci_minus_baseline_verdict"] == "grows with the shift"
    assert trend["kdci_minus_baseline_slope_per_0.1_tv"] == pytest.approx(1.0, abs=0.1)
    assert trend["control_minus_baseline_verdict"] == "no evidence that it changes with the shift"


def test_sweep_off_keeps_a_committed_report_or_explains(teacher_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("experiment: digits\nprofile: smoke\nseeds: [0]\nmethods: [dafl]\nstudy: false\n")
    assert shift_sweep.run_sweep(params, teacher_dir, tmp_path / "out", gin_root=REPO / "gin") == {}
    assert "dvc exp run -S study=true" in (tmp_path / "out/shift_sweep.md").read_text()
    (tmp_path / "out/shift_sweep.md").write_text("a committed study report\n")
    shift_sweep.run_sweep(params, teacher_dir, tmp_path / "out", gin_root=REPO / "gin")
    assert (tmp_path / "out/shift_sweep.md").read_text() == "a committed study report\n"
