"""``repro bench``: per method, what a synthesis round and a student step cost, and what KDCI adds.

Baseline and KDCI-wrapped students (same initial weights) take student steps in interleaved order
(A B, B A, ...), so drifts in machine speed hit both; the overhead is the ratio of the medians.
A synthesis round (the method's ``synthesize()``: generator steps, an inversion batch, a pool
selection) is timed on the baseline; KDCI does not change it. The dictionary build is timed
separately for 10k and 50k feature vectors. ``repro bench --params params.yaml`` runs every method
of params.yaml in one process and prints one table.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import gin
import torch

from repro.engine import resolve_device, seed_everything
from repro.kdci.dictionary import build_dictionary
from repro.methods.base import DFKDMethod


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(method: DFKDMethod, optimizer: torch.optim.Optimizer, batch_size: int, device: torch.device) -> float:
    _sync(device)
    began = time.perf_counter()
    terms = method.student_loss(method.sample(batch_size))
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - began


@gin.configurable
def bench_kdci_overhead(baseline: DFKDMethod = gin.REQUIRED, wrapped: DFKDMethod = gin.REQUIRED, *, teacher_network=gin.REQUIRED,
                        student_network=gin.REQUIRED, dataset=gin.REQUIRED, steps: int = 100, warmup_steps: int = 10,
                        batch_size: int = 128, synthesis_rounds: int = 3,
                        dictionary_sizes: tuple[int, ...] = (10_000, 50_000),
                        dictionary_feature_dim: int = 512, device: str = "auto") -> dict[str, Any]:
    """Median seconds per student step for ``baseline`` and ``wrapped`` (KDCI around the same baseline)."""
    target = resolve_device(device)
    spec = dataset.spec  # shapes only: no split is opened
    seed_everything(0)
    teacher = teacher_network.build(num_classes=spec.num_classes, in_channels=spec.channels)
    student = student_network.build(num_classes=spec.num_classes, in_channels=spec.channels)
    models, optimizers = [], []
    for method, own_student in ((baseline, student), (wrapped, copy.deepcopy(student))):
        model = method.setup(copy.deepcopy(teacher), own_student.to(target), spec, target).to(target).train()
        method.on_epoch_start(0)  # gin/bench.gin sets KDCI.warmup_epochs = 0: the dictionary is built here
        models.append(model)
        optimizers.append(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    synthesis: list[float] = []
    for index in range(synthesis_rounds + 1):  # the first round (allocations, lazy setup) is not counted
        _sync(target)
        began = time.perf_counter()
        baseline.synthesize()
        _sync(target)
        if index:
            synthesis.append(time.perf_counter() - began)
    times: list[list[float]] = [[], []]
    for index in range(warmup_steps + steps):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            elapsed = _step((baseline, wrapped)[which], optimizers[which], batch_size, target)
            if index >= warmup_steps:
                times[which].append(elapsed)
    base_median, kdci_median = statistics.median(times[0]), statistics.median(times[1])
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(target) if target.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "student": student_network.name, "teacher": teacher_network.name, "batch_size": batch_size, "steps": steps,
        "method": baseline.describe()["name"],
        "synthesis_round_ms": 1000 * statistics.median(synthesis) if synthesis else float("nan"),
        "baseline_step_ms": 1000 * base_median, "kdci_step_ms": 1000 * kdci_median,
        "overhead_percent": 100 * (kdci_median / base_median - 1),
        "dictionary_build_seconds": {},
    }
    generator = torch.Generator().manual_seed(0)
    for size in dictionary_sizes:
        features = torch.randn(size, dictionary_feature_dim, generator=generator).to(target)
        _sync(target)
        began = time.perf_counter()
        build_dictionary(features, 16, 32, seed=0)
        _sync(target)
        result["dictionary_build_seconds"][size] = time.perf_counter() - began
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"device: {result['device']}; student {result['student']} (teacher {result['teacher']}), "
        f"batch {result['batch_size']}, median of {result['steps']} interleaved steps",
        f"{result['method']}: synthesis round {result['synthesis_round_ms']:.1f} ms",
        f"student step: baseline {result['baseline_step_ms']:.2f} ms, +KDCI {result['kdci_step_ms']:.2f} ms "
        f"-> overhead {result['overhead_percent']:+.2f}% (paper: < 3.3%; goal: <= 2%)",
    ]
    for size, seconds in result["dictionary_build_seconds"].items():
        lines.append(f"dictionary build (N=16, PCA 32) from {size} x 512 features: {seconds:.2f} s")
    return "\n".join(lines)


def bench_methods(params_path: Path, bindings: list[str], gin_root: Path = Path("gin")) -> list[dict[str, Any]]:
    """:func:`bench_kdci_overhead` for every method of params.yaml (experiment and profile from it too)."""
    from repro import config
    from repro.runset import read_params

    params = read_params(params_path, gin_root)
    rows = []
    for method in params["methods"]:
        config.parse([gin_root / "experiments" / f"{params['experiment']}.gin", gin_root / "methods" / f"{method}.gin",
                      gin_root / "kdci.gin", gin_root / "profiles" / f"{params['profile']}.gin", gin_root / "bench.gin"],
                     bindings)
        rows.append(bench_kdci_overhead())
        print(format_result(rows[-1]), flush=True)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """One markdown row per method: synthesis round, student step with and without KDCI, overhead."""
    lines = [f"device: {rows[0]['device']}; student {rows[0]['student']} (teacher {rows[0]['teacher']}), "
             f"batch {rows[0]['batch_size']}; medians of {rows[0]['steps']} interleaved student steps", "",
             "| method | synthesis round (ms) | student step (ms) | +KDCI step (ms) | KDCI overhead |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['synthesis_round_ms']:.1f} | {row['baseline_step_ms']:.2f} | "
                     f"{row['kdci_step_ms']:.2f} | {row['overhead_percent']:+.2f}% |")
    return "\n".join(lines) + "\n"
