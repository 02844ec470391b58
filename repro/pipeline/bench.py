"""``repro bench``: per method, what a synthesis round and a student step cost, what KDCI adds, and
whether memory stays flat across synthesis rounds; once, what the confounder dictionary build costs
beside scikit-learn and a stage's fixed start-up cost (issue 16).

Three students with the same initial weights take steps in rotating order (A B C, B C A, ...), so
drifts in machine speed hit all: the method's own student step, the same step of the method wrapped
in KDCI, and a *minimal loop* written here in a few lines of plain torch (the same networks, the KD
loss, SGD), the reference our training engine must not fall behind. Ratios are of medians measured in
one run. A synthesis round (the method's ``synthesize()``) is timed on the baseline, with the peak
memory of each round (peak RSS on the CPU, reset per round; peak allocated memory on a GPU). The
dictionary build (PCA + K-Means++) is timed beside ``sklearn.decomposition.PCA`` +
``sklearn.cluster.KMeans`` on the same vectors, in reproducible mode (as the pipeline runs it) and,
in a fresh process, without it. ``repro bench --params params.yaml --json reports/bench.json
--markdown reports/bench.md`` regenerates the committed figures.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gin
import torch
import torch.nn.functional as F

from repro import config, io, reproducible
from repro.errors import UserError
from repro.kdci.dictionary import build_dictionary
from repro.methods.base import DFKDMethod
from repro.pipeline import check, runset, stages
from repro.train.device import platform_record, resolve_device, seed_everything


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


def _minimal_step(teacher: torch.nn.Module, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  images: torch.Tensor, temperature: float, device: torch.device) -> float:
    """One KD step as a plain torch loop would write it: no method, no engine, no loss helpers."""
    _sync(device)
    began = time.perf_counter()
    with torch.no_grad():
        teacher_logits = teacher(images)
    student_logits = student(images)
    loss = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - began


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # no reset: the peak below is the process's peak so far


def _peak_memory_mib(device: torch.device) -> float:
    """Peak memory since :func:`_reset_peak_memory`: allocated GPU memory, or the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@gin.configurable
def bench_kdci_overhead(baseline: DFKDMethod = gin.REQUIRED, wrapped: DFKDMethod = gin.REQUIRED, *, teacher_network=gin.REQUIRED,
                        student_network=gin.REQUIRED, dataset=gin.REQUIRED, steps: int = 100, warmup_steps: int = 10,
                        batch_size: int = 128, synthesis_rounds: int = 4, kd_temperature: float = 20.0,
                        device: str = "auto", pin_check: bool = True) -> dict[str, Any]:
    """Per-step medians (seconds) of ``baseline``'s student step, ``wrapped``'s (KDCI around the same
    baseline) and the minimal loop's; the median synthesis round over ``synthesis_rounds`` rounds after a
    first, uncounted one, and the peak memory of every round (``peak_memory_mib_rounds``, the first
    included). ``kd_temperature`` is the minimal loop's (the benchmark's KD temperature, 20). With
    ``pin_check``, also :func:`repro.reproducible.compare_pinned` under ``reproducible_mode``."""
    if not isinstance(synthesis_rounds, int) or synthesis_rounds < 2:
        raise UserError(f"bench_kdci_overhead.synthesis_rounds = {synthesis_rounds!r}: bind an integer >= 2 (memory "
                        "is compared between the first and the last round)")
    target = resolve_device(device)
    spec = dataset.spec  # shapes only: no split is opened
    stages.check_profile(spec.name)
    seed_everything(0)
    teacher = teacher_network.build(num_classes=spec.num_classes, in_channels=spec.channels)
    student = student_network.build(num_classes=spec.num_classes, in_channels=spec.channels)
    minimal_teacher = copy.deepcopy(teacher).to(target).eval().requires_grad_(False)
    minimal_student = copy.deepcopy(student).to(target).train()
    models, optimizers = [], []
    for method, own_student in ((baseline, student), (wrapped, copy.deepcopy(student))):
        model = method.setup(copy.deepcopy(teacher), own_student.to(target), spec, target).to(target).train()
        method.on_epoch_start(0)  # gin/bench.gin sets KDCI.warmup_epochs = 0: the dictionary is built here
        models.append(model)
        optimizers.append(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    minimal_optimizer = torch.optim.SGD(minimal_student.parameters(), lr=0.01, momentum=0.9)
    synthesis: list[float] = []
    peaks: list[float] = []
    for index in range(synthesis_rounds + 1):  # the first round (allocations, lazy setup) is not timed
        _reset_peak_memory(target)
        _sync(target)
        began = time.perf_counter()
        baseline.synthesize()
        _sync(target)
        peaks.append(_peak_memory_mib(target))
        if index:
            synthesis.append(time.perf_counter() - began)
    images = baseline.sample(batch_size).x.detach().clone()  # the minimal loop's batch: real substitution data
    arms = [lambda: _step(baseline, optimizers[0], batch_size, target),
            lambda: _step(wrapped, optimizers[1], batch_size, target),
            lambda: _minimal_step(minimal_teacher, minimal_student, minimal_optimizer, images, kd_temperature, target)]
    times: list[list[float]] = [[], [], []]
    for index in range(warmup_steps + steps):
        for offset in range(len(arms)):
            which = (index + offset) % len(arms)
            elapsed = arms[which]()
            if index >= warmup_steps:
                times[which].append(elapsed)
    peak = max(peaks + [_peak_memory_mib(target)])  # the student steps ran after the last round's reset
    base_s, kdci_s, minimal_s = (statistics.median(arm) for arm in times)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(target) if target.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "student": student_network.name, "teacher": teacher_network.name, "batch_size": batch_size, "steps": steps,
        "method": baseline.describe()["name"],
        "synthesis_round_s": statistics.median(synthesis),
        "student_step_s": base_s, "kdci_step_s": kdci_s, "minimal_step_s": minimal_s,
        "student_vs_minimal": base_s / minimal_s,
        "kdci_overhead_pct": 100 * (kdci_s / base_s - 1),
        "memory": "peak allocated GPU memory" if target.type == "cuda" else "peak RSS of the process",
        "peak_memory_mib_rounds": peaks, "peak_memory_mib_first": peaks[0], "peak_memory_mib_last": peaks[-1],
        "peak_memory_mib": peak,
    }
    if pin_check:
        result["reproducible_mode"] = reproducible.compare_pinned(repeats=10, rounds=2)
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"device: {result['device']}; student {result['student']} (teacher {result['teacher']}), "
        f"batch {result['batch_size']}, median of {result['steps']} interleaved steps",
        f"{result['method']}: synthesis round {1000 * result['synthesis_round_s']:.1f} ms; {result['memory']} per round "
        f"{result['peak_memory_mib_first']:.0f} MiB (first) -> {result['peak_memory_mib_last']:.0f} MiB (last)",
        f"student step: {1000 * result['student_step_s']:.2f} ms, minimal torch loop {1000 * result['minimal_step_s']:.2f} ms "
        f"(x{result['student_vs_minimal']:.3f}), +KDCI {1000 * result['kdci_step_s']:.2f} ms "
        f"-> overhead {result['kdci_overhead_pct']:+.2f}% (paper: < 3.3%; goal: <= 2%)",
    ]
    if "reproducible_mode" in result:
        lines.append(reproducible.format_comparison(result["reproducible_mode"]))
    return "\n".join(lines)


def _time_ours(features: torch.Tensor, num_prototypes: int, pca_dim: int) -> tuple[float, float]:
    began = time.perf_counter()
    dictionary = build_dictionary(features, num_prototypes, pca_dim, seed=0)
    seconds = time.perf_counter() - began
    projected = (features - dictionary.pca_mean) @ dictionary.pca_basis
    nearest = torch.cdist(projected, dictionary.prototypes).argmin(dim=1)
    return seconds, float(((projected - dictionary.prototypes[nearest]) ** 2).sum())


def _time_sklearn(features: torch.Tensor, num_prototypes: int, pca_dim: int) -> tuple[float, float]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    points = features.numpy()
    began = time.perf_counter()
    projected = PCA(pca_dim, whiten=True, random_state=0).fit_transform(points)
    clusters = KMeans(num_prototypes, init="k-means++", n_init=1, random_state=0).fit(projected)
    return time.perf_counter() - began, float(clusters.inertia_)


DICTIONARY_SIZES = (10_000, 50_000)  # feature vectors: issue 16's sizes


@gin.configurable
def bench_dictionary(sizes: tuple[int, ...] | list[int] = DICTIONARY_SIZES, feature_dim: int = 512,
                     num_prototypes: int = 16, pca_dim: int = 32, repeats: int = 3) -> dict[str, dict[str, float]]:
    """The confounder dictionary build beside scikit-learn's PCA (whitened) + KMeans (k-means++, one
    init), on the same seeded Gaussian vectors ``[size, feature_dim]``; medians of ``repeats``, the two
    alternating, after one warm-up of each. Inertia is each one's within-cluster sum of squares in its
    own whitened PCA space (the same scale), so ``inertia_ratio`` compares result quality."""
    generator = torch.Generator().manual_seed(0)
    warm = torch.randn(2000, feature_dim, generator=generator)
    _time_ours(warm, num_prototypes, pca_dim), _time_sklearn(warm, num_prototypes, pca_dim)  # first-call costs
    rows: dict[str, dict[str, float]] = {}
    for size in sizes:
        features = torch.randn(size, feature_dim, generator=generator)
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(_time_ours(features, num_prototypes, pca_dim))
            theirs.append(_time_sklearn(features, num_prototypes, pca_dim))
        ours_s, theirs_s = statistics.median(t for t, _ in ours), statistics.median(t for t, _ in theirs)
        rows[str(size)] = {"dictionary_build_s": ours_s, "sklearn_dictionary_build_s": theirs_s,
                           "ratio": ours_s / theirs_s, "inertia": ours[0][1], "sklearn_inertia": theirs[0][1],
                           "inertia_ratio": ours[0][1] / theirs[0][1]}
    return rows


def _dictionary_unpinned(sizes: list[int]) -> dict[str, dict[str, float]]:
    """:func:`bench_dictionary` in a fresh process with reproducible mode off (torch's and MKL's fastest
    kernels for this CPU, as scikit-learn's OpenBLAS has)."""
    env = {**os.environ, reproducible.SWITCH: "0"}
    code = ("import json, sys; from repro.pipeline.bench import bench_dictionary; "
            f"print(json.dumps(bench_dictionary(sizes={list(sizes)!r})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise UserError(f"the unpinned dictionary benchmark failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stage_startup(repo: Path, runs: int = 3) -> dict[str, Any]:
    """A stage's fixed cost: process start to its first training step (the Trainer's ``startup_seconds``
    metric), for ``repro distill`` of DAFL on the digits smoke profile, tracked to a fresh SQLite store in a
    temporary folder: the first run creates the store (``startup_new_store_s``), the median of the next
    ``runs`` is ``startup_s``. Runs in ``repo`` (git provenance and gin files as a stage sees them)."""
    from repro.tracking.runs import EXPERIMENT
    from repro.tracking.store import open_store

    gin_files = ["--gin", "gin/experiments/digits.gin", "--gin", "gin/methods/dafl.gin", "--gin", "gin/profiles/smoke.gin"]
    with tempfile.TemporaryDirectory(prefix="repro-bench-") as folder:
        tmp = Path(folder)
        env = {key: value for key, value in os.environ.items() if key not in ("DVC_STAGE", "REPRO_PIPELINE_RUN")}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"

        def repro(*args: str) -> None:
            done = subprocess.run([sys.executable, "-m", "repro", *args], cwd=repo, env=env, capture_output=True,
                                  text=True, timeout=900)
            if done.returncode != 0:
                raise UserError(f"stage start-up benchmark: `repro {args[0]}` failed: "
                                f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")

        repro("train-teacher", "--gin", "gin/experiments/digits.gin", "--gin", "gin/profiles/smoke.gin", "--out",
              str(tmp / "teacher"), "--metrics", str(tmp / "teacher.json"), "--checkpoint-dir", str(tmp / "checkpoints"),
              "--no-track")
        for index in range(runs + 1):
            repro("distill", *gin_files, "--teacher", str(tmp / "teacher"), "--out", str(tmp / f"student{index}"),
                  "--checkpoint-dir", str(tmp / "checkpoints"))
        client = open_store(env["MLFLOW_TRACKING_URI"], create=False)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        found = client.search_runs([experiment.experiment_id], "tags.stage = 'distill'",
                                   order_by=["attributes.start_time ASC"])
        seconds = [run.data.metrics["startup_seconds"] for run in found]
    if len(seconds) != runs + 1:
        raise UserError(f"stage start-up benchmark: {len(seconds)} of {runs + 1} runs recorded startup_seconds")
    return {"startup_new_store_s": seconds[0], "startup_s": statistics.median(seconds[1:]), "startup_runs_s": seconds[1:]}


def bench_methods(params_path: Path, bindings: list[str], gin_root: Path = Path("gin"), *,
                  startup: bool = True) -> dict[str, Any]:
    """The whole benchmark for params.yaml: :func:`bench_kdci_overhead` for every method (experiment and
    profile from params.yaml), :func:`bench_dictionary` pinned and unpinned, and (``startup``)
    :func:`stage_startup`. The record ``repro bench --json`` writes."""
    params = runset.read_params(params_path, gin_root)
    methods: dict[str, dict[str, Any]] = {}
    pin = None
    for method in params["methods"]:
        config.parse(runset.gin_files(params, method, kdci=True, extras=["bench"], gin_root=gin_root), bindings)
        row = bench_kdci_overhead(pin_check=pin is None)  # the pin does not depend on the method: once
        pin = row.pop("reproducible_mode", pin)
        methods[method] = row
        print(format_result(row), flush=True)
    dictionary = bench_dictionary()  # the sizes gin binds, if any
    gin.clear_config()
    sizes = [int(size) for size in dictionary]
    report: dict[str, Any] = {
        "platform": platform_record(), "profile": params["profile"], "experiment": params["experiment"],
        "methods": methods, "dictionary": dictionary, "dictionary_unpinned": _dictionary_unpinned(sizes),
        "reproducible_mode": pin,
    }
    if startup:
        report.update(stage_startup(gin_root.resolve().parent))
    return report


def targets(report: dict[str, Any]) -> dict[str, bool]:
    """Issue 16's targets, each true or false on ``report``: memory flat across rounds (last <= first x
    1.05) for every method, the dictionary build at or below scikit-learn's time (pinned, as the pipeline
    runs it) at every size with inertia within 1%, KDCI overhead under 2%, stage start-up under 3 s."""
    methods = report["methods"].values()
    rows = report["dictionary"].values()
    met = {
        "memory_flat": all(row["peak_memory_mib_last"] <= 1.05 * row["peak_memory_mib_first"] for row in methods),
        "dictionary_at_sklearn_speed": all(row["ratio"] <= 1.0 for row in rows),
        "dictionary_quality": all(abs(row["inertia_ratio"] - 1) <= 0.01 for row in rows),
        "kdci_overhead_under_2pct": all(row["kdci_overhead_pct"] < 2.0 for row in methods),
        "student_step_at_minimal_loop": all(row["student_vs_minimal"] <= 1.0 for row in methods),
    }
    if "startup_s" in report:
        met["startup_under_3s"] = report["startup_s"] < 3.0
    return met


def format_report(report: dict[str, Any]) -> str:
    """``reports/bench.md``: the figures of ``report`` as tables, and which targets they meet."""
    first = next(iter(report["methods"].values()))
    platform = report["platform"]
    lines = ["# Benchmark (`repro bench --params params.yaml`)", "",
             f"Machine: {platform.get('cpu', '?')}, {first['device']}, torch {platform.get('torch', '?')}, dispatching "
             f"to {platform.get('cpu_capability', '?')} (reproducible mode: {platform.get('reproducible', '?')}). "
             f"Profile `{report['profile']}`, experiment `{report['experiment']}`: student {first['student']}, teacher "
             f"{first['teacher']}, batch {first['batch_size']}; medians of {first['steps']} student steps per arm, "
             "the arms interleaved. Memory is the " + first["memory"] + " during each synthesis round.", "",
             "| method | synthesis round (s) | student step (ms) | minimal torch loop (ms) | step / minimal | "
             "+KDCI step (ms) | KDCI overhead | peak memory, first round (MiB) | last round (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["methods"].items():
        lines.append(f"| {name} | {row['synthesis_round_s']:.3f} | {1000 * row['student_step_s']:.2f} | "
                     f"{1000 * row['minimal_step_s']:.2f} | {row['student_vs_minimal']:.3f} | "
                     f"{1000 * row['kdci_step_s']:.2f} | {row['kdci_overhead_pct']:+.2f}% | "
                     f"{row['peak_memory_mib_first']:.0f} | {row['peak_memory_mib_last']:.0f} |")
    lines += ["", "Confounder dictionary (N = 16, PCA 32, whitened) from Gaussian 512-d vectors, beside scikit-learn's "
              "PCA(whiten=True) + KMeans(k-means++, n_init=1) on the same vectors; medians of 3:", "",
              "| vectors | mode | ours (s) | scikit-learn (s) | ours / scikit-learn | inertia ours / scikit-learn |",
              "|---|---|---|---|---|---|"]
    for key, mode in (("dictionary", "reproducible (pinned kernels)"), ("dictionary_unpinned", "unpinned")):
        for size, row in report.get(key, {}).items():
            lines.append(f"| {int(size):,} | {mode} | {row['dictionary_build_s']:.3f} | "
                         f"{row['sklearn_dictionary_build_s']:.3f} | {row['ratio']:.2f} | {row['inertia_ratio']:.4f} |")
    if "startup_s" in report:
        lines += ["", f"Stage start-up (process start to the first training step, `repro distill` tracked to SQLite): "
                      f"{report['startup_s']:.2f} s (median of {len(report['startup_runs_s'])}; "
                      f"{report['startup_new_store_s']:.2f} s for the run that creates the store)."]
    if report.get("reproducible_mode"):
        lines += ["", reproducible.format_comparison(report["reproducible_mode"])]
    lines += ["", "| target (issue 16) | met |", "|---|---|"]
    lines += [f"| {name} | {'yes' if met else 'no'} |" for name, met in targets(report).items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: Path | None, markdown_path: Path | None) -> None:
    """Write ``report`` as JSON and as markdown, each atomically (``repro bench`` checks the destinations
    before it measures)."""
    if json_path is not None:
        io.write_json_atomically(json_path, report)
    if markdown_path is not None:
        io.write_text_atomically(markdown_path, format_report(report))


# `repro bench --profile`: the paper budgets' networks and batch sizes on random images of the right shape.
_PROFILE_BENCH_BINDINGS = [
    "bench_kdci_overhead.warmup_steps = 1", "bench_kdci_overhead.synthesis_rounds = 2",
    "KDCI.dictionary_samples = 512",
    # A round of the pool-based methods is shortened to `synthesis_steps` optimisation steps; the
    # full round's time is projected from the per-step time (steps are identical in cost).
    "Fast.warmup_rounds = 0",
]


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
        result = bench_kdci_overhead(pin_check=False)  # full-size throughput only
        gin.clear_config()
        measured_steps = min(synthesis_steps, full_steps) if full_steps > 1 else 1
        round_s = result["synthesis_round_s"]
        result.update({
            "profile": profile, "experiment": experiment, "batch_size": batch,
            "synthesis_batch": synthesis_batch, "synthesis_steps_full": full_steps,
            "synthesis_images_per_s": synthesis_batch * measured_steps / round_s if synthesis_batch and round_s > 0 else 0.0,
            "projected_round_s": round_s * full_steps / measured_steps if synthesis_batch else 0.0,
            "student_images_per_s": batch / result["student_step_s"],
            "peak_memory_gib": result["peak_memory_mib"] / 1024,
        })
        print(f"{method}: student {result['student_images_per_s']:.0f} img/s, synthesis "
              f"{result['synthesis_images_per_s']:.0f} img-steps/s", flush=True)
        rows.append(result)
    return rows


def format_profile_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per method, images/s of student steps and synthesis, projected round, memory."""
    first = rows[0]
    memory = "peak GPU memory (GiB)" if "cpu" not in first["device"] else "peak RSS (GiB)"
    lines = [f"profile {first['profile']}, experiment {first['experiment']} (FakeImages: random images of the "
             f"dataset's shape); device: {first['device']}; student batch {first['batch_size']}, medians of "
             f"{first['steps']} steps", "",
             f"| method | student img/s | step / minimal torch loop | +KDCI step overhead | synthesis img-steps/s | "
             f"synthesis batch x steps | projected round (s) | {memory} | synthesis peak, first -> last round (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        synthesis = (f"{row['synthesis_batch']} x {row['synthesis_steps_full']}" if row["synthesis_batch"] else "selection once")
        lines.append(f"| {row['method']} | {row['student_images_per_s']:.1f} | {row['student_vs_minimal']:.3f} | "
                     f"{row['kdci_overhead_pct']:+.2f}% | "
                     f"{row['synthesis_images_per_s']:.1f} | {synthesis} | {row['projected_round_s']:.1f} | "
                     f"{row['peak_memory_gib']:.2f} | {row['peak_memory_mib_first']:.0f} -> {row['peak_memory_mib_last']:.0f} |")
    return "\n".join(lines) + "\n"
