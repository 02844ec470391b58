"""The results table and the ablation study are built from metrics files the stages wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from repro import config
from repro.pipeline import ablate, report, stages

GIN = REPO / "gin"


def test_paired_interval_matches_hand_computation() -> None:
    low, high = report.paired_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, df=2) * sd 1 / sqrt(3)
    assert low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert report.paired_interval([1.0]) is None


def _student(family: str, teacher_dir: Path, root: Path, seed: int, *extra: str) -> dict:
    wrapper = {"kdci": [GIN / "kdci.gin"], "control": [GIN / "kdci_control.gin"]}.get(family, [])
    files = [GIN / "experiments/digits.gin", GIN / "methods/dafl.gin", *wrapper, GIN / "profiles/smoke.gin"]
    config.parse(files, [f"SEED = {seed}", *extra])
    out = stages.distill(teacher_dir, root / "models" / family / "dafl" / f"seed{seed}", root / "ck", track=False)
    config.parse([GIN / "experiments/digits.gin", GIN / "profiles/smoke.gin"])
    return stages.evaluate(out, root / "metrics" / family / f"dafl-seed{seed}.json", track=False)


def test_report_and_ablations_from_stage_outputs(teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/teacher.json").write_text(json.dumps({"top1": 99.0, "network": "digits_cnn_large"}))
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
    assert row["kdci_vs_control_ci95"] == pytest.approx(list(report.paired_interval(kdci_minus_control)))
    markdown = (tmp_path / "reports/results.md").read_text()
    assert "| Δ KDCI − control |" in markdown and "capacity-matched" in markdown
    control = json.loads((tmp_path / "models/control/dafl/seed0/config.json").read_text())
    assert control["method"]["name"] == "dafl+control" and control["method"]["kdci"]["random_prototypes"] is True

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiment": "digits", "profile": "smoke", "methods": ["dafl"], "seeds": [0],
                                      "ablate": False}))
    text = ablate.run_ablations(params, teacher_dir, tmp_path / "metrics", tmp_path / "ablations.md", GIN, track=False)
    assert "Ablations are off" in text
    params.write_text(params.read_text().replace("ablate: false", "ablate: true"))
    text = ablate.run_ablations(params, teacher_dir, tmp_path / "metrics", tmp_path / "ablations.md", GIN,
                                tmp_path / "ablation-models", track=False)
    config.parse([GIN / "ablations.gin"])
    for variant in ablate.ablation_variants():
        top1 = json.loads((tmp_path / f"metrics/ablations/{variant}/dafl-seed0.json").read_text())["top1"]
        assert f"| dafl | {variant} |" in text and f"{top1:.2f} ± 0.00" in text
    assert (tmp_path / "ablations.md").read_text() == text


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
