"""Work on cells of the run set, in this process: train every teacher, distil every cell of a method
(one process per DVC stage: a process start costs seconds, a cell about as much again), distil-then-
evaluate one cell (what ablate and the shift sweep repeat for every variant), and evaluate every
student params.yaml lists (stage evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from repro import config
from repro.errors import UserError
from repro.pipeline import runset, stages


def train_teachers(params: Mapping[str, Any], *, teacher_seed: int | None = None, extra_files: Sequence[Path] = (),
                   bindings: Sequence[str] = (), models: Path = Path("models"), metrics: Path = Path("metrics"),
                   checkpoint_root: Path = Path("checkpoints"), track: bool = True) -> list[dict]:
    """Train the teacher of every ``teacher_seeds`` entry (or only ``teacher_seed``) into
    ``models/teachers/seed<T>``, its metrics into ``metrics/teachers/seed<T>.json``."""
    seeds = [s for s in params["teacher_seeds"] if teacher_seed is None or s == teacher_seed]
    if not seeds:  # else a mistyped --teacher-seed trains nothing and says nothing
        raise UserError(f"--teacher-seed {teacher_seed} is not one of params.yaml's teacher_seeds "
                        f"{params['teacher_seeds']}: pick one of them, or add it to teacher_seeds")
    results = []
    for seed in seeds:
        config.parse([*runset.gin_files(params), *extra_files], [f"SEED = {seed}", *bindings])
        results.append(stages.train_teacher(runset.teacher_dir(seed, models), runset.teacher_metrics(seed, metrics),
                                            checkpoint_root, track))
    return results


def arm_of(kdci: bool, control: bool) -> str:
    """The models/metrics folder of a run's arm."""
    return "control" if control else "kdci" if kdci else "students"


def distill_cells(params: Mapping[str, Any], method: str, *, kdci: bool = False, control: bool = False,
                  teacher_seed: int | None = None, seed: int | None = None, extra_files: Sequence[Path] = (),
                  bindings: Sequence[str] = (), models: Path = Path("models"),
                  checkpoint_root: Path = Path("checkpoints"), track: bool = True) -> list[Path]:
    """Distil ``method``'s students (one arm) for every (teacher seed, seed) of ``params``, or those the
    filters leave; each cell is parsed afresh, so it gets exactly the configuration a single run would."""
    cells = list(runset.runs(params, models, method=method, teacher_seed=teacher_seed, seed=seed))
    if not cells:
        raise UserError(f"no cell of params.yaml matches method {method!r}, teacher seed {teacher_seed}, seed {seed}: "
                        f"methods {params['methods']}, teacher_seeds {params['teacher_seeds']}, seeds {params['seeds']}")
    arm = arm_of(kdci, control)
    for cell in cells:
        config.parse([*runset.gin_files(params, method, kdci, control=control), *extra_files],
                     [f"SEED = {cell.seed}", *bindings])
        stages.distill(cell.teacher_dir, cell.model_dir(arm), checkpoint_root, track)
    return [cell.model_dir(arm) for cell in cells]


def distill_and_evaluate(params: Mapping[str, Any], method: str, seed: int, *, teacher_dir: Path, model_dir: Path,
                         metrics_path: Path, kdci: bool = False, control: bool = False, extras: Sequence[str] = (),
                         bindings: Sequence[str] = (), track: bool = True, gin_root: Path = Path("gin")) -> dict:
    """Distil ``method`` (wrapped in KDCI if ``kdci``, in its control if ``control``) with ``seed`` and
    ``bindings`` into ``model_dir``, then evaluate it on the test split into ``metrics_path``."""
    config.parse(runset.gin_files(params, method, kdci, extras, gin_root, control=control), [f"SEED = {seed}", *bindings])
    stages.distill(teacher_dir, model_dir, Path("checkpoints"), track)
    config.parse(runset.gin_files(params, gin_root=gin_root))
    return stages.evaluate(model_dir, metrics_path, track)


def evaluate_run_set(params: Mapping[str, Any], track: bool = True) -> list[dict]:
    """Evaluate the baseline, KDCI and control students of every cell of ``params`` (gin parsed)."""
    return [stages.evaluate(model_dir, metrics_path, track) for run in runset.runs(params)
            for model_dir, metrics_path in run.arms()]
