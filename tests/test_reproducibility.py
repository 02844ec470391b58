"""Reruns of the real CLI agree bit for bit: a stage SIGKILLed and run again ends with the weights of
an uninterrupted run, kills at random moments (a half-written temporary file left behind) never get
a corrupt checkpoint loaded, and two clean runs with one seed give identical weights on the CPU.

One uninterrupted reference run per method is shared by the resume and the determinism tests. Runs
are the smoke profile with three epochs (room to kill between two checkpoints) and small KDCI
settings; each process costs ~3 s of start-up, so the default set is three methods (a generator, a
pool of inverted images with KDCI, a sampling method) and the rest is marked slow.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

SMALL = ["DISTILL_EPOCHS = 3", "KDCI.dictionary_samples = 256", "KDCI.num_prototypes = 4", "KDCI.pca_dim = 8",
         "distill.substitution_sample_size = 64"]
# case -> method gin files; "+kdci" wraps the method in gin/kdci.gin.
FAMILIES = {"dafl": "generator", "deepinv+kdci": "pool of inverted images, with KDCI",
            "dfnd": "sampling from an unlabeled pool"}
SLOW = ["fast", "cmi", "mosaickd", "dfnd+kdci", "deepinv"]


def _gin_args(case: str) -> list[str]:
    method, _, kdci = case.partition("+")
    files = ["gin/experiments/digits.gin", f"gin/methods/{method}.gin", *(["gin/kdci.gin"] if kdci else []),
             "gin/profiles/smoke.gin"]
    return [arg for path in files for arg in ("--gin", path)]


class Run:
    """One ``repro distill`` command line; ``start()`` launches it as a user would."""

    def __init__(self, case: str, teacher: Path, root: Path, seed: int = 0) -> None:
        self.out, self.checkpoints = root / "student", root / "checkpoints"
        binds = [arg for binding in [*SMALL, f"SEED = {seed}"] for arg in ("--bind", binding)]
        self.argv = [sys.executable, "-m", "repro.cli", "distill", *_gin_args(case), *binds, "--teacher", str(teacher),
                     "--out", str(self.out), "--checkpoint-dir", str(self.checkpoints), "--no-track"]
        self.log = root / "log.txt"
        # Where stages.distill keeps resume state for this --out.
        self.checkpoint = self.checkpoints / Path(*[p for p in self.out.parts if p not in ("/", "..")]) / "last.pt"

    def start(self) -> subprocess.Popen:
        # One thread: bit-identity needs the same thread count in every run anyway (docs/determinism.md),
        # and two OpenMP threads on two shared cores spin-wait: a run costs 3x the CPU time.
        env = {**{k: v for k, v in os.environ.items() if k != "REPRO_DEBUG"}, "OMP_NUM_THREADS": "1"}
        with open(self.log, "a") as log:
            return subprocess.Popen(self.argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def complete(self) -> None:
        process = self.start()
        assert process.wait(timeout=300) == 0, self.log.read_text()[-3000:]

    def kill_when(self, ready, timeout: float = 120.0) -> bool:
        """Start, SIGKILL as soon as ``ready()`` holds; False if the run finished first."""
        process = self.start()
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        code = process.wait(timeout=60)
        assert code in (0, -signal.SIGKILL), self.log.read_text()[-3000:]
        return code == -signal.SIGKILL


def _fingerprint(out: Path) -> dict:
    """sha256 of every file of the artefact, and test top-1 of the student it holds."""
    from repro import artefact
    from repro.data.datasets import Digits
    from repro.train.evaluate import accuracy

    files = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(out.iterdir())}
    model, _ = artefact.load_artefact(out)
    top1 = accuracy(model, Digits().split("test"), 10, torch.device("cpu"))["top1"]
    return {"files": files, "top1": top1}


class References:
    """``references(case, seed)``: the fingerprint of one uninterrupted run, computed once;
    ``seconds[case, seed]``: how long that run took."""

    def __init__(self, teacher: Path, tmp_path_factory) -> None:
        self.teacher, self.factory = teacher, tmp_path_factory
        self.done: dict[tuple[str, int], dict] = {}
        self.seconds: dict[tuple[str, int], float] = {}

    def __call__(self, case: str, seed: int = 0) -> dict:
        if (case, seed) not in self.done:
            run = Run(case, self.teacher, self.factory.mktemp(f"reference-{case}-{seed}"), seed)
            began = time.monotonic()
            run.complete()
            self.seconds[case, seed] = time.monotonic() - began
            assert not run.checkpoint.parent.exists()  # resume state is removed when the stage completes
            self.done[case, seed] = _fingerprint(run.out)
        return self.done[case, seed]


@pytest.fixture(scope="module")
def reference(teacher_dir: Path, tmp_path_factory) -> References:
    return References(teacher_dir, tmp_path_factory)


def _resume_after_sigkill(case: str, teacher_dir: Path, tmp_path: Path, reference) -> None:
    expected = reference(case)
    run = Run(case, teacher_dir, tmp_path)
    assert run.kill_when(run.checkpoint.exists), f"{case} finished before it could be killed"
    assert not run.out.exists(), "a killed run must not leave an artefact"
    state = torch.load(run.checkpoint, weights_only=True)  # atomic: whole, never half-written
    assert 1 <= state["epoch"] < 3
    run.complete()
    assert f"resuming from {run.checkpoint} after epoch {state['epoch']}/3" in run.log.read_text()
    assert _fingerprint(run.out) == expected
    assert not run.checkpoint.parent.exists()


@pytest.mark.parametrize("case", list(FAMILIES))
def test_sigkill_then_rerun_matches_an_uninterrupted_run(case: str, teacher_dir: Path, tmp_path: Path,
                                                         reference) -> None:
    _resume_after_sigkill(case, teacher_dir, tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW)
def test_sigkill_then_rerun_matches_an_uninterrupted_run_more_methods(case: str, teacher_dir: Path, tmp_path: Path,
                                                                      reference) -> None:
    _resume_after_sigkill(case, teacher_dir, tmp_path, reference)


def test_kills_at_random_moments_never_load_a_corrupt_checkpoint(teacher_dir: Path, tmp_path: Path,
                                                                 reference) -> None:
    """Two kills at random moments (start-up, training, checkpoint or artefact writes), each followed by
    debris a kill inside a write would leave: a truncated ``last.pt.partial`` and a half-filled
    ``.student.partial/``. Every checkpoint on disk stays loadable, and the run that is finally allowed
    to finish gives the reference weights."""
    from repro.artefact import load_artefact

    case = "deepinv+kdci"
    expected = reference(case)
    run = Run(case, teacher_dir, tmp_path)
    chooser, duration = random.Random(7), reference.seconds[case, 0]
    resumed_epochs = []
    for _ in range(2):
        moment = time.monotonic() + chooser.uniform(0.5, 1.0) * duration
        if not run.kill_when(lambda: time.monotonic() >= moment):
            break  # finished before the kill: nothing left to interrupt
        if run.out.exists():  # killed after the artefact was renamed into place: it must be whole
            load_artefact(run.out)
        if run.checkpoint.exists():
            state = torch.load(run.checkpoint, weights_only=True)
            assert 1 <= state["epoch"] <= 3
            whole = run.checkpoint.read_bytes()
            run.checkpoint.with_name("last.pt.partial").write_bytes(whole[: len(whole) // 2])
            resumed_epochs.append(state["epoch"])
        debris = run.out.with_name(f".{run.out.name}.partial")
        debris.mkdir(parents=True, exist_ok=True)
        (debris / "model.safetensors").write_bytes(b"\0" * 10)
    run.complete()
    log = run.log.read_text()
    assert "is corrupt" not in log and "Traceback" not in log
    for epoch in resumed_epochs[-1:]:
        assert f"after epoch {epoch}/3" in log
    assert _fingerprint(run.out) == expected
    assert not run.out.with_name(f".{run.out.name}.partial").exists()


@pytest.mark.parametrize("case", list(FAMILIES))
def test_same_seed_gives_bit_identical_weights(case: str, teacher_dir: Path, tmp_path: Path, reference) -> None:
    run = Run(case, teacher_dir, tmp_path)
    run.complete()
    assert _fingerprint(run.out) == reference(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW)
def test_same_seed_gives_bit_identical_weights_more_methods(case: str, teacher_dir: Path, tmp_path: Path,
                                                            reference) -> None:
    run = Run(case, teacher_dir, tmp_path)
    run.complete()
    assert _fingerprint(run.out) == reference(case)


def test_another_seed_gives_other_weights(reference) -> None:
    seed0, seed1 = reference("dfnd", 0), reference("dfnd", 1)
    assert seed0["files"]["model.safetensors"] != seed1["files"]["model.safetensors"]
