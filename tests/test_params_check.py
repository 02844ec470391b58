"""params.yaml is checked whole (repro/pipeline/check.py) by DVC's first stage, `repro check-params`, and
by every `--params` command through runset.read_params: one implementation, one `error:` line per fault,
nothing written when it refuses. An imported teacher is a params.yaml choice the teacher stage honours.

The DVC side (a refused params.yaml stops `dvc repro` before it removes the teachers or the metrics)
is tests/test_pipeline.py::test_a_refused_params_yaml_stops_dvc_before_it_removes_anything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gin
import pytest

from conftest import REPO
from repro import config
from repro.pipeline import check, stages
from support import cli_errors
from support.cli_errors import assert_one_line_error, run_main, snapshot

GOOD = "experiment: digits\nprofile: smoke\nteacher_seeds: [0]\nseeds: [0]\nmethods: [dafl]\n"
IMPORT = ("experiment: cifar10_wrn40_2-wrn16_1\nprofile: smoke\nteacher_seeds: [3]\nseeds: [0]\nmethods: [dafl]\n"
          "teacher: {file: models/pretrained/cifar10_wrn40_2.pth, arch: wrn40_2, expected_top1: 0}\n")


def _with(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


# Every case: the params.yaml text (bytes where the encoding is the point) and what its one line must name.
REFUSED: dict[str, tuple[str | bytes, tuple[str, ...]]] = {
    "not UTF-8": (GOOD.encode() + b"# caf\xe9\n", ("is not UTF-8 text", "byte 0xe9", "save it as UTF-8")),
    "duplicated key": (GOOD + "methods: [cmi]\n", ("key 'methods' is given twice (lines 5 and 6)", "keep one")),
    "duplicated nested key": (GOOD + "teacher: {file: a.pth, file: b.pth, arch: wrn40_2}\n",
                              ("key 'file' is given twice",)),
    "method with a parent path": (_with(GOOD, "[dafl]", "[../dafl]"), ("methods '../dafl' is not a plain name",)),
    "method with a slash": (_with(GOOD, "[dafl]", "[budgets/smoke]"), ("methods 'budgets/smoke' is not a plain name",)),
    "method with a backslash": (_with(GOOD, "[dafl]", "['a\\b']"), ("is not a plain name", "no '/', '\\'")),
    "profile as a path": (_with(GOOD, "smoke", "paper/cifar"), ("profile 'paper/cifar' is not a plain name",)),
    "experiment typo": (_with(GOOD, "digits", "digts"), ("experiment 'digts' has no gin/experiments/digts.gin",)),
    "profile for another dataset": (_with(GOOD, "smoke", "paper-cifar10"), (
        "profile 'paper-cifar10' is for cifar10 experiments but the dataset of experiment 'digits' is 'digits'",
        "-S experiment=cifar10_")),
    "no methods": (_with(GOOD, "[dafl]", "[]"), ("methods must be a non-empty list",)),
    "methods not a list": (_with(GOOD, "[dafl]", "dafl"), ("methods must be a non-empty list", "not 'dafl'")),
    "repeated method": (_with(GOOD, "[dafl]", "[dafl, dafl]"), ("lists a method twice",)),
    "repeated seed": (_with(GOOD, "seeds: [0]", "seeds: [1, 1]"), ("seeds [1, 1] lists a seed twice",)),
    "seed too large": (_with(GOOD, "seeds: [0]", "seeds: [18446744073709551616]"), ("seeds must be", "at most")),
    "seed past --bind's range": (_with(GOOD, "seeds: [0]", "seeds: [4294967296]"), ("seeds must be", "at most 4294967295")),
    "boolean teacher seed": (_with(GOOD, "teacher_seeds: [0]", "teacher_seeds: [yes]"), ("teacher_seeds must be",)),
    "negative teacher seed": (_with(GOOD, "teacher_seeds: [0]", "teacher_seeds: [-2]"), ("teacher_seeds must be",)),
    "study not a bool": (GOOD + "study: 'yes'\n", ("study must be true or false, not 'yes'",)),
    "study a number": (GOOD + "study: 1\n", ("study must be true or false, not 1",)),
    "launcher not a string": (GOOD + "launcher: [torchrun]\n", ("launcher must be a string",)),
    "launcher left empty": (GOOD + "launcher:\n", ("launcher must be a string", "not None")),
    "misspelt key": (GOOD + "studdy: true\n", ("unknown key 'studdy'", "the keys are experiment")),
    "not a mapping": ("- dafl\n", ("is not a mapping of parameters",)),
    "empty file": ("", ("is not a mapping of parameters",)),
    "teacher neither train nor a file": (GOOD + "teacher: import\n", ("teacher must be train or a zju-vipa file",)),
    "teacher file outside models/pretrained/": (GOOD + "teacher: {file: /tmp/cifar10_wrn40_2.pth, arch: wrn40_2}\n",
                                         ("teacher.file must be a file under models/pretrained/", "'/tmp/cifar10_wrn40_2.pth'")),
    "teacher file climbing out": (GOOD + "teacher: {file: models/pretrained/../params.yaml, arch: wrn40_2}\n",
                                  ("teacher.file must be a file under models/pretrained/",)),
    "teacher file missing": (GOOD + "teacher: {file: models/pretrained/absent.pth, arch: wrn40_2}\n",
                             ("teacher.file models/pretrained/absent.pth does not exist", "or set teacher: train")),
    "teacher without arch": (GOOD + "teacher: {file: models/pretrained/x.pth}\n", ("teacher has no 'arch'",)),
    "teacher with an unknown key": (GOOD + "teacher: {file: models/pretrained/x.pth, arch: wrn40_2, tolerance: 1}\n",
                                    ("teacher has unknown key 'tolerance'",)),
    "import with two teacher seeds": (_with(GOOD, "teacher_seeds: [0]", "teacher_seeds: [0, 1]")
                                      + "teacher: {file: models/pretrained/x.pth, arch: wrn40_2}\n",
                                      ("teacher_seeds must list exactly one seed", "not [0, 1]")),
}
# The verbs that read params.yaml: DVC's first stage, and a stage's own --params (runset.read_params).
VERBS = {"check-params": ["check-params"],
         "evaluate --params": ["evaluate", "--gin", "gin/experiments/digits.gin", "--no-track"]}


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("verb", list(VERBS))
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_params_yaml_is_one_error_line_and_writes_nothing(case: str, verb: str, tmp_path: Path, capfd,
                                                                 monkeypatch) -> None:
    text, fragments = REFUSED[case]
    params = _write(tmp_path / "params.yaml", text)
    out = tmp_path / "params.checked.json"
    out.write_text('{"previous": "record"}\n')  # stage params' last good record (persist: true) must survive
    before = snapshot(REPO / "metrics") if (REPO / "metrics").is_dir() else {}
    argv = [*VERBS[verb], "--params", params] + (["--out", out] if verb == "check-params" else [])
    assert_one_line_error(run_main(argv, capfd, monkeypatch), str(params), *fragments)
    assert out.read_text() == '{"previous": "record"}\n'
    assert (snapshot(REPO / "metrics") if (REPO / "metrics").is_dir() else {}) == before


def test_the_record_is_the_normalised_params_and_the_same_bytes_each_time(tmp_path: Path, capfd, monkeypatch) -> None:
    params, out = _write(tmp_path / "params.yaml", GOOD + "# a comment changes nothing\n"), tmp_path / "checked.json"
    outcome = run_main(["check-params", "--params", params, "--out", out], capfd, monkeypatch)
    assert outcome.code == 0 and outcome.stderr_lines == [], outcome.stderr_lines
    assert "valid: experiment digits, profile smoke" in outcome.stdout
    first = out.read_bytes()
    assert json.loads(first) == {"experiment": "digits", "profile": "smoke", "teacher_seeds": [0], "seeds": [0],
                                 "methods": ["dafl"], "study": False, "launcher": "", "teacher": "train"}
    _write(params, GOOD.replace("methods: [dafl]", "methods:   [ dafl ]") + "study: false\nteacher: train\n")
    assert run_main(["check-params", "--params", params, "--out", out], capfd, monkeypatch).code == 0
    assert out.read_bytes() == first  # defaults spelt out, other spacing: the stages keep their cache


def test_the_shipped_params_yaml_is_valid(capfd, monkeypatch) -> None:
    outcome = run_main(["check-params"], capfd, monkeypatch)
    assert outcome.code == 0, outcome.stderr_lines


# ---------------------------------------------------------------- the gin facts, read without torch

@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "gin/experiments").glob("*.gin")))
def test_the_dataset_and_teacher_read_from_the_text_are_what_gin_builds(experiment: str, tmp_path: Path) -> None:
    for split in ("train", "val"):  # ImageFolderDataset checks its folders when built
        (tmp_path / split).mkdir()
    facts = check.GinFacts({"experiment": experiment, "profile": "smoke"}, REPO / "gin")
    config.parse([REPO / f"gin/experiments/{experiment}.gin"], [f"ImageFolderDataset.root = '{tmp_path}'"])
    assert facts.dataset == gin.query_parameter("train_teacher.dataset").scoped_configurable_fn().spec.name
    assert facts.teacher_arch == gin.query_parameter("train_teacher.network").scoped_configurable_fn().name


@pytest.mark.parametrize("profile", sorted(p.stem for p in (REPO / "gin/profiles").glob("*.gin")))
def test_the_profile_scope_read_from_the_text_is_what_gin_binds(profile: str) -> None:
    facts = check.GinFacts({"experiment": "digits", "profile": profile}, REPO / "gin")
    config.parse([REPO / "gin/experiments/digits.gin", REPO / f"gin/profiles/{profile}.gin"])
    assert facts.profile_datasets == stages.profile_scope()


def test_reading_params_does_not_import_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    params = _write(tmp_path / "params.yaml", GOOD)
    code = (f"import sys; from repro.pipeline import runset; runset.read_params({str(params)!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- importing the teacher (params.yaml `teacher:`)

@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A project folder (gin/ linked, models/pretrained/ with a zju-vipa-style CIFAR-10 wrn40_2 file) that
    run_main works in, as DVC runs the stages at the project root."""
    from test_import_teacher import save_zju, zju_model

    (tmp_path / "gin").symlink_to(REPO / "gin")
    (tmp_path / "models/pretrained").mkdir(parents=True)
    save_zju(zju_model("wrn40_2"), tmp_path / "models/pretrained/cifar10_wrn40_2.pth", prefix="module.")
    monkeypatch.setattr(cli_errors, "REPO", tmp_path)
    return tmp_path


IMPORT_REFUSED = {
    "arch of another pair": (_with(IMPORT, "arch: wrn40_2", "arch: resnet34"),
                             ("teacher.arch 'resnet34' is not the teacher of experiment 'cifar10_wrn40_2-wrn16_1' (wrn40_2)",)),
    "arch that cannot be imported": (_with(_with(IMPORT, "cifar10_wrn40_2-wrn16_1", "digits"), "arch: wrn40_2",
                                           "arch: digits_cnn_large"), ("teacher.arch 'digits_cnn_large' cannot be imported",)),
    "arch as a path": (_with(IMPORT, "arch: wrn40_2", "arch: ../wrn40_2"), ("teacher.arch must be the repro network",)),
    "no benchmark figure": (_with(_with(_with(IMPORT, "cifar10_wrn40_2-wrn16_1", "tiny_imagenet_resnet34-resnet18"),
                                        "arch: wrn40_2", "arch: resnet34"), ", expected_top1: 0", ""),
                            ("no reported top-1 for resnet34 on tiny_imagenet", "set teacher.expected_top1 in")),
    "expected top-1 not a percentage": (_with(IMPORT, "expected_top1: 0", "expected_top1: 120"),
                                        ("teacher.expected_top1 must be a test top-1 in percent",)),
}


@pytest.mark.parametrize("case", list(IMPORT_REFUSED))
def test_a_bad_teacher_import_is_refused_before_the_teacher_stage(case: str, project: Path, capfd, monkeypatch) -> None:
    text, fragments = IMPORT_REFUSED[case]
    _write(project / "params.yaml", text)
    outcome = run_main(["check-params", "--params", "params.yaml", "--out", "models/params.checked.json"], capfd, monkeypatch)
    assert_one_line_error(outcome, "params.yaml", *fragments)
    assert not (project / "models/params.checked.json").exists()


def test_the_teacher_stage_imports_the_file_params_yaml_names(project: Path, capfd, monkeypatch) -> None:
    _write(project / "params.yaml", IMPORT)
    checked = run_main(["check-params", "--params", "params.yaml", "--out", "models/params.checked.json"], capfd, monkeypatch)
    assert checked.code == 0, checked.stderr_lines
    digest = hashlib.sha256((project / "models/pretrained/cifar10_wrn40_2.pth").read_bytes()).hexdigest()
    record = json.loads((project / "models/params.checked.json").read_text())
    assert record["teacher"] == {"file": "models/pretrained/cifar10_wrn40_2.pth", "arch": "wrn40_2", "expected_top1": 0.0,
                                 "sha256": digest}  # a replaced file changes the record: the teacher stage re-runs

    # No CIFAR download here: random images of CIFAR-10's shape stand in for its test split.
    fake = ["--bind", "DATASET = @FakeImages()", "--bind", "FakeImages.size = 16"]
    wrong_seed = run_main(["train-teacher", "--params", "params.yaml", "--teacher-seed", "0", *fake], capfd, monkeypatch)
    assert_one_line_error(wrong_seed, "--teacher-seed 0 is not params.yaml's imported teacher (teacher_seeds: [3])")
    outcome = run_main(["train-teacher", "--params", "params.yaml", *fake], capfd, monkeypatch)
    assert outcome.code == 0, outcome.stderr_lines
    assert "imported models/pretrained/cifar10_wrn40_2.pth as wrn40_2" in outcome.stdout
    artefact = json.loads((project / "models/teachers/seed3/config.json").read_text())
    assert artefact["seed"] == 3 and artefact["imported_from"]["sha256"] == digest  # its students name teacher 3
    metrics = json.loads((project / "metrics/teachers/seed3.json").read_text())
    assert metrics["seed"] == 3 and metrics["imported_from"] == digest and metrics["role"] == "teacher"
    assert sorted(p.name for p in (project / "models/teachers").iterdir()) == ["seed3"]
