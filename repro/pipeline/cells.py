"""Work on cells of the run set, in this process: distil-then-evaluate one cell (what ablate and the
shift sweep repeat for every variant), and evaluate every student params.yaml lists (stage evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from repro import config
from repro.pipeline import runset, stages


def distill_and_evaluate(params: Mapping[str, Any], method: str, seed: int, *, teacher_dir: Path, model_dir: Path,
                         metrics_path: Path, kdci: bool = False, extras: Sequence[str] = (),
                         bindings: Sequence[str] = (), track: bool = True, gin_root: Path = Path("gin")) -> dict:
    """Distil ``method`` (wrapped in KDCI if ``kdci``) with ``seed`` and ``bindings`` into ``model_dir``,
    then evaluate it on the test split into ``metrics_path``; the metrics record."""
    config.parse(runset.gin_files(params, method, kdci, extras, gin_root), [f"SEED = {seed}", *bindings])
    stages.distill(teacher_dir, model_dir, Path("checkpoints"), track)
    config.parse(runset.gin_files(params, gin_root=gin_root))
    return stages.evaluate(model_dir, metrics_path, track)


def evaluate_run_set(params: Mapping[str, Any], track: bool = True) -> list[dict]:
    """Evaluate the baseline, KDCI and control students of every (method, seed) of ``params`` (gin parsed)."""
    return [stages.evaluate(model_dir, metrics_path, track) for run in runset.runs(params)
            for model_dir, metrics_path in run.arms()]
