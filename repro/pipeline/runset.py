"""The set of runs ``params.yaml`` asks for, and the one place a run's gin files are composed.

Which experiment, profile, methods and seeds; where each run's artefact and metrics live; which gin
files, in which order, configure it (:func:`gin_files`: experiment -> method -> kdci -> profile ->
extras). The DVC stages, ablate, the shift sweep and bench all compose their runs here. Stages that
work on "every student" (evaluate, diagnose, ablate, shift-sweep) read the set here, so a seed dropped
from params.yaml is not picked up from a stale folder, and a misspelt method or profile fails before
any work with a one-line error."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from repro.pipeline import check

ARMS = ("students", "kdci", "control")  # folders of the three arms under models/ and metrics/


@dataclasses.dataclass(frozen=True)
class Run:
    """One (method, teacher seed, student seed) cell: its baseline, KDCI and control artefacts and metrics.

    The three arms of a cell share the teacher and the student seed, so their differences are paired."""

    method: str
    teacher_seed: int
    seed: int
    models: Path = Path("models")
    metrics: Path = Path("metrics")

    @property
    def name(self) -> str:
        """``<method>-teacher<T>-seed<S>``: the file stem of the cell's metrics."""
        return f"{self.method}-teacher{self.teacher_seed}-seed{self.seed}"

    @property
    def teacher_dir(self) -> Path:
        return teacher_dir(self.teacher_seed, self.models)

    def model_dir(self, arm: str) -> Path:
        return self.models / arm / self.method / f"teacher{self.teacher_seed}-seed{self.seed}"

    def metrics_path(self, arm: str) -> Path:
        return self.metrics / arm / f"{self.name}.json"

    baseline_dir = property(lambda self: self.model_dir("students"))
    kdci_dir = property(lambda self: self.model_dir("kdci"))
    control_dir = property(lambda self: self.model_dir("control"))
    baseline_metrics = property(lambda self: self.metrics_path("students"))
    kdci_metrics = property(lambda self: self.metrics_path("kdci"))
    control_metrics = property(lambda self: self.metrics_path("control"))

    def arms(self) -> list[tuple[Path, Path]]:
        """``(artefact, metrics file)`` of each arm: baseline, KDCI, control."""
        return [(self.model_dir(arm), self.metrics_path(arm)) for arm in ARMS]


def teacher_dir(seed: int, models: Path = Path("models")) -> Path:
    """The artefact of the teacher trained with ``seed``."""
    return models / "teachers" / f"seed{seed}"


def teacher_metrics(seed: int, metrics: Path = Path("metrics")) -> Path:
    return metrics / "teachers" / f"seed{seed}.json"


def read_params(path: Path, gin_root: Path = Path("gin")) -> dict[str, Any]:
    """Load and validate params.yaml (all of it: :func:`repro.pipeline.check.read_params`, the same
    check DVC's first stage runs): every named experiment, profile and method must have its gin file."""
    return check.read_params(path, gin_root)


def run_for(method: str, teacher_seed: int, seed: int, models: Path = Path("models"),
            metrics: Path = Path("metrics")) -> Run:
    """Where the pipeline keeps the artefacts and metrics of one (method, teacher seed, seed) cell."""
    return Run(method, int(teacher_seed), int(seed), models, metrics)


def runs(params: Mapping[str, Any], models: Path = Path("models"), metrics: Path = Path("metrics"), *,
         method: str | None = None, teacher_seed: int | None = None, seed: int | None = None) -> Iterator[Run]:
    """Every cell ``params`` asks for (method-major, then teacher, then seed), or those matching the filters."""
    for name in params["methods"]:
        for teacher in params["teacher_seeds"]:
            for student_seed in params["seeds"]:
                if ((method is None or name == method) and (teacher_seed is None or teacher == teacher_seed)
                        and (seed is None or student_seed == seed)):
                    yield run_for(name, teacher, student_seed, models, metrics)


def gin_files(params: Mapping[str, Any], method: str | None = None, kdci: bool = False,
              extras: Sequence[str] = (), gin_root: Path = Path("gin"), control: bool = False) -> list[Path]:
    """The gin files of one run, in the order that gives each its say: the experiment (dataset and
    pair), the method, KDCI around it (``control``: KDCI's capacity-matched control, which includes
    ``kdci.gin``), the profile's run sizes (which override both), then ``extras`` (e.g. ``"ablations"``
    for ``gin/ablations.gin``). Without a method: what the teacher and the evaluation of any student need."""
    files = [gin_root / "experiments" / f"{params['experiment']}.gin"]
    if method is not None:
        files.append(gin_root / "methods" / f"{method}.gin")
    if control:
        files.append(gin_root / "kdci_control.gin")
    elif kdci:
        files.append(gin_root / "kdci.gin")
    files.append(gin_root / "profiles" / f"{params['profile']}.gin")
    return files + [gin_root / f"{extra}.gin" for extra in extras]
