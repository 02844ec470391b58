"""``repro verify``: regenerated metrics against the committed ones, cell by cell, with both platforms named."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from repro import cli
from repro.errors import UserError
from repro.pipeline import verify

COMMITTED_PLATFORM = {"machine": "x86_64", "cpu": "Intel(R) Xeon(R) Gold 6338", "cpu_capability": "AVX512",
                      "threads": 2, "torch": "2.14.1", "mkl": "2024.2", "onednn": "3.12.0", "reproducible": False,
                      "pins": "none", "reproducible_note": "off (REPRO_REPRODUCIBLE=0)"}
CURRENT_PLATFORM = {**COMMITTED_PLATFORM, "cpu": "AMD EPYC", "cpu_capability": "AVX2", "reproducible": True,
                    "pins": "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=AVX2"}
BASELINE = [90.0, 92.0, 94.0]  # mean 92, std 2: the committed interval is [88, 96]


def _metrics(method: str, seed: int, top1: float, role: str = "student", **extra) -> dict:
    return {"method": method, "seed": seed, "teacher_seed": 0, "role": role, "top1": top1, "top5": 100.0,
            "per_class": [top1, 100.0 - top1], **extra}


def _write(root: Path, relative: str, record: dict) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
                    *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository whose HEAD holds metrics for dafl (3 seeds) and a teacher, and results.json."""
    root = tmp_path / "project"
    root.mkdir()
    _git(root, "init", "-q")
    for seed, top1 in enumerate(BASELINE):
        _write(root, f"metrics/students/dafl-teacher0-seed{seed}.json", _metrics("dafl", seed, top1))
    _write(root, "metrics/kdci/dafl-teacher0-seed0.json", _metrics("dafl", 0, 93.0))
    _write(root, "metrics/teachers/seed0.json", _metrics("teacher", 0, 99.0, role="teacher"))
    rows = [{"method": "dafl", "baseline_top1": BASELINE, "baseline_mean": 92.0, "baseline_std": 2.0,
             "kdci_top1": [93.0], "kdci_mean": 93.0, "kdci_std": 0.0, "control_top1": [], }]
    _write(root, "reports/results.json", {"teacher_top1": [99.0], "platform": COMMITTED_PLATFORM, "rows": rows})
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "committed results")
    return root


def _regenerate(root: Path) -> None:
    """seed0 untouched; seed1: same numbers, other bytes; seed2 within the interval; kdci outside it;
    the teacher not regenerated; a control file that was never committed."""
    _write(root, "metrics/students/dafl-teacher0-seed1.json", _metrics("dafl", 1, 92.0, model="elsewhere"))
    _write(root, "metrics/students/dafl-teacher0-seed2.json", _metrics("dafl", 2, 95.5))
    _write(root, "metrics/kdci/dafl-teacher0-seed0.json", _metrics("dafl", 0, 97.0))
    (root / "metrics/teachers/seed0.json").unlink()
    _write(root, "metrics/control/dafl-teacher0-seed0.json", _metrics("dafl", 0, 91.0))
    results = json.loads((root / "reports/results.json").read_text())
    _write(root, "reports/results.json", {**results, "platform": CURRENT_PLATFORM})


def test_verdicts_per_cell_and_both_platforms_named(project: Path) -> None:
    _regenerate(project)
    report = verify.verify(project / "metrics", project / "reports/results.json", project / "reports")
    verdicts = {cell["path"]: cell["verdict"] for cell in report["cells"]}
    assert verdicts == {
        "metrics/students/dafl-teacher0-seed0.json": "identical",
        "metrics/students/dafl-teacher0-seed1.json": "identical",
        "metrics/students/dafl-teacher0-seed2.json": "within",
        "metrics/kdci/dafl-teacher0-seed0.json": "outside",
        "metrics/teachers/seed0.json": "missing",
        "metrics/control/dafl-teacher0-seed0.json": "missing",
    }
    cells = {cell["path"]: cell for cell in report["cells"]}
    assert cells["metrics/students/dafl-teacher0-seed2.json"]["interval"] == pytest.approx([88.0, 96.0])
    assert cells["metrics/students/dafl-teacher0-seed2.json"]["arm"] == "baseline"
    assert cells["metrics/teachers/seed0.json"]["reason"] == "committed but not regenerated"
    assert cells["metrics/control/dafl-teacher0-seed0.json"]["reason"] == "regenerated but not committed"
    assert report["counts"] == {"identical": 2, "within": 1, "outside": 1, "missing": 2}
    markdown = (project / "reports/verify.md").read_text()
    assert "Intel(R) Xeon(R) Gold 6338" in markdown and "AMD EPYC" in markdown
    assert "reproducible mode on (ATEN_CPU_CAPABILITY=avx2" in markdown and "reproducible mode off" in markdown
    assert "cpu_capability AVX512 vs AVX2" in report["why"]
    assert json.loads((project / "reports/verify.json").read_text())["counts"] == report["counts"]


def test_cli_prints_counts_and_strict_fails_unless_identical(project: Path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(project)
    assert cli.main(["verify"]) == 0
    out, err = capfd.readouterr()
    assert "6 identical" not in out and "5 identical, 0 within" in out and "reports/verify.md" in out
    assert err == ""  # in-process (torch already imported): the late-pin note goes to logging, not stderr
    assert cli.main(["verify", "--strict"]) == 0
    _regenerate(project)
    assert cli.main(["verify", "--metrics-dir", "metrics", "--results", "reports/results.json", "--out", "out"]) == 0
    assert "2 identical, 1 within the committed interval, 1 outside it, 2 missing -> out/verify.md" in capfd.readouterr().out
    with pytest.raises(SystemExit) as exited:
        cli.main(["verify", "--strict", "--out", "out"])
    assert exited.value.code == 1


def test_uncommitted_results_give_no_interval(project: Path) -> None:
    _git(project, "rm", "-q", "--cached", "reports/results.json")
    _git(project, "commit", "-q", "-m", "results no longer committed")
    _regenerate(project)
    report = verify.verify(project / "metrics", project / "reports/results.json", project / "reports")
    assert report["results_committed"] is False and report["counts"]["within"] == 0
    seed2 = next(cell for cell in report["cells"] if cell["path"].endswith("seed2.json"))
    assert seed2["verdict"] == "outside" and "reports/results.json is not committed" in seed2["reason"]
    assert "committed run's platform: not recorded" in (project / "reports/verify.md").read_text()


def test_bad_input_is_one_error_line(project: Path, tmp_path: Path, monkeypatch, capfd) -> None:
    elsewhere = tmp_path / "not-a-repo"
    (elsewhere / "metrics").mkdir(parents=True)
    with pytest.raises(UserError, match="not inside a git repository"):
        verify.verify(elsewhere / "metrics", elsewhere / "results.json", elsewhere / "reports")
    (project / "metrics/students/dafl-teacher0-seed1.json").write_text("{ broken")
    monkeypatch.chdir(project)
    capfd.readouterr()
    assert cli.main(["verify"]) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: metrics/students/dafl-teacher0-seed1.json is not valid JSON")
    monkeypatch.chdir(elsewhere)
    assert cli.main(["verify"]) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not inside a git repository" in lines[0]
