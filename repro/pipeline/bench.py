"""``repro bench``: per method, what a synthesis round and a student step cost, and what KDCI adds.

Baseline and KDCI-wrapped students (same initial weights) take student steps in interleaved order
(A B, B A, ...), so drifts in machine speed hit both; the overhead is the ratio of the medians.
A synthesis round (the method's ``synthesize()``: generator steps, an inversion batch, a pool
selection) is timed on the baseline; KDCI does not change it. The dictionary build is timed
separately for 10k and 50k feature vectors. A last section runs a fixed float32 computation pinned
and unpinned (:mod:`repro.reproducible`) in fresh processes: which outputs the pin changes on this
CPU, whether the pinned bits repeat, and what the pin costs. ``repro bench --params params.yaml`` runs every method
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

from repro import config, reproducible
from repro.errors import UserError
from repro.kdci.dictionary import build_dictionary
from repro.methods.base import DFKDMethod
from repro.pipeline import check, runset, stages
from repro.train.device import resolve_device, seed_everything


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
                        dictionary_feature_dim: int = 512, device: str = "auto",
                        pin_check: bool = True) -> dict[str, Any]:
    """Median seconds per student step for ``baseline`` and ``wrapped`` (KDCI around the same baseline);
    with ``pin_check``, also :func:`repro.reproducible.compare_pinned` under ``reproducible_mode``."""
    target = resolve_device(device)
    spec = dataset.spec  # shapes only: no split is opened
    stages.check_profile(spec.name)
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
    if pin_check:
        result["reproducible_mode"] = reproducible.compare_pinned(repeats=10, rounds=2)
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
    if "reproducible_mode" in result:
        lines.append(reproducible.format_comparison(result["reproducible_mode"]))
    return "\n".join(lines)


def bench_methods(params_path: Path, bindings: list[str], gin_root: Path = Path("gin")) -> list[dict[str, Any]]:
    """:func:`bench_kdci_overhead` for every method of params.yaml (experiment and profile from it too)."""
    params = runset.read_params(params_path, gin_root)
    rows = []
    for method in params["methods"]:
        config.parse(runset.gin_files(params, method, kdci=True, extras=["bench"], gin_root=gin_root), bindings)
        rows.append(bench_kdci_overhead(pin_check=not rows))  # the pin does not depend on the method: once
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
    if "reproducible_mode" in rows[0]:
        lines += ["", reproducible.format_comparison(rows[0]["reproducible_mode"])]
    return "\n".join(lines) + "\n"


# `repro bench --profile`: the paper budgets' networks and batch sizes on random images of the right shape.
_PROFILE_BENCH_BINDINGS = [
    "bench_kdci_overhead.warmup_steps = 1", "bench_kdci_overhead.synthesis_rounds = 1",
    "bench_kdci_overhead.dictionary_sizes = ()", "KDCI.dictionary_samples = 512",
    # A round of the pool-based methods is shortened to `synthesis_steps` optimisation steps; the
    # full round's time is projected from the per-step time (steps are identical in cost).
    "Fast.warmup_rounds = 0",
]


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB; process peak so far


def bench_profile(profile: str, experiment: str | None, methods: list[str], steps: int, synthesis_steps: int,
                  bindings: list[str], gin_root: Path = Path("gin")) -> list[dict[str, Any]]:
    """Per method: student and synthesis images/s and peak memory at a paper profile's sizes.

    Data are ``FakeImages`` shaped like the profile's dataset (no download); networks, batch sizes and
    synthesis batch sizes are the profile's. Pool-based rounds (DeepInversion, CMI, Fast) run
    ``synthesis_steps`` optimisation steps and the full round (the profile's step count) is projected.
    """
    profile_file = gin_root / "profiles" / f"{profile}.gin"
    if not profile_file.is_file():
        known = ", ".join(sorted(p.stem for p in (gin_root / "profiles").glob("*.gin")))
        raise UserError(f"profile {profile!r} has no {profile_file}: choose one of {known}")
    config.parse([profile_file])
    datasets = stages.profile_scope()
    gin.clear_config()
    if not datasets:
        raise UserError(f"profile {profile!r} names no dataset (profile_scope.datasets): bench it with --gin files instead")
    dataset = datasets[0]
    if experiment is not None:  # FakeImages below take the profile's shape, so check the experiment's own dataset
        own = check.GinFacts({"experiment": experiment, "profile": profile}, gin_root).dataset
        if own is not None and not check.fits_profile(datasets, own):
            raise UserError(check.profile_scope_message(profile, datasets, own, f"--experiment {experiment}'s dataset"))
    experiment = experiment or f"{dataset}_resnet34-resnet18"
    fake = ["DATASET = @FakeImages()", f"FakeImages.like = '{dataset}'", "POOL = @DatasetPool()",
            "DatasetPool.dataset = @pool/FakeImages()", f"pool/FakeImages.like = '{dataset}'",
            "pool/FakeImages.size = 1024", "DatasetPool.split = 'train'", "DatasetPool.count = 1024"]
    rows = []
    for method in methods:
        files = runset.gin_files({"experiment": experiment, "profile": profile}, method, kdci=True, extras=["bench"],
                                 gin_root=gin_root)
        config.parse(files, fake)
        batch = gin.query_parameter("student/Trainer.batch_size")
        base = gin.query_parameter("%BASE_METHOD").scoped_configurable_fn()
        full_steps = base.describe().get("synthesis_steps", 1)
        cls = type(base).__name__
        try:
            synthesis_batch = gin.query_parameter(f"{cls}.synthesis_batch_size")
        except ValueError:
            synthesis_batch = 0  # selection-based (DFND): no synthesis per round
        gin.clear_config()
        shrink = [f"bench_kdci_overhead.steps = {steps}", f"bench_kdci_overhead.batch_size = {batch}"]
        if full_steps > 1:
            shrink.append(f"{cls}.synthesis_steps = {min(synthesis_steps, full_steps)}")
        config.parse(files, fake + _PROFILE_BENCH_BINDINGS + shrink + list(bindings))
        try:
            target = resolve_device(gin.query_parameter("bench_kdci_overhead.device"))
        except ValueError:  # not bound: the function's default
            target = resolve_device("auto")
        if target.type == "cuda":
            torch.cuda.reset_peak_memory_stats(target)
        result = bench_kdci_overhead(pin_check=False)  # full-size throughput only
        gin.clear_config()
        measured_steps = min(synthesis_steps, full_steps) if full_steps > 1 else 1
        round_s = result["synthesis_round_ms"] / 1000
        result.update({
            "profile": profile, "experiment": experiment, "batch_size": batch,
            "synthesis_batch": synthesis_batch, "synthesis_steps_full": full_steps,
            "synthesis_images_per_s": synthesis_batch * measured_steps / round_s if synthesis_batch and round_s > 0 else 0.0,
            "projected_round_s": round_s * full_steps / measured_steps if synthesis_batch else 0.0,
            "student_images_per_s": batch / (result["baseline_step_ms"] / 1000),
            "peak_memory_gib": _peak_memory_gib(target),
        })
        print(f"{method}: student {result['student_images_per_s']:.0f} img/s, synthesis "
              f"{result['synthesis_images_per_s']:.0f} img-steps/s", flush=True)
        rows.append(result)
    return rows


def format_profile_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per method, images/s of student steps and synthesis, projected round, memory."""
    first = rows[0]
    memory = "peak GPU memory (GiB)" if "cpu" not in first["device"] else "process peak RSS (GiB)"
    lines = [f"profile {first['profile']}, experiment {first['experiment']} (FakeImages: random images of the "
             f"dataset's shape); device: {first['device']}; student batch {first['batch_size']}, medians of "
             f"{first['steps']} steps", "",
             f"| method | student img/s | +KDCI step overhead | synthesis img-steps/s | synthesis batch x steps | "
             f"projected round (s) | {memory} |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        synthesis = (f"{row['synthesis_batch']} x {row['synthesis_steps_full']}" if row["synthesis_batch"] else "selection once")
        lines.append(f"| {row['method']} | {row['student_images_per_s']:.1f} | {row['overhead_percent']:+.2f}% | "
                     f"{row['synthesis_images_per_s']:.1f} | {synthesis} | {row['projected_round_s']:.1f} | "
                     f"{row['peak_memory_gib']:.2f} |")
    return "\n".join(lines) + "\n"
