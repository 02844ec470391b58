"""The results table and the ablation study are built from metrics files the stages wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from repro import config
from repro.errors import UserError
from repro.pipeline import ablate, report, runset, stages

GIN = REPO / "gin"


def test_paired_interval_matches_hand_computation() -> None:
    low, high = report.paired_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, df=2) * sd 1 / sqrt(3)
    assert low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert report.paired_interval([1.0]) is None


def test_hierarchical_interval_resamples_teachers_then_seeds() -> None:
    # Two teachers whose students agree within a teacher but not across: the interval must reach from
    # one teacher's level to the other's (a draw of the same teacher twice happens 1 time in 4).
    spread = {0: [1.0, 1.1, 0.9], 1: [5.0, 5.1, 4.9]}
    low, high = report.hierarchical_interval(spread)
    assert low < 1.2 and high > 4.8
    assert report.hierarchical_interval(spread) == (low, high)  # seeded: the same on every call and machine
    # One teacher: a bootstrap over its seeds, inside their range.
    low, high = report.hierarchical_interval({0: [1.0, 2.0, 3.0]})
    assert 1.0 <= low < 2.0 < high <= 3.0
    assert report.hierarchical_interval({0: [4.0, 4.0], 1: [4.0]}) == (4.0, 4.0)
    assert report.hierarchical_interval({0: [1.0]}) is None


def _write_cell(metrics: Path, family: str, method: str, teacher: int, seed: int, top1: float, **extra: float) -> None:
    path = metrics / family / f"{method}-teacher{teacher}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"top1": top1, "network": "digits_cnn_small", **extra}))


def test_collect_pairs_arms_within_each_teacher_and_seed(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    (metrics / "teachers").mkdir(parents=True)
    for teacher, top1 in ((0, 99.0), (1, 98.0)):
        (metrics / "teachers" / f"seed{teacher}.json").write_text(json.dumps(
            {"top1": top1, "network": "digits_cnn_large", "seed": teacher}))
    values = {}  # (teacher, seed) -> (baseline, kdci, control)
    for teacher in (0, 1):
        for seed in (0, 1, 2):
            values[teacher, seed] = (90.0 + teacher * 4 + seed, 91.0 + teacher * 4 + seed * 1.5, 90.5 + seed)
            baseline, kdci, control = values[teacher, seed]
            _write_cell(metrics, "students", "dafl", teacher, seed, baseline)
            _write_cell(metrics, "kdci", "dafl", teacher, seed, kdci, intervention_off_top1=kdci - 0.25)
            _write_cell(metrics, "control", "dafl", teacher, seed, control)
    results = report.collect(metrics)
    assert results["teacher_top1"] == 98.5 and [t["top1"] for t in results["teachers"]] == [99.0, 98.0]
    (row,) = results["rows"]
    assert row["cells"] == [[t, s] for t in (0, 1) for s in (0, 1, 2)] and row["teacher_seeds"] == [0, 1]
    deltas = {cell: kdci - baseline for cell, (baseline, kdci, _) in values.items()}
    assert row["delta"] == pytest.approx(sum(deltas.values()) / 6)
    by_teacher = {t: [deltas[t, s] for s in (0, 1, 2)] for t in (0, 1)}
    assert row["delta_ci95"] == list(report.hierarchical_interval(by_teacher))
    assert row["intervention_delta"] == pytest.approx(0.25)
    first, second = row["per_teacher"]
    assert first["teacher_seed"] == 0 and first["delta"] == pytest.approx(sum(by_teacher[0]) / 3)
    assert second["delta_ci95"] == pytest.approx(list(report.paired_interval(by_teacher[1])))
    assert second["control_mean"] == pytest.approx(91.5)
    assert {"teacher_seed": 1, "seed": 2, "baseline": 96.0, "kdci": 98.0, "control": 92.5,
            "kdci_intervention_off": 97.75} in row["per_cell"]
    markdown = report.render_markdown(results)
    assert "## Per teacher" in markdown and "| dafl | 1 | 2 | 96.00 | 98.00 | 92.50 | 97.75 |" in markdown
    (metrics / "kdci" / "dafl-seed0.json").write_text("{}")  # the layout before teacher seeds
    with pytest.raises(UserError, match="not a <method>-teacher<T>-seed<S>.json"):
        report.collect(metrics)


def _student(family: str, teacher_dir: Path, root: Path, seed: int, *extra: str) -> dict:
    wrapper = {"kdci": [GIN / "kdci.gin"], "control": [GIN / "kdci_control.gin"]}.get(family, [])
    files = [GIN / "experiments/digits.gin", GIN / "methods/dafl.gin", *wrapper, GIN / "profiles/smoke.gin"]
    config.parse(files, [f"SEED = {seed}", *extra])
    cell = runset.run_for("dafl", 0, seed, root / "models", root / "metrics")
    out = stages.distill(teacher_dir, cell.model_dir(family), root / "ck", track=False)
    config.parse([GIN / "experiments/digits.gin", GIN / "profiles/smoke.gin"])
    return stages.evaluate(out, cell.metrics_path(family), track=False)


def test_report_and_ablations_from_stage_outputs(teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics/teachers").mkdir(parents=True)
    (tmp_path / "metrics/teachers/seed0.json").write_text(json.dumps({"top1": 99.0, "network": "digits_cnn_large",
                                                                      "model": str(teacher_dir), "seed": 0}))
    written = {(family, seed): _student(family, teacher_dir, tmp_path, seed) for family in ("students", "kdci", "control")
               for seed in (0, 1)}
    results = report.write_report(tmp_path / "metrics", tmp_path / "reports")
    (row,) = results["rows"]
    assert row["baseline_top1"] == [written["students", s]["top1"] for s in (0, 1)]
    assert row["kdci_top1"] == [written["kdci", s]["top1"] for s in (0, 1)]
    assert row["control_top1"] == [written["control", s]["top1"] for s in (0, 1)]
    assert row["kdci_intervention_off_top1"] == [written["kdci", s]["intervention_off_top1"] for s in (0, 1)]
    assert "intervention_off_top1" in written["control", 0] and "intervention_off_top1" not in written["students", 0]
    kdci_minus_control = [written["kdci", s]["top1"] - written["control", s]["top1"] for s in (0, 1)]
    assert row["kdci_vs_control"] == pytest.approx(sum(kdci_minus_control) / 2)
    assert row["kdci_vs_control_ci95"] == list(report.hierarchical_interval({0: kdci_minus_control}))
    markdown = (tmp_path / "reports/results.md").read_text()
    assert "| Δ KDCI − control |" in markdown and "capacity-matched" in markdown
    control = json.loads((tmp_path / "models/control/dafl/teacher0-seed0/config.json").read_text())
    assert control["method"]["name"] == "dafl+control" and control["method"]["kdci"]["random_prototypes"] is True
    assert control["teacher"]["seed"] == 0 and results["platform"] == control["platform"]

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiment": "digits", "profile": "smoke", "methods": ["dafl"], "seeds": [0],
                                      "teacher_seeds": [0], "study": False}))
    text = ablate.run_ablations(params, teacher_dir, tmp_path / "metrics", tmp_path / "ablations.md", GIN, track=False)
    assert "The study is off" in text and "dvc exp run -S study=true" in text
    params.write_text(params.read_text().replace("study: false", "study: true"))
    text = ablate.run_ablations(params, teacher_dir, tmp_path / "metrics", tmp_path / "ablations.md", GIN,
                                tmp_path / "ablation-models", track=False)
    config.parse([GIN / "ablations.gin"])
    for variant in ablate.ablation_variants():
        top1 = json.loads((tmp_path / f"metrics/ablations/{variant}/dafl-seed0.json").read_text())["top1"]
        assert f"| dafl | {variant} |" in text and f"{top1:.2f} ± 0.00" in text
    assert (tmp_path / "ablations.md").read_text() == text
    # With the study off again, the study's report is kept (DVC persists it), not replaced by a placeholder.
    params.write_text(params.read_text().replace("study: true", "study: false"))
    assert ablate.run_ablations(params, teacher_dir, tmp_path / "metrics", tmp_path / "ablations.md", GIN,
                                track=False) == text


def test_frechet_distance_and_shift_score_golden_values() -> None:
    import torch

    from repro.pipeline.diagnose import frechet_distance, proportions

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=generator)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, means 2 apart on one axis: distance |mu_a - mu_b|^2 = 4.
    assert frechet_distance(a, a + torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(4.0, abs=1e-6)
    share = proportions(torch.tensor([0, 0, 1, 1]), 3)
    assert share.tolist() == [0.5, 0.5, 0.0]
