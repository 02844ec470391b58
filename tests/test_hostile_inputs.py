"""Hostile input through the command line: every case ends with exit status 2, exactly one stderr
line starting ``error:`` that names the problem, no traceback, and nothing lost (the output folder
absent or untouched, a previous artefact or metrics file unchanged).

Cases run ``repro.cli.main`` in this process (each would otherwise pay ~3 s of interpreter start);
the ones that depend on the process itself (a kernel write failure) run ``python -m repro.cli``.
Hub failures (unreachable, missing repository or revision, 401/403, 5xx) are covered the same way
in tests/test_hub.py.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gin
import pytest
import torch

from conftest import REPO
from support.cli_errors import Outcome, assert_one_line_error, run_main, snapshot

EXPERIMENT = ["--gin", "gin/experiments/digits.gin"]
SMOKE = ["--gin", "gin/profiles/smoke.gin"]
KDCI_SMALL = ["KDCI.dictionary_samples = 128", "KDCI.num_prototypes = 4", "KDCI.pca_dim = 8",
              "distill.substitution_sample_size = 32"]


def _method(name: str, kdci: bool = False) -> list[str]:
    return [*EXPERIMENT, "--gin", f"gin/methods/{name}.gin", *(["--gin", "gin/kdci.gin"] if kdci else []), *SMOKE]


def _binds(*bindings: str) -> list[str]:
    return [arg for binding in bindings for arg in ("--bind", binding)]


@pytest.fixture(scope="module")
def student_dir(teacher_dir: Path, tmp_path_factory) -> Path:
    """A small dafl+KDCI student artefact (weights + confounder dictionary)."""
    from repro import config
    from repro.pipeline import stages

    root = tmp_path_factory.mktemp("student")
    config.parse([REPO / "gin/experiments/digits.gin", REPO / "gin/methods/dafl.gin", REPO / "gin/kdci.gin",
                  REPO / "gin/profiles/smoke.gin"], KDCI_SMALL)
    out = stages.distill(teacher_dir, root / "student", root / "checkpoints", track=False)
    gin.clear_config()
    return out


class Workspace:
    """A tmp folder holding a previous artefact (``out``) and a previous metrics file; ``unchanged()``
    checks that every file that was there is still there, byte for byte, and nothing was added."""

    def __init__(self, root: Path, previous: Path) -> None:
        self.root, self.out, self.metrics = root, root / "out", root / "metrics.json"
        self.checkpoints = root / "checkpoints"
        shutil.copytree(previous, self.out)
        self.metrics.write_text('{"top1": 12.5}\n')
        self.before = snapshot(root)

    def distill(self, teacher: Path) -> list[str]:
        return ["--teacher", teacher, "--out", self.out, "--checkpoint-dir", self.checkpoints, "--no-track"]

    def evaluate(self, model: Path) -> list[str]:
        return ["--model", model, "--metrics", self.metrics, "--no-track"]

    def unchanged(self, allow: tuple[str, ...] = ()) -> None:
        after = {name: digest for name, digest in snapshot(self.root).items() if not name.startswith(allow)}
        before = {name: digest for name, digest in self.before.items() if not name.startswith(allow)}
        assert after == before


@pytest.fixture
def ws(tmp_path: Path, student_dir: Path) -> Workspace:
    return Workspace(tmp_path / "ws", student_dir)


def _copy(artefact: Path, to: Path) -> Path:
    shutil.copytree(artefact, to)
    return to


def _redigest(artefact: Path, name: str) -> None:
    """Make config.json vouch for ``name`` as it is now (damage the digest cannot catch)."""
    from repro.io import sha256_of

    record = json.loads((artefact / "config.json").read_text())
    record["files"][name] = sha256_of(artefact / name)
    (artefact / "config.json").write_text(json.dumps(record))


# ---------------------------------------------------------------- gin files and bindings

GIN_CASES = {
    "syntax error in --bind": (["student/SGD.lr = (0.1"],
                               "gin syntax error in --bind 'student/SGD.lr = (0.1': EOF in multi-line statement"),
    "unknown configurable": (["Nonexistent.x = 1"], "No configurable matching 'Nonexistent'"),
    "unknown parameter": (["student/SGD.lrr = 1"], "doesn't have a parameter named 'lrr'"),
    "string learning rate": (['student/SGD.lr = "x"'], "student/SGD.lr = 'x' is not a number"),
    "string epochs": (['DISTILL_EPOCHS = "x"'], "Trainer.epochs = 'x' is invalid"),
    "negative learning rate": (["student/SGD.lr = -1.0"], "Invalid learning rate: -1.0"),
    "infinite generator learning rate": (["generator/Adam.lr = 1e400"], "learning rate inf is invalid"),
    "batch size 0": (["student/Trainer.batch_size = 0"], "Trainer.batch_size = 0 is invalid"),
    "synthesis batch 0": (["GenerativeDFKD.synthesis_batch_size = 0"], "synthesis_batch_size must be positive"),
    # Seeds follow params.yaml's rule (0 to 2**32 - 1): torch wraps -1 silently and fails deep on the others.
    "seed not a number": (["SEED = 'x'"], "SEED = 'x' is not a seed: bind an integer from 0 to 4294967295"),
    "fractional seed": (["SEED = 1.5"], "SEED = 1.5 is not a seed"),
    "seed beyond 64 bits": (["SEED = 1180591620717411303424"], "SEED = 1180591620717411303424 is not a seed"),
    "negative seed": (["SEED = -1"], "SEED = -1 is not a seed"),
    "boolean seed": (["SEED = True"], "SEED = True is not a seed"),
    "negative seed bound to the stage": (["distill.seed = -1"], "distill.seed = -1 is not a seed"),
    "negative seed through another macro": (["MY_SEED = -3", "distill.seed = %MY_SEED"], "MY_SEED = -3 is not a seed"),
    "negative data split seed": (["Digits.split_seed = -2"], "Digits.split_seed = -2 is not a seed"),
    "unknown device": (["student/Trainer.device = 'tpu'"], "device 'tpu' is not one repro runs on"),
    "device as a number": (["student/Trainer.device = 3"], "device 3 is not one repro runs on"),
    "absent CUDA device": (["student/Trainer.device = 'cuda:99'"], "device 'cuda:99' requested but"),
    "negative substitution sample": (["distill.substitution_sample_size = -5"],
                                     "distill.substitution_sample_size = -5 is invalid: bind an integer >= 0"),
    "negative grid interval": (["distill.substitution_grid_every = -1"], "distill.substitution_grid_every = -1 is invalid"),
    "boolean epochs": (["student/Trainer.epochs = True"], "Trainer.epochs = True is invalid"),
    "fractional epochs": (["DISTILL_EPOCHS = 1.5"], "Trainer.epochs = 1.5 is invalid"),
    "negative steps": (["STUDENT_STEPS = -10"], "Trainer.steps_per_epoch = -10 is invalid"),
    "zero monitor interval": (["student/Trainer.monitor_every = 0"], "Trainer.monitor_every = 0 is invalid"),
}


@pytest.mark.parametrize("case", list(GIN_CASES))
def test_bad_gin_binding(case: str, ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    bindings, fragment = GIN_CASES[case]
    outcome = run_main(["distill", *_method("dafl"), *_binds(*bindings), *ws.distill(teacher_dir)], capfd, monkeypatch)
    assert_one_line_error(outcome, fragment)
    ws.unchanged()


KDCI_CASES = {
    "N = 0": ("KDCI.num_prototypes = 0", "KDCI.num_prototypes = 0: must be > 0"),
    "N < 0": ("KDCI.num_prototypes = -3", "KDCI.num_prototypes = -3: must be > 0"),
    "PCA dim 0": ("KDCI.pca_dim = 0", "KDCI.pca_dim = 0: must be > 0"),
    "PCA dim above the feature size": ("KDCI.pca_dim = 999", "KDCI.pca_dim = 999 exceeds the teacher's 160-d"),
}


@pytest.mark.parametrize("case", list(KDCI_CASES))
def test_bad_kdci_setting(case: str, ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    binding, fragment = KDCI_CASES[case]
    outcome = run_main(["distill", *_method("dafl", kdci=True), *_binds(binding), *ws.distill(teacher_dir)],
                       capfd, monkeypatch)
    assert_one_line_error(outcome, fragment)
    ws.unchanged()


def test_gin_syntax_error_in_a_file(ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    broken = ws.root.parent / "broken.gin"
    broken.write_text("student/Trainer.epochs = = 3\n")
    outcome = run_main(["distill", *_method("dafl"), "--gin", broken, *ws.distill(teacher_dir)], capfd, monkeypatch)
    assert_one_line_error(outcome, "gin syntax error", "broken.gin, line 1")
    ws.unchanged()


def test_missing_gin_file(ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    outcome = run_main(["distill", *EXPERIMENT, "--gin", "gin/methods/dafll.gin", *SMOKE, *ws.distill(teacher_dir)],
                       capfd, monkeypatch)
    assert_one_line_error(outcome, "gin/methods/dafll.gin does not exist", "dafl")
    ws.unchanged()


def test_string_learning_rate_through_the_entry_point(teacher_dir: Path, tmp_path: Path) -> None:
    """The same check in a real process: what the user sees on the terminal."""
    from conftest import run_cli

    result = run_cli("distill", *_method("dafl"), "--bind", 'student/SGD.lr="x"', "--teacher", str(teacher_dir),
                     "--out", str(tmp_path / "s"), "--checkpoint-dir", str(tmp_path / "c"), "--no-track")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines == ["error: the student optimiser rejected its settings (student/SGD.lr = 'x' is not a number): "
                     "bind numbers, e.g. student/SGD.lr = 0.1"]
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


def test_deepinversion_synthesis_batch_0(ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    outcome = run_main(["distill", *_method("deepinv"), *_binds("DeepInversion.synthesis_batch_size = 0"),
                        *ws.distill(teacher_dir)], capfd, monkeypatch)
    assert_one_line_error(outcome, "DeepInversion.synthesis_batch_size")


def test_evaluation_batch_0(ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    outcome = run_main(["evaluate", *EXPERIMENT, *_binds("evaluate.batch_size = 0"), *ws.evaluate(teacher_dir)],
                       capfd, monkeypatch)
    assert_one_line_error(outcome, "evaluate.batch_size = 0")


# ---------------------------------------------------------------- gin files that cannot be used

def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _include_loop(folder: Path) -> tuple[Path, str]:
    first, second = folder / "a.gin", folder / "b.gin"
    _write(first, f"include '{second}'\n")
    _write(second, f"SEED = 1\ninclude '{first}'\n")
    return first, f"gin files include each other in a loop ({first} -> {second} -> {first}): remove one of these"


def _includes_itself(folder: Path) -> tuple[Path, str]:
    path = _write(folder / "self.gin", f"include '{folder / 'self.gin'}'\n")
    return path, f"include each other in a loop ({path} -> {path})"


def _missing_include(folder: Path) -> tuple[Path, str]:
    path = _write(folder / "a.gin", f"SEED = 1\ninclude '{folder / 'gone.gin'}'\n")
    return path, f"gin file {folder / 'gone.gin'} (included by {path}, line 2) does not exist: fix the include line"


def _a_folder(folder: Path) -> tuple[Path, str]:
    path = folder / "profile.gin"
    path.mkdir()
    _write(path / "smoke.gin", "SEED = 1\n")
    return path, f"gin file {path} is a folder, not a file: pass a .gin file, e.g. {path}/smoke.gin"


def _not_utf8(folder: Path) -> tuple[Path, str]:
    path = _write(folder / "latin1.gin", "SEED = 1\n# caf\u00e9\n".encode("latin-1"))
    return path, f"gin file {path} is not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8"


def _includes_a_non_utf8_file(folder: Path) -> tuple[Path, str]:
    included, _ = _not_utf8(folder)
    path = _write(folder / "a.gin", f"include '{included}'\n")
    return path, f"gin file {included} (included by {path}, line 1) is not UTF-8 text"


GIN_FILE_CASES = {"include loop": _include_loop, "file including itself": _includes_itself,
                  "missing include": _missing_include, "folder given as a file": _a_folder,
                  "non-UTF-8 bytes": _not_utf8, "included file not UTF-8": _includes_a_non_utf8_file}


@pytest.mark.parametrize("case", list(GIN_FILE_CASES))
def test_unusable_gin_file(case: str, ws: Workspace, teacher_dir: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    path, fragment = GIN_FILE_CASES[case](tmp_path)
    outcome = run_main(["distill", *_method("dafl"), "--gin", path, *ws.distill(teacher_dir)], capfd, monkeypatch)
    assert_one_line_error(outcome, fragment)
    ws.unchanged()


def _without_root_file_access() -> None:
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so even root
    meets file permissions after exec (tests here run as root)."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def test_unreadable_gin_file_in_a_real_process(ws: Workspace, teacher_dir: Path, tmp_path: Path) -> None:
    """Permissions 000 in a real process (no monkeypatching): the error says the file cannot be read
    and why; gin alone would suggest checking the spelling."""
    import os

    locked = _write(tmp_path / "locked.gin", "SEED = 1\n")
    locked.chmod(0)
    probe = subprocess.run(["cat", str(locked)], capture_output=True, check=False, preexec_fn=_without_root_file_access)
    if probe.returncode == 0:
        pytest.skip("this process cannot give up root's file access (no CAP_SETPCAP)")
    env = {k: v for k, v in os.environ.items() if k != "REPRO_DEBUG"}
    result = subprocess.run([sys.executable, "-m", "repro.cli", "distill", *_method("dafl"), "--gin", str(locked),
                             *[str(a) for a in ws.distill(teacher_dir)]], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300, check=False, preexec_fn=_without_root_file_access)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines == [(f"error: gin file {locked} cannot be read (Permission denied): make it readable "
                      f"(e.g. chmod u+r {locked}) or pass another file")]
    ws.unchanged()


# ---------------------------------------------------------------- a profile meant for another dataset

PAPER = ["--gin", "gin/profiles/paper-cifar10.gin"]
PROFILE_CASES = {  # every verb that parses an experiment refuses paper-cifar10 budgets on digits
    "train-teacher": lambda ws, teacher: ["train-teacher", *EXPERIMENT, *PAPER, "--out", ws.out, "--metrics", ws.metrics,
                                          "--checkpoint-dir", ws.checkpoints, "--no-track"],
    "distill": lambda ws, teacher: ["distill", *EXPERIMENT, "--gin", "gin/methods/dafl.gin", *PAPER, *ws.distill(teacher)],
    "evaluate": lambda ws, teacher: ["evaluate", *EXPERIMENT, *PAPER, *ws.evaluate(teacher)],
    "bench": lambda ws, teacher: ["bench", *EXPERIMENT, "--gin", "gin/methods/dafl.gin", "--gin", "gin/kdci.gin", *PAPER,
                                  "--gin", "gin/bench.gin"],
    "bench --profile --experiment": lambda ws, teacher: ["bench", "--profile", "paper-cifar10", "--experiment", "digits",
                                                         "--methods", "dafl"],
}


@pytest.mark.parametrize("case", list(PROFILE_CASES))
def test_paper_profile_on_digits(case: str, ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    outcome = run_main(PROFILE_CASES[case](ws, teacher_dir), capfd, monkeypatch)
    assert_one_line_error(outcome, "profile 'paper-cifar10' is for cifar10 experiments but", "is 'digits'")
    ws.unchanged()


def test_evaluation_on_an_unknown_device(ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    outcome = run_main(["evaluate", *EXPERIMENT, *_binds("evaluate.device = 'gpu'"), *ws.evaluate(teacher_dir)],
                       capfd, monkeypatch)
    assert_one_line_error(outcome, "device 'gpu' is not one repro runs on", "evaluate.device", "'cuda:<index>'")
    ws.unchanged()


# ---------------------------------------------------------------- numbers on the command line

def _run_command_line(argv: list[str], capfd, monkeypatch) -> Outcome:
    """``run_main``, also when argparse refuses the command line: it exits instead of returning."""
    try:
        return run_main(argv, capfd, monkeypatch)
    except SystemExit as exited:
        out, err = capfd.readouterr()
        return Outcome(exited.code, out, [line for line in err.splitlines() if line.strip()])


IMPORT = ["import-teacher", "pretrained/none.pth", "--arch", "wrn40_2", "--dataset", "cifar10"]
CLI_NUMBER_CASES = {
    "negative --seed": (["distill", "--params", "{params}", "--method", "dafl", "--seed", "-1"],
                        "argument --seed: '-1' is not a seed: give an integer from 0 to 4294967295"),
    "fractional --seed": (["distill", "--params", "{params}", "--method", "dafl", "--seed", "1.5"], "'1.5' is not a seed"),
    "negative --teacher-seed (distill)": (["distill", "--params", "{params}", "--method", "dafl", "--teacher-seed", "-2"],
                                          "argument --teacher-seed: '-2' is not a seed"),
    "negative --teacher-seed (train-teacher)": (["train-teacher", "--params", "{params}", "--teacher-seed", "-1"],
                                                "argument --teacher-seed: '-1' is not a seed"),
    "huge --teacher-seed": (["train-teacher", "--params", "{params}", "--teacher-seed", str(2**70)], "is not a seed"),
    "--teacher-seed not in params.yaml": (["train-teacher", "--params", "{params}", "--teacher-seed", "7"],
                                          "--teacher-seed 7 is not one of params.yaml's teacher_seeds [0, 1]"),
    "bench --steps 0": (["bench", "--profile", "paper-cifar10", "--steps", "0"], "argument --steps: '0' is not a positive"),
    "bench --synthesis-steps x": (["bench", "--profile", "paper-cifar10", "--synthesis-steps", "x"],
                                  "argument --synthesis-steps: 'x' is not a positive integer"),
    "--tolerance nan": ([*IMPORT, "--tolerance", "nan"], "argument --tolerance: 'nan' is not a number of top-1 points"),
    "--expected-top1 inf": ([*IMPORT, "--expected-top1", "inf"], "argument --expected-top1: 'inf' is not a number"),
    "unknown flag": (["distill", "--sed", "1"], "unrecognized arguments: --sed 1", "`repro --help` lists"),
}


@pytest.mark.parametrize("case", list(CLI_NUMBER_CASES))
def test_bad_number_on_the_command_line(case: str, tmp_path: Path, capfd, monkeypatch) -> None:
    argv, *fragments = CLI_NUMBER_CASES[case]
    params = _write(tmp_path / "params.yaml", PARAMS + "teacher_seeds: [0, 1]\n")
    watched = [REPO / "models", REPO / "metrics", REPO / "checkpoints"]
    before = [snapshot(folder) if folder.is_dir() else {} for folder in watched]
    outcome = _run_command_line([arg.format(params=params) for arg in argv], capfd, monkeypatch)
    assert_one_line_error(outcome, *fragments)
    assert [snapshot(folder) if folder.is_dir() else {} for folder in watched] == before


# ---------------------------------------------------------------- params.yaml

PARAMS = "experiment: digits\nprofile: smoke\nseeds: [0]\nmethods: [dafl]\n"
PARAMS_CASES = {
    "unknown method": (PARAMS.replace("[dafl]", "[dafl, cmii]"), "methods 'cmii' has no gin/methods/cmii.gin; available: cmi"),
    "unknown profile": (PARAMS.replace("smoke", "fastest"), "profile 'fastest' has no gin/profiles/fastest.gin"),
    "unknown experiment": (PARAMS.replace("digits", "mnist"), "experiment 'mnist' has no gin/experiments/mnist.gin"),
    "seed not an integer": (PARAMS.replace("[0]", "[0, a]"), "seeds must be a non-empty list of integers >= 0"),
    "seeds not a list": (PARAMS.replace("[0]", "3"), "seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2], not 3"),
    "no seeds": (PARAMS.replace("[0]", "[]"), "seeds must be a non-empty list"),
    "boolean seed": (PARAMS.replace("[0]", "[yes]"), "not [True]"),
    "negative seed": (PARAMS.replace("[0]", "[-1]"), "integers >= 0"),
    "repeated seed": (PARAMS.replace("[0]", "[0, 0]"), "lists a seed twice"),
    "repeated method": (PARAMS.replace("[dafl]", "[dafl, dafl]"), "lists a method twice"),
    "repeated teacher seed": (PARAMS + "teacher_seeds: [1, 1]\n", "teacher_seeds must be a non-empty list of distinct"),
    "old teacher_seed key": (PARAMS + "teacher_seed: 0\n", "teacher_seed is now a list, teacher_seeds"),
    "missing key": (PARAMS.replace("seeds: [0]\n", ""), "has no 'seeds'"),
    "yaml syntax error": (PARAMS + "methods: [dafl\n", "cannot read"),
    "not a mapping": ("- dafl\n", "is not a mapping of parameters"),
}


@pytest.mark.parametrize("case", list(PARAMS_CASES))
def test_bad_params_yaml(case: str, tmp_path: Path, capfd, monkeypatch) -> None:
    text, fragment = PARAMS_CASES[case]
    params = tmp_path / "params.yaml"
    params.write_text(text)
    before = snapshot(REPO / "metrics") if (REPO / "metrics").is_dir() else {}
    outcome = run_main(["evaluate", *EXPERIMENT, "--params", params, "--no-track"], capfd, monkeypatch)
    assert_one_line_error(outcome, str(params), fragment)
    assert (snapshot(REPO / "metrics") if (REPO / "metrics").is_dir() else {}) == before


# ---------------------------------------------------------------- artefacts

def test_missing_teacher_folder(ws: Workspace, tmp_path: Path, capfd, monkeypatch) -> None:
    outcome = run_main(["distill", *_method("dafl"), *ws.distill(tmp_path / "no-teacher")], capfd, monkeypatch)
    assert_one_line_error(outcome, "no model artefact at", "no-teacher")
    ws.unchanged()


def _flip_a_byte(artefact: Path) -> str:
    data = bytearray((artefact / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (artefact / "model.safetensors").write_bytes(bytes(data))
    return "does not match the sha256 in its config.json"


def _truncate_weights(artefact: Path) -> str:
    weights = artefact / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _redigest(artefact, "model.safetensors")
    return "model.safetensors is not a readable safetensors file"


def _say_wrn(artefact: Path) -> str:
    record = json.loads((artefact / "config.json").read_text())
    record["architecture"] = {"name": "wrn16_1", "kwargs": {}}
    (artefact / "config.json").write_text(json.dumps(record))
    return "do not fit architecture 'wrn16_1' ("


def _unknown_network(artefact: Path) -> str:
    record = json.loads((artefact / "config.json").read_text())
    record["architecture"]["name"] = "vit_huge"
    (artefact / "config.json").write_text(json.dumps(record))
    return "describes a network this version of repro cannot build (unknown network 'vit_huge'"


def _config_not_json(artefact: Path) -> str:
    (artefact / "config.json").write_text('{"format_version": 1, "data": ')
    return "config.json is not valid JSON"


def _config_without_data(artefact: Path) -> str:
    record = json.loads((artefact / "config.json").read_text())
    del record["data"]
    (artefact / "config.json").write_text(json.dumps(record))
    return "lacks a valid architecture, data or files record"


def _weights_missing(artefact: Path) -> str:
    (artefact / "model.safetensors").unlink()
    return "model.safetensors is missing"


TEACHER_DAMAGE = {"corrupt weights": _flip_a_byte, "truncated weights, digest updated": _truncate_weights,
                  "config says wrn, weights are a cnn": _say_wrn, "unknown network": _unknown_network,
                  "config.json not JSON": _config_not_json, "config.json without data": _config_without_data,
                  "weights missing": _weights_missing}


@pytest.mark.parametrize("case", list(TEACHER_DAMAGE))
def test_damaged_teacher(case: str, ws: Workspace, teacher_dir: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    teacher = _copy(teacher_dir, tmp_path / "teacher")
    fragment = TEACHER_DAMAGE[case](teacher)
    outcome = run_main(["distill", *_method("dafl"), *ws.distill(teacher)], capfd, monkeypatch)
    assert_one_line_error(outcome, fragment)
    ws.unchanged()


def test_a_student_given_as_the_teacher_is_refused(ws: Workspace, student_dir: Path, capfd, monkeypatch) -> None:
    """A student artefact loads like a teacher; distilling from it exited 0 with a student of a student."""
    before = snapshot(student_dir)
    outcome = run_main(["distill", *_method("dafl"), *ws.distill(student_dir)], capfd, monkeypatch)
    assert_one_line_error(outcome, f"--teacher {student_dir} is not a teacher artefact (config.json role 'student')",
                          "pass a teacher artefact, e.g. models/teachers/seed0")
    assert "epoch 1" not in outcome.stdout
    ws.unchanged()
    assert snapshot(student_dir) == before


def _dictionary_missing(artefact: Path) -> str:
    (artefact / "confounder_dictionary.safetensors").unlink()
    return "confounder_dictionary.safetensors is missing"


def _rewrite_dictionary(artefact: Path, **changes: torch.Tensor) -> None:
    from repro.kdci.dictionary import ConfounderDictionary

    path = artefact / "confounder_dictionary.safetensors"
    dictionary = ConfounderDictionary.load(path)
    tensors = {**dictionary.tensors(), **changes}
    ConfounderDictionary.from_tensors(tensors, {"feature_source": dictionary.feature_source,
                                                "prior": dictionary.prior_kind}).save(path)
    _redigest(artefact, "confounder_dictionary.safetensors")


def _dictionary_wrong_count(artefact: Path) -> str:
    _rewrite_dictionary(artefact, prototypes=torch.zeros(3, 8), prior=torch.full((3,), 1 / 3),
                        cluster_sizes=torch.ones(3))
    return "holds 3 prototypes of dimension 8 but the model expects 4 x 8"


def _dictionary_wrong_pca_dim(artefact: Path) -> str:
    _rewrite_dictionary(artefact, prototypes=torch.zeros(4, 6), pca_basis=torch.zeros(160, 6))
    return "holds 4 prototypes of dimension 6 but the model expects 4 x 8"


def _dictionary_truncated(artefact: Path) -> str:
    path = artefact / "confounder_dictionary.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    _redigest(artefact, "confounder_dictionary.safetensors")
    return "confounder_dictionary.safetensors is not a readable safetensors file"


def _dictionary_foreign(artefact: Path) -> str:
    shutil.copy(artefact / "model.safetensors", artefact / "confounder_dictionary.safetensors")
    _redigest(artefact, "confounder_dictionary.safetensors")
    return "is not a confounder dictionary"


def _dictionary_nan(artefact: Path) -> str:
    _rewrite_dictionary(artefact, prototypes=torch.full((4, 8), float("nan")))
    return "holds non-finite values or a prior that is not a distribution"


DICTIONARY_DAMAGE = {"missing": _dictionary_missing, "wrong N": _dictionary_wrong_count,
                     "wrong PCA dim": _dictionary_wrong_pca_dim, "truncated, digest updated": _dictionary_truncated,
                     "another safetensors file": _dictionary_foreign, "NaN prototypes": _dictionary_nan}


@pytest.mark.parametrize("case", list(DICTIONARY_DAMAGE))
def test_damaged_kdci_student(case: str, ws: Workspace, student_dir: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    student = _copy(student_dir, tmp_path / "student")
    fragment = DICTIONARY_DAMAGE[case](student)
    outcome = run_main(["evaluate", *EXPERIMENT, *ws.evaluate(student)], capfd, monkeypatch)
    assert_one_line_error(outcome, fragment)
    ws.unchanged()


# ---------------------------------------------------------------- datasets

def _image_folder(root: Path, classes: dict[str, list[tuple[int, int] | str]]) -> Path:
    """``root/{train,val}/<class>/`` with PNGs of the given sizes, or files with the given text."""
    from PIL import Image

    for split in ("train", "val"):
        for name, items in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index, item in enumerate(items):
                if isinstance(item, str):
                    (folder / f"{index}.png").write_text(item)
                else:
                    Image.new("RGB", item, color=(index * 40, 80, 160)).save(folder / f"{index}.png")
    return root


def _train_teacher_on(root: Path, ws: Workspace) -> list[str]:
    return ["train-teacher", "--gin", "gin/base.gin", "--gin", "gin/data/tiny_imagenet.gin", "--gin",
            "gin/pairs/digits_cnn.gin", *SMOKE,
            *_binds(f"ImageFolderDataset.root = '{root}'", "ImageFolderDataset.num_classes = 2",
                    "ImageFolderDataset.image_size = 8"),
            "--out", ws.out, "--metrics", ws.metrics, "--checkpoint-dir", ws.checkpoints, "--no-track"]


DATASET_CASES = {
    "missing folder": (None, "dataset folder {root}/train does not exist"),
    "empty class folder": ({"a": [(8, 8)] * 2, "b": []}, "is not a usable image folder (Found no valid file for the classes b"),
    "a non-image file": ({"a": [(8, 8)] * 2, "b": [(8, 8), "not an image"]}, "/b/1.png is not a readable image"),
    "images of the wrong size": ({"a": [(8, 8)] * 2, "b": [(8, 8), (12, 12)]}, "/b/1.png is 12x12 pixels but "
                                                                             "ImageFolderDataset.image_size is 8"),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_bad_image_folder(case: str, ws: Workspace, tmp_path: Path, capfd, monkeypatch) -> None:
    classes, fragment = DATASET_CASES[case]
    root = tmp_path / "images"
    if classes is not None:
        _image_folder(root, classes)
    outcome = run_main(_train_teacher_on(root, ws), capfd, monkeypatch)
    assert_one_line_error(outcome, fragment.format(root=root))
    ws.unchanged()


def test_splits_with_different_classes(ws: Workspace, tmp_path: Path, capfd, monkeypatch) -> None:
    root = _image_folder(tmp_path / "images", {"a": [(8, 8)] * 2, "b": [(8, 8)] * 2})
    (root / "val" / "b").rename(root / "val" / "c")
    outcome = run_main(_train_teacher_on(root, ws), capfd, monkeypatch)
    assert_one_line_error(outcome, "have different class folders (e.g. b, c)")
    ws.unchanged()


def test_digits_model_on_cifar_shaped_data(ws: Workspace, teacher_dir: Path, capfd, monkeypatch) -> None:
    """A 1x8x8 model evaluated with a 3x32x32 dataset is refused before any image is read (the
    CIFAR root does not exist and downloading is off)."""
    outcome = run_main(["evaluate", "--gin", "gin/base.gin", "--gin", "gin/data/cifar10.gin",
                        *_binds("CIFAR10.root = '/nonexistent'", "CIFAR10.download = False"),
                        *ws.evaluate(teacher_dir)], capfd, monkeypatch)
    assert_one_line_error(outcome, "was trained for digits (10 classes, 1x8x8) but the configured dataset is cifar10 (10 classes, 3x32x32)")
    ws.unchanged()


# ---------------------------------------------------------------- training and writing

def test_nan_loss_names_method_and_step_and_keeps_the_last_checkpoint(ws: Workspace, teacher_dir: Path, capfd,
                                                                      monkeypatch) -> None:
    """Epoch 1 trains at lr 0.1; the schedule then multiplies it by 1e30 and the loss becomes NaN."""
    huge = ["student/Trainer.scheduler = @student/StepLR", "student/StepLR.step_size = 1", "student/StepLR.gamma = 1e30"]
    outcome = run_main(["distill", *_method("dafl"), *_binds(*huge), *ws.distill(teacher_dir)], capfd, monkeypatch)
    line = assert_one_line_error(outcome, "dafl: student loss became non-finite at epoch 2, step ",
                                 "the last good checkpoint", "is kept")
    kept = Path(line.split("the last good checkpoint ")[1].split(" is kept")[0])
    assert torch.load(kept, weights_only=True)["epoch"] == 1
    ws.unchanged(allow=("checkpoints/",))


class _FullDisk:
    """A writable file that fails like a full disk once ``budget`` bytes have been written."""

    def __init__(self, handle, budget: int) -> None:
        self.handle, self.budget = handle, budget

    def write(self, data) -> int:
        self.budget -= len(data)
        if self.budget < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def _disk_fills_at(monkeypatch, failing) -> None:
    """Writes of files for which ``failing(path)`` holds hit a full disk after 100 bytes."""
    from repro import io

    real = io._open_for_writing
    monkeypatch.setattr(io, "_open_for_writing",
                        lambda path: _FullDisk(real(path), 100) if failing(Path(path)) else real(path))


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(ws: Workspace, teacher_dir: Path, capfd,
                                                                     monkeypatch) -> None:
    writes: list[Path] = []

    def second_checkpoint(path: Path) -> bool:  # epoch 1's checkpoint is written, epoch 2's hits a full disk
        if path.name == "last.pt.partial":
            writes.append(path)
        return len(writes) > 1 and path == writes[-1]

    _disk_fills_at(monkeypatch, second_checkpoint)
    outcome = run_main(["distill", *_method("dafl"), *ws.distill(teacher_dir)], capfd, monkeypatch)
    checkpoint = Path(str(writes[0])[: -len(".partial")])
    assert_one_line_error(outcome, f"no space left on device while writing {checkpoint}; free space and re-run "
                                   "(the previous checkpoint is kept)")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert [p.name for p in checkpoint.parent.iterdir()] == ["last.pt"]
    ws.unchanged(allow=("checkpoints/",))


def test_full_disk_while_saving_the_artefact_keeps_the_previous_one(ws: Workspace, teacher_dir: Path, capfd,
                                                                    monkeypatch) -> None:
    _disk_fills_at(monkeypatch, lambda path: path.name == "model.safetensors")
    outcome = run_main(["distill", *_method("dafl"), *ws.distill(teacher_dir)], capfd, monkeypatch)
    assert_one_line_error(outcome, f"no space left on device while writing {ws.out}; free space and re-run "
                                   "(the previous artefact is kept)")
    assert not ws.out.with_name(".out.partial").exists()
    # The stage did not finish, so its resume state stays: a re-run after freeing space resumes.
    assert torch.load(next(ws.checkpoints.rglob("last.pt")), weights_only=True)["epoch"] == 2
    ws.unchanged(allow=("checkpoints/",))


def test_a_real_write_failure_in_a_real_process(ws: Workspace, teacher_dir: Path) -> None:
    """No monkeypatching: the kernel refuses writes beyond a 64 KiB file-size limit (RLIMIT_FSIZE, the
    unprivileged way to make a write fail), so the first checkpoint cannot be written."""
    import os
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    env = {**{k: v for k, v in os.environ.items() if k != "REPRO_DEBUG"}, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "repro.cli", "distill", *_method("dafl"),
                             *[str(a) for a in ws.distill(teacher_dir)]],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: could not write ") and "last.pt (File too large)" in lines[0]
    assert lines[0].endswith("(no checkpoint was kept)")
    ws.unchanged(allow=("checkpoints/",))
    assert not list(ws.checkpoints.rglob("*.partial"))


def test_a_bad_image_found_by_a_loader_worker_is_still_one_line(ws: Workspace, tmp_path: Path, capfd,
                                                                monkeypatch) -> None:
    """With worker processes (the paper profiles use 8-16) torch re-raises the worker's error with
    its traceback in the message; the user still sees only the first line of the original."""
    root = _image_folder(tmp_path / "images", {"a": [(8, 8)] * 2, "b": [(8, 8), "not an image"]})
    outcome = run_main([*_train_teacher_on(root, ws), "--bind", "Supervised.num_workers = 1"], capfd, monkeypatch)
    assert_one_line_error(outcome, f"error: {root}/train/b/1.png is not a readable image (UnidentifiedImageError)")
    ws.unchanged()


def test_output_folder_that_is_not_an_artefact_is_never_replaced(teacher_dir: Path, tmp_path: Path, capfd,
                                                                 monkeypatch) -> None:
    """`--out` naming a folder of the user's (here: one holding notes.txt) must not be deleted to make
    room for the student."""
    folder = tmp_path / "my-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    outcome = run_main(["distill", *_method("dafl"), "--teacher", teacher_dir, "--out", folder,
                        "--checkpoint-dir", tmp_path / "checkpoints", "--no-track"], capfd, monkeypatch)
    assert_one_line_error(outcome, f"output {folder} is a folder that is not a repro artefact: refusing to replace it")
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("checkpoints/")} == before
