"""``repro import-teacher``: a zju-vipa CMI / Fast-Datafree pretrained teacher as a repro artefact.

The CIFAR benchmark of the DFKD papers (CMI, Fast, KDCI) starts from the teachers that zju-vipa
publishes (``cifar10_resnet34.pth``, ``cifar100_wrn40_2.pth``, ...). Their training script
(zju-vipa/CMI ``train_scratch.py``) saves ``{'state_dict', 'best_acc1', 'epoch', 'optimizer',
'scheduler'}``; ``model.state_dict()`` carries a ``module.`` prefix when the model was wrapped in
DataParallel. This module reads such a file with ``torch.load(weights_only=True)`` only, renames
its keys to our networks' names by an explicit rule per architecture family, checks that every key
and shape fits, measures test top-1 against the figure the benchmark reports, and writes the same
artefact folder ``repro train-teacher`` writes (``artefact.save_artefact``), so ``repro distill
--teacher`` and ``repro publish --model`` take it unchanged.

Key names were read from zju-vipa/CMI and zju-vipa/Fast-Datafree (identical files in both):
``datafree/models/classifiers/resnet.py`` (taken from huawei-noah DAFL), ``wresnet.py`` (from
polo5/ZeroShotKnowledgeTransfer) and ``vgg.py`` (from HobbitLong/RepDistiller); the model names from
their ``registry.py`` ``MODEL_DICT``, where ``vgg11`` is that file's ``vgg11_bn`` -- our ``vgg11_bn``.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import gin
import torch
from torch import nn

from repro import artefact, io
from repro.data.datasets import RealDataset
from repro.errors import UserError
from repro.nets.spec import NetSpec
from repro.train.device import platform_record, resolve_device
from repro.train.evaluate import accuracy, write_metrics

# Teacher top-1 (%) on the test split as reported by the benchmark (zju-vipa/CMI README, "T. Scratch"
# row of the CIFAR-10 and CIFAR-100 tables; the same figures in Fast-Datafree's README; their vgg11 is
# our vgg11_bn).
EXPECTED_TOP1: dict[tuple[str, str], float] = {
    ("cifar10", "resnet34"): 95.70, ("cifar10", "vgg11_bn"): 92.25, ("cifar10", "wrn40_2"): 94.87,
    ("cifar100", "resnet34"): 78.05, ("cifar100", "vgg11_bn"): 71.32, ("cifar100", "wrn40_2"): 75.83,
}
DEFAULT_TOLERANCE = 2.0  # points of top-1 an import may fall short of the expected figure
# --dataset -> (gin data file, the configurable whose ``root`` --data-root binds).
DATASETS: dict[str, tuple[str, str]] = {"cifar10": ("data/cifar10.gin", "CIFAR10"),
                                         "cifar100": ("data/cifar100.gin", "CIFAR100")}
_GIN_DIR = Path(__file__).resolve().parents[2] / "gin"  # the project's gin/, beside repro/
_DATA_PARALLEL_PREFIX = "module."
_SHOWN = 3  # how many offending keys an error line names


# ---------------------------------------------------------------- key mapping per family

@dataclasses.dataclass(frozen=True)
class KeyMapping:
    """A family's renaming: ``rename(source_key) -> our key`` (None: no counterpart), plus the rules
    in words for the artefact's record."""

    family: str
    rules: tuple[str, ...]
    rename: Callable[[str], str | None]


def _resnet_mapping(model: nn.Module) -> KeyMapping:
    """zju-vipa CIFAR ResNet (resnet.py, from DAFL): ``layer{1-4}.{i}`` stages of BasicBlocks and a
    ``linear`` head; ours keeps one flat ``layers`` Sequential and calls the head ``classifier``."""
    # Stage boundaries come from the target: a stage is a run of blocks of one width (64/128/256/512).
    widths = [block.bn2.num_features for block in model.layers]
    offsets, stage_index = {}, 0
    for index, width in enumerate(widths):
        if index == 0 or width != widths[index - 1]:
            stage_index += 1
            offsets[stage_index] = index
    layer = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")

    def rename(key: str) -> str | None:
        match = layer.match(key)
        if match:
            stage, block, rest = int(match[1]), int(match[2]), match[3]
            # Block names inside (conv1/bn1/conv2/bn2/shortcut.0/shortcut.1) are the same in both.
            return f"layers.{offsets[stage] + block}.{rest}" if stage in offsets else None
        if key.startswith("linear."):
            return "classifier." + key[len("linear."):]
        return key if key.split(".")[0] in ("conv1", "bn1") else None

    return KeyMapping("resnet", ("layer{s}.{i}.* -> layers.{offset(s)+i}.*", "linear.* -> classifier.*",
                                 "conv1.*, bn1.* unchanged"), rename)


def _wrn_mapping(model: nn.Module) -> KeyMapping:
    """zju-vipa WRN (wresnet.py, from ZSKT): ``block{1-3}.layer.{i}`` with ``convShortcut``, final
    ``bn1`` and ``fc``; ours keeps one flat ``blocks`` Sequential with ``shortcut``, ``bn``, ``classifier``.
    Both put the projection shortcut on the pre-activated input and the identity on the raw input."""
    per_group = len(model.blocks) // 3  # (depth - 4) / 6 blocks in each of the three groups
    block = re.compile(r"^block([1-3])\.layer\.(\d+)\.(.+)$")

    def rename(key: str) -> str | None:
        match = block.match(key)
        if match:
            group, index, rest = int(match[1]), int(match[2]), match[3]
            if index >= per_group:
                return None
            rest = "shortcut." + rest[len("convShortcut."):] if rest.startswith("convShortcut.") else rest
            return f"blocks.{(group - 1) * per_group + index}.{rest}"
        if key.startswith("bn1."):
            return "bn." + key[len("bn1."):]
        if key.startswith("fc."):
            return "classifier." + key[len("fc."):]
        return key if key.startswith("conv1.") else None

    return KeyMapping("wrn", ("block{g}.layer.{i}.* -> blocks.{(g-1)*n+i}.* (n blocks per group)",
                              "convShortcut -> shortcut", "bn1.* -> bn.*", "fc.* -> classifier.*",
                              "conv1.* unchanged"), rename)


def _vgg_mapping(model: nn.Module) -> KeyMapping:
    """zju-vipa VGG (vgg.py, from RepDistiller): ``block{0-4}`` Sequentials of conv (with bias), BN and
    ReLU with each block's last ReLU dropped (applied in ``forward``), and a ``classifier`` head; ours
    keeps the ReLU inside ``stages.{s}``. ReLUs hold no parameters, so convolution ``j`` of a stage is
    at index ``3j`` and its BatchNorm at ``3j + 1`` in both: only the stage's name changes. Pooling
    (max after blocks 0-2, after block 3 only at 64 px, global average after block 4) has no weights."""
    stages = len(model.stages)
    block = re.compile(r"^block(\d+)\.(\d+)\.(.+)$")

    def rename(key: str) -> str | None:
        match = block.match(key)
        if match:
            stage, index, rest = int(match[1]), int(match[2]), match[3]
            return f"stages.{stage}.{index}.{rest}" if stage < stages else None
        return key if key.startswith("classifier.") else None

    return KeyMapping("vgg", ("block{s}.{i}.* -> stages.{s}.{i}.*", "classifier.* unchanged"), rename)


FAMILIES: dict[str, Callable[[nn.Module], KeyMapping]] = {"resnet": _resnet_mapping, "wrn": _wrn_mapping,
                                                          "vgg": _vgg_mapping}
# zju-vipa MODEL_DICT names whose repro network has another name (their file names use theirs).
ZJU_ALIASES: dict[str, str] = {"vgg11": "vgg11_bn"}


def _family(arch: str, flag: str = "--arch") -> str:
    """The key-mapping family of ``arch`` (a repro network name), refusing what cannot be imported;
    ``flag`` names where the user set it (the option, or params.yaml's key)."""
    from repro import nets

    if arch in ZJU_ALIASES:
        ours = ZJU_ALIASES[arch]
        raise UserError(f"{flag} {arch!r} is zju-vipa's name for repro's {ours}: set {flag} {ours}")
    family = next((name for name in FAMILIES if arch.startswith(name)), None)
    if family is None or arch not in nets.list_networks():
        importable = ", ".join(n for n in nets.list_networks() if n.startswith(tuple(FAMILIES)))
        raise UserError(f"{flag} {arch!r} cannot be imported: give the repro network the file holds, one of {importable}")
    return family


# ---------------------------------------------------------------- reading the file

def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a zju-vipa checkpoint at ``path`` and what the file says about itself.

    Accepts ``{'state_dict': ..., ...}`` (zju-vipa ``train_scratch.py``) or a bare state dict, with or
    without DataParallel's ``module.`` prefix. Loads with ``weights_only=True`` only: a file holding
    any other Python object is refused, never unpickled.
    """
    if not path.is_file():
        raise UserError(f"no checkpoint file at {path}: check the path (zju-vipa names them e.g. cifar10_wrn40_2.pth)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise UserError(f"{path} holds a Python object ({found[1]}) besides tensors and was refused (repro loads "
                            "checkpoints with weights_only=True and never unpickles objects): in an environment you "
                            "trust, re-save only the weights, torch.save({'state_dict': model.state_dict()}, ...)") from None
        raise UserError(f"{path} is corrupt or not a PyTorch checkpoint (refused by the weights-only loader): "
                        "download it again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated zip, empty file, unreadable
        raise UserError(f"{path} is corrupt or not a PyTorch checkpoint ({type(exc).__name__}): download it again") from None
    info: dict[str, Any] = {"container": "bare state_dict"}
    state = loaded
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        state = loaded["state_dict"]
        info["container"] = "dict with 'state_dict'"
        for field in ("best_acc1", "best_acc", "epoch"):  # what zju-vipa's scripts record next to the weights
            if isinstance(loaded.get(field), (int, float)):
                info[f"reported_{field}"] = loaded[field]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        what = f"a dict with keys {sorted(map(str, loaded))[:_SHOWN]}" if isinstance(loaded, dict) else type(loaded).__name__
        raise UserError(f"{path} holds {what}, not a state dict: expected torch.save({{'state_dict': "
                        "model.state_dict(), ...}}) as zju-vipa's train_scratch.py writes, or a bare state_dict")
    if all(str(key).startswith(_DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(_DATA_PARALLEL_PREFIX):]: value for key, value in state.items()}
        info["stripped_prefix"] = _DATA_PARALLEL_PREFIX
    return state, info


def convert(source: dict[str, torch.Tensor], model: nn.Module, mapping: KeyMapping,
            label: str, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Our state dict for ``model`` from ``source`` renamed by ``mapping``, and the key map used.

    Every target key must be filled with a tensor of its shape and every source key used; BatchNorm's
    ``num_batches_tracked`` (a counter that does not affect evaluation) is exempt both ways. Anything
    else fails with one line naming the first few offending keys (``label`` names the file,
    ``arch`` the network asked for).
    """
    target = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    key_map: dict[str, str] = {}
    unused, wrong_shape = [], []
    for key, tensor in source.items():
        ours = mapping.rename(key)
        if ours is None or ours not in target:
            if not key.endswith("num_batches_tracked"):
                unused.append(key)
            continue
        if tuple(tensor.shape) != tuple(target[ours].shape):
            wrong_shape.append((key, ours, tuple(tensor.shape), tuple(target[ours].shape)))
            continue
        converted[ours] = tensor.detach().to(target[ours].dtype).clone()
        key_map[key] = ours
    misshapen = {ours for _, ours, _, _ in wrong_shape}
    missing = [key for key in target
               if key not in converted and key not in misshapen and not key.endswith("num_batches_tracked")]
    head_only = [(s, o, a, b) for s, o, a, b in wrong_shape if o.startswith("classifier.")]
    if head_only and head_only == wrong_shape and not missing and not unused:
        source_classes, our_classes = head_only[0][2][0], head_only[0][3][0]
        raise UserError(f"{label} is a {source_classes}-class network but the dataset has {our_classes} classes: "
                        "pass the --dataset it was trained on (zju-vipa names files <dataset>_<arch>.pth)")
    if missing or unused or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} of our keys unfilled (e.g. {', '.join(missing[:_SHOWN])})")
        if unused:
            problems.append(f"{len(unused)} file keys unused (e.g. {', '.join(unused[:_SHOWN])})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} shapes differ (e.g. " + ", ".join(
                f"{s} {list(a)} vs {o} {list(b)}" for s, o, a, b in wrong_shape[:_SHOWN]) + ")")
        raise UserError(f"{label} does not fit --arch {arch}: {'; '.join(problems)}: "
                        "pass the --arch the file was trained as (zju-vipa names files <dataset>_<arch>.pth)")
    for key in target:  # counters the file lacks keep their fresh value (0)
        converted.setdefault(key, target[key])
    return converted, key_map


# ---------------------------------------------------------------- the command

def expected_top1_for(dataset: str, arch: str, given: float | None, flag: str = "--expected-top1") -> float:
    """``given`` if set, else the benchmark's reported figure; one of them must exist (``flag``: where
    the user sets it)."""
    expected = given if given is not None else EXPECTED_TOP1.get((dataset, arch))
    if expected is None:
        raise UserError(f"no reported top-1 for {arch} on {dataset}: set {flag} (the teacher's known test "
                        "accuracy in percent) so the import can be checked")
    if not 0.0 <= expected <= 100.0:
        raise UserError(f"{flag} {expected} is not a percentage: give a value in [0, 100]")
    return float(expected)


def configure_dataset(name: str, data_root: str | None = None) -> None:
    """Parse ``gin/data/<name>.gin`` (torchvision CIFAR, root 'data') and point this stage at it."""
    if name not in DATASETS:
        raise UserError(f"--dataset {name!r} is not a zju-vipa CIFAR benchmark dataset: use one of {', '.join(DATASETS)}")
    from repro import config

    gin_file, configurable = DATASETS[name]
    bindings = ["import_teacher.dataset = %DATASET"]
    if data_root is not None:
        bindings.append(f"{configurable}.root = {str(data_root)!r}")
    config.parse([_GIN_DIR / gin_file], bindings)


@gin.configurable(denylist=["source_path", "arch", "out_dir", "expected_top1", "tolerance", "metrics_path", "seed"])
def import_teacher(source_path: Path, arch: str, out_dir: Path, expected_top1: float | None = None,
                   tolerance: float = DEFAULT_TOLERANCE, metrics_path: Path | None = None, seed: int | None = None, *,
                   dataset: RealDataset = gin.REQUIRED, batch_size: int = 512, device: str = "auto") -> dict[str, Any]:
    """Convert the zju-vipa checkpoint ``source_path`` into a teacher artefact of network ``arch``.

    ``dataset`` (gin: ``gin/data/<name>.gin``; tests pass any :class:`RealDataset`) gives the class
    count, normalisation and the test split the converted network is scored on. The import is refused,
    with nothing written, when that top-1 is more than ``tolerance`` points below ``expected_top1``
    (default: the benchmark's figure for ``arch`` on the dataset). ``seed``: the teacher seed whose
    place the import takes in the pipeline (``models/teachers/seed<T>``), recorded so its students and
    metrics name their teacher as a trained one's do. Returns the metrics record.
    """
    source_path, out_dir = Path(source_path), Path(out_dir)
    spec = dataset.spec
    family = _family(arch)
    expected = expected_top1_for(spec.name, arch, expected_top1)
    if tolerance < 0:
        raise UserError(f"--tolerance {tolerance} is negative: give the points of top-1 the import may lose (default 2.0)")
    source, info = read_state_dict(source_path)
    network = NetSpec(name=arch)
    model = network.build(num_classes=spec.num_classes, in_channels=spec.channels)
    mapping = FAMILIES[family](model)
    weights, key_map = convert(source, model, mapping, str(source_path), arch)
    model.load_state_dict(weights, strict=True)  # cannot fail: convert() filled every key with its shape

    target = resolve_device(device)
    metrics = accuracy(model.to(target), dataset.split("test"), spec.num_classes, target, batch_size)
    model.cpu()
    shortfall = expected - metrics["top1"]
    if shortfall > tolerance:
        raise UserError(f"{source_path} as {arch} scores {metrics['top1']:.2f}% top-1 on the {spec.name} test split, "
                        f"{shortfall:.2f} points below the expected {expected:.2f}% (tolerance {tolerance}); nothing "
                        "written: check --arch and --dataset, or pass --expected-top1 if that score is right")

    digest = io.sha256_of(source_path)
    imported = {"file": str(source_path), "sha256": digest, "format": "zju-vipa CMI / Fast-Datafree checkpoint",
                **info, "family": mapping.family, "mapping_rules": list(mapping.rules), "key_map": key_map,
                "measured_top1": metrics["top1"], "expected_top1": expected, "tolerance": tolerance}
    config = {"role": "teacher", "architecture": network.to_dict(), "data": spec.to_dict(),
              "platform": platform_record(target),
              "dataset": dataset.describe(), "method": {"name": "imported", "source": "zju-vipa"},
              "imported_from": imported, **({} if seed is None else {"seed": seed})}
    operative = (f"# Imported by `repro import-teacher` from {source_path.name} (sha256 {digest}); "
                 "not trained by repro.\n" + gin.operative_config_str())
    artefact.save_artefact(out_dir, model, config, operative)
    metrics.update({"model": str(out_dir), "role": "teacher", "network": arch, "imported_from": digest,
                    "expected_top1": expected, **({} if seed is None else {"seed": seed})})
    if metrics_path is not None:
        write_metrics(Path(metrics_path), metrics)
    print(f"imported {source_path} as {arch}: {spec.name} test top-1 {metrics['top1']:.2f}% (expected {expected:.2f}%, "
          f"tolerance {tolerance}) -> {out_dir}" + (f" (metrics: {metrics_path})" if metrics_path else ""))
    return metrics


# ---------------------------------------------------------------- as the pipeline's teacher (params.yaml)

def check_choice(params: dict[str, Any], dataset: str | None, where: Path) -> None:
    """What the teacher stage's import will need from params.yaml's ``teacher`` mapping (a network
    this module can fill, an expected top-1 to hold it to), checked by stage ``params`` before DVC
    removes the teacher that is there; ``dataset`` is the experiment's, ``where`` names params.yaml."""
    choice = params["teacher"]
    _family(choice["arch"], f"{where}: teacher.arch")
    expected_top1_for(dataset or "this experiment's dataset", choice["arch"], choice["expected_top1"],
                      f"teacher.expected_top1 in {where}")


def import_for_params(params: dict[str, Any], *, teacher_seed: int | None = None, extra_files: Sequence[Path] = (),
                      bindings: Sequence[str] = (), models: Path = Path("models"),
                      metrics: Path = Path("metrics")) -> dict[str, Any]:
    """Import params.yaml's ``teacher`` file into ``models/teachers/seed<T>`` (and its metrics into
    ``metrics/teachers/seed<T>.json``), T the one teacher seed, scored on the experiment's dataset."""
    from repro import config
    from repro.pipeline import runset
    from repro.train import distributed

    (seed,) = params["teacher_seeds"]  # runset.read_params allows one teacher seed with an import
    if teacher_seed is not None and teacher_seed != seed:
        raise UserError(f"--teacher-seed {teacher_seed} is not params.yaml's imported teacher (teacher_seeds: [{seed}]): "
                        f"drop --teacher-seed or pass {seed}")
    if not distributed.is_main():  # under a torchrun `launcher`, rank 0 imports (one writer); the others are done
        return {}
    config.parse([*runset.gin_files(params), *extra_files], ["import_teacher.dataset = %DATASET", *bindings])
    choice = params["teacher"]
    return import_teacher(Path(choice["file"]), choice["arch"], runset.teacher_dir(seed, models),
                          choice["expected_top1"], DEFAULT_TOLERANCE, runset.teacher_metrics(seed, metrics), seed)
