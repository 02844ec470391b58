"""The pipeline's stages as gin-configurable functions: teacher, distill, evaluate.

Each stage reads its inputs (real data only where allowed, artefacts otherwise), runs the Trainer
or the evaluation, writes one artefact or metrics file, and records one MLflow run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import gin
import torch

from repro import artefact, io
from repro.config import fingerprint, flat_bindings
from repro.data.datasets import RealDataset
from repro.errors import UserError
from repro.kdci.model import DeconfoundedStudent
from repro.methods.base import DFKDMethod
from repro.methods.supervised import Supervised
from repro.nets.spec import NetSpec
from repro.pipeline import check, diagnose
from repro.pipeline.substitution_views import SubstitutionGrids, log_class_proportions
from repro.tracking.runs import command_line, git_provenance, open_tracker
from repro.train import distributed
from repro.train.device import platform_record, resolve_device, seed_everything
from repro.train.engine import Trainer
from repro.train.evaluate import accuracy, write_metrics
from repro.train.hooks import NullTracker, Tracker


@gin.configurable
def run_tags(profile: str = "custom", experiment: str = "custom") -> dict[str, str]:
    """Tags every MLflow run carries; profile and experiment are bound by the shipped gin files."""
    # DVC exports DVC_STAGE (e.g. "kdci@dafl-0") to the commands it runs.
    return {"profile": profile, "experiment": experiment, "dvc_stage": os.environ.get("DVC_STAGE", "none"),
            "command": command_line(), **git_provenance()}


@gin.configurable
def profile_scope(datasets: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """Datasets a profile is made for (the paper profiles bind one); empty: any dataset."""
    return tuple(datasets)


def check_profile(dataset: str) -> None:
    """Refuse a profile meant for another dataset, e.g. paper-cifar100 budgets on the digits pair."""
    allowed = profile_scope()
    if not check.fits_profile(allowed, dataset):  # the rule and message `repro check-params` applies to params.yaml
        raise UserError(check.profile_scope_message(run_tags()["profile"], allowed, dataset))


def _checkpoint_path(checkpoint_root: Path, out_dir: Path) -> Path:
    relative = Path(*[part for part in out_dir.parts if part not in ("/", "..")])
    return checkpoint_root / relative / "last.pt"


Result = TypeVar("Result")


def _holding_outputs(stage: Callable[..., Result]) -> Callable[..., Result]:
    """Run a training ``stage`` holding its output folder and its checkpoint folder: a second process
    given the same ``--out`` (or another spelling that maps to the same checkpoint folder) is refused
    at once, naming this one's pid, instead of training into the same files. Under torchrun, rank 0
    (the rank that writes) holds them."""
    signature = inspect.signature(stage)

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Result:
        if not distributed.is_main():
            return stage(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out_dir, checkpoint_root = Path(bound.arguments["out_dir"]), Path(bound.arguments["checkpoint_root"])
        artefact.check_output_folder(out_dir)  # a user's folder (`--out ~`) is refused before a lock is put beside it
        with io.exclusive(out_dir, "output folder", "--out"), \
                io.exclusive(_checkpoint_path(checkpoint_root, out_dir).parent, "checkpoint folder", "--checkpoint-dir"):
            return stage(*args, **kwargs)
    return run


@contextlib.contextmanager
def _tracked(run_name: str, stage: str, tags: dict[str, Any], track: bool) -> Iterator[Tracker]:
    """One MLflow run around a stage: FAILED if the stage raises, else FINISHED with the operative
    bindings as params. The parsed config is logged first, so a run that dies still shows its input."""
    # Tags (git calls included) are only worked out when there is a run to carry them.
    tracker = (open_tracker(run_name, {"stage": stage, **run_tags(), **{k: str(v) for k, v in tags.items()},
                                       **{f"platform.{k}": str(v) for k, v in platform_record().items()}})
               if track and distributed.is_main() else NullTracker())  # under torchrun: rank 0 records
    tracker.log_text(gin.config_str(), "parsed_config.gin")
    try:
        yield tracker
    except BaseException:
        tracker.finish(failed=True)
        raise
    tracker.log_params(flat_bindings(gin.operative_config_str()))
    tracker.finish()


def _log_outputs(tracker: Tracker, out_dir: Path, metrics_path: Path | None) -> None:
    for path in sorted(out_dir.iterdir()):  # records and dictionaries; the weights stay in the artefact
        if path.name != artefact.WEIGHTS_FILE:
            tracker.log_artifact(path)
    if metrics_path is not None:
        tracker.log_artifact(metrics_path)


def _tag_metrics_file(tracker: Tracker, metrics_path: Path) -> None:
    """Tag the run with the metrics file it wrote and the sha256 of its bytes: how ``repro audit``
    finds the run of a metrics JSON. The file itself names no run, so a rerun with the same seed
    writes the same bytes (DVC metrics must not change between reruns)."""
    if tracker.run_id is not None:
        sha = hashlib.sha256(Path(metrics_path).read_bytes()).hexdigest()
        tracker.set_tags({"metrics_file": str(metrics_path), "metrics_sha256": sha})


def _register(tracker: Tracker, out_dir: Path, seed: int) -> None:
    """Register the finished artefact in the MLflow Model Registry (alias ``seed<k>`` for a teacher,
    ``teacher<T>-seed<k>`` for a student: one version per cell of the run set)."""
    from repro.tracking.runs import registered_name

    config = artefact.read_config(out_dir)
    sha = config.weights_sha256
    tracker.set_tags({"weights_sha256": sha})  # what `repro audit` matches evaluations and versions by
    alias = f"seed{seed}" if config.teacher_seed is None else f"teacher{config.teacher_seed}-seed{seed}"
    tracker.register_model(registered_name(config), out_dir, {
        "weights_sha256": sha, "seed": str(seed), "artefact": str(out_dir)}, alias=alias)


@_holding_outputs
@gin.configurable(denylist=["out_dir", "metrics_path", "checkpoint_root", "track"])
def train_teacher(out_dir: Path, metrics_path: Path, checkpoint_root: Path = Path("checkpoints"), track: bool = True,
                  *, dataset: RealDataset = gin.REQUIRED, network: NetSpec = gin.REQUIRED, seed: int = 0) -> dict:
    """Train the teacher on the real training split; save it and its test metrics."""
    artefact.check_output_folder(out_dir)
    io.check_file_destination(metrics_path, "metrics file")  # before training, not after it
    seed_everything(seed)
    spec = dataset.spec
    check_profile(spec.name)
    train, test = dataset.split("train", augment=True), dataset.split("test")
    model = network.build(num_classes=spec.num_classes, in_channels=spec.channels)
    with gin.config_scope("teacher"):
        trainer, method = Trainer(), Supervised(train_data=train, seed=seed)
    ckpt = _checkpoint_path(checkpoint_root, out_dir)
    with _tracked(f"teacher-{network.name}-seed{seed}", "teacher",
                  {"dataset": spec.name, "network": network.name, "seed": seed, "method": "supervised"}, track) as tracker:
        model = trainer.fit(method, model, spec, monitor_data=test, checkpoint_path=ckpt,
                            fingerprint=fingerprint("teacher", gin.config_str()), tracker=tracker, label="teacher")
        if not distributed.is_main():
            return {}  # rank 0 evaluates and writes
        metrics = {**accuracy(model, test, spec.num_classes, trainer.device), "model": str(out_dir), "role": "teacher",
                   "network": network.name, "seed": seed}
        config = {"role": "teacher", "architecture": network.to_dict(), "data": spec.to_dict(),
                  "platform": platform_record(trainer.device),
                  "dataset": dataset.describe(), "method": method.describe(), "seed": seed}
        artefact.save_artefact(out_dir, model, config, gin.operative_config_str())
        _register(tracker, out_dir, seed)
        write_metrics(metrics_path, metrics)
        _tag_metrics_file(tracker, metrics_path)
        tracker.log_metrics({"test/top1": metrics["top1"], "test/top5": metrics["top5"]})
        _log_outputs(tracker, out_dir, metrics_path)
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    print(f"teacher {network.name}: test top-1 {metrics['top1']:.2f}% -> {out_dir} (metrics: {metrics_path})")
    return metrics


def _check_substitution_settings(sample_size: Any, grid_every: Any) -> None:
    """Counts gin cannot type-check: a negative one would silently record nothing."""
    for name, value, example in (("substitution_sample_size", sample_size, 2048), ("substitution_grid_every", grid_every, 1)):
        if value is None and name == "substitution_grid_every":  # None: about four grids per run
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"distill.{name} = {value!r} is invalid: bind an integer >= 0 (0 records none), "
                            f"e.g. --bind distill.{name}={example}")


def _teacher_overlap(teacher_dir: Path, out_dir: Path) -> str | None:
    """How ``out_dir`` overlaps the teacher's folder (symlinks and other spellings resolved), or None."""
    teacher, out = Path(os.path.realpath(teacher_dir)), Path(os.path.realpath(out_dir))
    if out == teacher:
        return f"is the teacher's folder ({teacher_dir}): the student would replace the teacher"
    if teacher in out.parents:
        return f"is inside the teacher's folder {teacher_dir}: the student would be written into the teacher artefact"
    if out in teacher.parents:
        return f"contains the teacher {teacher_dir}: replacing it would delete the teacher"
    return None


def _apart_from_teacher(stage: Callable[..., Result]) -> Callable[..., Result]:
    """Refuse an ``out_dir`` that is, contains or lies inside ``teacher_dir``, before anything (even the
    lock beside the output folder) is written."""
    signature = inspect.signature(stage)

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Result:
        bound = signature.bind(*args, **kwargs)
        overlap = _teacher_overlap(Path(bound.arguments["teacher_dir"]), Path(bound.arguments["out_dir"]))
        if overlap:
            raise UserError(f"--out {bound.arguments['out_dir']} {overlap}; choose an --out outside the teacher's "
                            "folder, e.g. models/students/<method>/teacher<T>-seed<S>")
        return stage(*args, **kwargs)
    return run


def _check_is_teacher(teacher_dir: Path, config: artefact.ArtefactRecord) -> None:
    """Refuse a student (or an artefact recording no role) given as the teacher: it would load and
    train without complaint, and the result would be a student of a student."""
    if config.role == "teacher":
        return
    recorded = f"config.json role {config.role!r}" if config.role != "model" else "config.json records no role"
    raise UserError(f"--teacher {teacher_dir} is not a teacher artefact ({recorded}): pass a teacher artefact, e.g. "
                    "models/teachers/seed0 (written by `repro train-teacher` or `repro import-teacher`)")


@_apart_from_teacher
@_holding_outputs
@gin.configurable(denylist=["teacher_dir", "out_dir", "checkpoint_root", "track"])
def distill(teacher_dir: Path, out_dir: Path, checkpoint_root: Path = Path("checkpoints"), track: bool = True, *,
            method: DFKDMethod = gin.REQUIRED, student: NetSpec = gin.REQUIRED, seed: int = 0,
            monitor_dataset: RealDataset | None = None, substitution_sample_size: int = 2048,
            substitution_grid_every: int | None = None) -> Path:
    """Distil a student from the teacher artefact with a data-free ``method``; save the student.

    Opens no real data: class count, image shape and normalisation come from the teacher's artefact.
    ``monitor_dataset`` (off by default) logs test top-1 per epoch for curves, never for selection.
    ``substitution_sample_size`` substitution images are recorded through the teacher's eyes
    (features, predictions) for ``repro diagnose`` and the MLflow class-proportion plot; 0 records none.
    ``substitution_grid_every``: log a grid of substitution images every that many epochs and at the
    last (None: about four grids per run; 0: none).
    """
    _check_substitution_settings(substitution_sample_size, substitution_grid_every)
    artefact.check_output_folder(out_dir)
    teacher, teacher_config = artefact.load_artefact(teacher_dir)
    _check_is_teacher(teacher_dir, teacher_config)
    spec = teacher_config.data
    check_profile(spec.name)
    seed_everything(seed)
    model = student.build(num_classes=spec.num_classes, in_channels=spec.channels)
    with gin.config_scope("student"):
        trainer = Trainer()
    described = method.describe()
    monitor = monitor_dataset.split("test") if monitor_dataset is not None else None
    ckpt = _checkpoint_path(checkpoint_root, out_dir)
    tags = {"dataset": spec.name, "method": described["name"], "network": student.name,
            "teacher": teacher_config.network, "teacher_seed": teacher_config.seed, "seed": seed,
            "kdci": str("kdci" in described).lower(),
            "pair": f"{teacher_config.network}->{student.name}", "teacher_weights_sha256": teacher_config.weights_sha256}
    with _tracked(f"distill-{described['name']}-teacher{teacher_config.seed}-seed{seed}", "distill", tags,
                  track) as tracker:
        every = max(1, round(trainer.epochs / 4)) if substitution_grid_every is None else substitution_grid_every
        grids = SubstitutionGrids(method, spec, tracker, every, trainer.epochs)
        final: dict[str, Any] = {"epoch": None}  # the last epoch's metrics, for final_metrics.json

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            final.clear()
            final.update({"epoch": epoch, **metrics})
            grids(epoch)

        trained = trainer.fit(method, model, spec, teacher, monitor_data=monitor, checkpoint_path=ckpt,
                              fingerprint=fingerprint("distill", gin.config_str(), teacher_config.weights_sha256),
                              tracker=tracker, on_epoch=on_epoch,
                              label=f"distill {described['name']} teacher {teacher_config.seed} seed {seed}")
        if not distributed.is_main():
            return out_dir  # rank 0 writes the artefact
        described = method.describe()  # after setup: now includes what it loaded (e.g. the pool's record)
        config = {"role": "student", "architecture": student.to_dict(), "data": spec.to_dict(),
                  "platform": platform_record(trainer.device),
                  "dataset": teacher_config.get("dataset", {}), "method": described, "seed": seed,
                  "teacher": {"path": str(teacher_dir), "architecture": teacher_config["architecture"],
                              "sha256": teacher_config.weights_sha256, "seed": teacher_config.seed},
                  **method.artefact_config()}
        files = dict(method.artefact_files())
        if substitution_sample_size > 0:
            from safetensors.torch import save_file

            sample = diagnose.sample_substitution_data(method, teacher, substitution_sample_size)
            files[diagnose.SAMPLE_FILE] = lambda path: save_file(sample, str(path))
            if tracker.run_id is not None:
                log_class_proportions(tracker, sample["predictions"], spec.num_classes,
                                      f"{described['name']} seed {seed}: teacher-predicted classes")
        artefact.save_artefact(out_dir, trained, config, gin.operative_config_str(), files)
        _log_outputs(tracker, out_dir, None)
        _register(tracker, out_dir, seed)
        tracker.log_text(json.dumps({"mlflow_run_id": tracker.run_id, **final},
                                    indent=2, sort_keys=True) + "\n", "final_metrics.json")
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    print(f"student {student.name} by {described['name']} (teacher seed {teacher_config.seed}, seed {seed}) -> {out_dir}")
    return out_dir


@gin.configurable(denylist=["model_dir", "metrics_path", "track"])
def evaluate(model_dir: Path, metrics_path: Path, track: bool = True, *, dataset: RealDataset = gin.REQUIRED,
             batch_size: int = 512, device: str = "auto") -> dict:
    """Top-1/top-5/per-class accuracy of an artefact on the real test split -> DVC metrics JSON."""
    io.check_file_destination(metrics_path, "metrics file")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise UserError(f"evaluate.batch_size = {batch_size!r} is invalid: it must be a positive integer")
    check_profile(dataset.spec.name)  # as train_teacher and distill do: paper budgets on digits are a mistake
    model, config = artefact.load_artefact(model_dir)
    recorded, actual = config.data, dataset.spec
    if (recorded.name, recorded.num_classes, recorded.channels, recorded.image_size) != (
            actual.name, actual.num_classes, actual.channels, actual.image_size):
        raise UserError(f"{model_dir} was trained for {recorded.name} ({recorded.num_classes} classes, {recorded.channels}x"
                        f"{recorded.image_size}x{recorded.image_size}) but the configured dataset is {actual.name} "
                        f"({actual.num_classes} classes, {actual.channels}x{actual.image_size}x{actual.image_size}): "
                        "evaluate with the same experiment gin")
    if not torch.allclose(torch.tensor(recorded.mean + recorded.std), torch.tensor(actual.mean + actual.std), atol=1e-4):
        raise UserError(f"{model_dir} expects normalisation {recorded.mean}/{recorded.std} but the dataset gives "
                        f"{actual.mean}/{actual.std}: the dataset split settings differ from the teacher's")
    target = resolve_device(device)
    method = config.method_name
    tags = {"dataset": actual.name, "method": method, "network": config.network, "seed": config.seed,
            "role": config.get("role"), "kdci": str(config.is_kdci).lower(), "weights_sha256": config.weights_sha256}
    cell = f"seed{config.seed}"
    if config.pair is not None:  # a student: which teacher it learnt from
        tags.update(pair=config.pair, teacher_weights_sha256=config["teacher"]["sha256"],
                    teacher_seed=config.teacher_seed)
        cell = f"teacher{config.teacher_seed}-{cell}"
    with _tracked(f"evaluate-{method}-{cell}", "evaluate", tags, track) as tracker:
        test = dataset.split("test")
        metrics = accuracy(model.to(target), test, actual.num_classes, target, batch_size)
        if isinstance(model, DeconfoundedStudent):
            # The same trained head with F(z) at its prior expectation (repro/kdci/model.py): what the
            # sample-specific use of the confounders adds, with nothing else removed.
            model.intervention_enabled = False
            off = accuracy(model, test, actual.num_classes, target, batch_size)
            model.intervention_enabled = True
            metrics.update({"intervention_off_top1": off["top1"], "intervention_off_top5": off["top5"]})
            tracker.log_metrics({"test/intervention_off_top1": off["top1"]})
        metrics.update({"model": str(model_dir), "role": config.get("role"), "method": method,
                        "network": config.network, "seed": config.seed})
        if config.pair is not None:
            metrics["teacher_seed"] = config.teacher_seed
        write_metrics(metrics_path, metrics)
        _tag_metrics_file(tracker, metrics_path)
        tracker.log_metrics({"test/top1": metrics["top1"], "test/top5": metrics["top5"]})
        tracker.log_artifact(metrics_path)
        tracker.log_artifact(Path(model_dir) / artefact.CONFIG_FILE)
    print(f"{model_dir}: test top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}% -> {metrics_path}")
    return metrics
