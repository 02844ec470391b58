"""Bad input through the command line: one `error:` line, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli

EXPERIMENT = "gin/experiments/digits.gin"


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_gin_name(tmp_path: Path) -> None:
    result = run_cli("distill", "--gin", EXPERIMENT, "--bind", "student/Trainer.epochz = 3",
                     "--teacher", str(tmp_path), "--out", str(tmp_path / "s"))
    _assert_one_line_error(result, "epochz")


def test_misspelt_method(tmp_path: Path) -> None:
    result = run_cli("distill", "--gin", EXPERIMENT, "--gin", "gin/methods/dafll.gin", "--gin", "gin/profiles/smoke.gin",
                     "--teacher", str(tmp_path), "--out", str(tmp_path / "s"))
    _assert_one_line_error(result, "gin/methods/dafll.gin does not exist", "dafl")


def test_missing_teacher_checkpoint(tmp_path: Path) -> None:
    result = run_cli("distill", "--gin", EXPERIMENT, "--gin", "gin/methods/dafl.gin", "--gin", "gin/profiles/smoke.gin",
                     "--teacher", str(tmp_path / "no-teacher"), "--out", str(tmp_path / "s"), "--no-track")
    _assert_one_line_error(result, "no model artefact", "no-teacher")
    assert not (tmp_path / "s").exists()


def test_corrupt_teacher_weights(teacher_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "teacher"
    shutil.copytree(teacher_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    result = run_cli("evaluate", "--gin", EXPERIMENT, "--model", str(broken), "--metrics", str(tmp_path / "m.json"),
                     "--no-track")
    _assert_one_line_error(result, "sha256")
    assert not (tmp_path / "m.json").exists()


def test_negative_learning_rate(tmp_path: Path, teacher_dir: Path) -> None:
    result = run_cli("distill", "--gin", EXPERIMENT, "--gin", "gin/methods/dafl.gin", "--gin", "gin/profiles/smoke.gin",
                     "--bind", "student/SGD.lr = -1.0", "--teacher", str(teacher_dir), "--out", str(tmp_path / "s"),
                     "--no-track", "--checkpoint-dir", str(tmp_path / "c"))
    _assert_one_line_error(result, "learning rate")


def test_names_lists_networks_and_configurables() -> None:
    result = run_cli("names")
    assert result.returncode == 0, result.stderr
    assert "resnet34" in result.stdout and "KDCI" in result.stdout and "SGD" in result.stdout


def test_params_with_an_unknown_method_or_profile(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("experiment: digits\nprofile: default\nseeds: [0]\nmethods: [dafl, cmii]\n")
    result = run_cli("evaluate", "--gin", "gin/experiments/digits.gin", "--params", str(bad))
    _assert_one_line_error(result, "methods 'cmii' has no gin/methods/cmii.gin; available: cmi, dafl")
    bad.write_text("experiment: digits\nprofile: fastest\nseeds: [0]\nmethods: [dafl]\n")
    result = run_cli("bench", "--params", str(bad))
    _assert_one_line_error(result, "profile 'fastest' has no gin/profiles/fastest.gin")


def test_version_and_defaults_in_help() -> None:
    from repro import __version__

    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"repro {__version__} (kdci-repro)"
    helped = run_cli("distill", "--help")
    assert helped.returncode == 0 and "(default: checkpoints)" in " ".join(helped.stdout.split())
    assert "(default: None)" not in helped.stdout and "(default: False)" not in helped.stdout
