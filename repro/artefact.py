"""The artefact: a model in Hugging Face Hub layout, and a typed record of what it holds.

    <artefact>/config.json            architecture, data spec, method, seed, provenance, file digests
    <artefact>/model.safetensors      the weights (never a pickle: artefacts travel)
    <artefact>/operative_config.gin   gin's operative configuration of the run that wrote it
    <artefact>/<extra files>          what a head needs (e.g. KDCI's confounder dictionary)

An artefact is replaced as a whole (written into a temporary folder, then renamed) through
:mod:`repro.io`. A *head* is a wrapper around the backbone that a method adds to the deployed
model; its settings are one top-level key of config.json. Heads register how they are rebuilt
(:func:`register_head`): this module knows no method, so KDCI registers itself when
:mod:`repro.kdci.model` is imported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from repro import io
from repro.data.datasets import DataSpec
from repro.errors import UserError
from repro.nets.registry import create

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, GIN_FILE = "config.json", "model.safetensors", "operative_config.gin"
# config.json's own keys; any other top-level key is the settings of a head (see register_head).
RECORD_KEYS = frozenset({"format_version", "role", "architecture", "data", "dataset", "method", "seed", "files",
                         "teacher", "imported_from", "platform"})
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtefactRecord(Mapping[str, Any]):
    """config.json, read and checked: typed views of what every consumer asks, and the mapping itself.

    The mapping is the file exactly as written (a rerun writes the same bytes); the properties are
    the one place its layout is interpreted.
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = dict(record)

    def __getitem__(self, key: str) -> Any:
        return self._record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._record)

    def __len__(self) -> int:
        return len(self._record)

    @property
    def role(self) -> str:
        """'teacher' or 'student' ('model' when unrecorded)."""
        return self._record.get("role") or "model"

    @property
    def network(self) -> str:
        return self._record["architecture"]["name"]

    @property
    def data(self) -> DataSpec:
        return DataSpec.from_dict(self._record["data"])

    @property
    def method(self) -> Mapping[str, Any]:
        return self._record.get("method", {})

    @property
    def method_name(self) -> str:
        return self.method.get("name", "unknown")

    @property
    def base_method(self) -> str:
        """The baseline's name: the method itself, or the one a wrapper (KDCI) was applied to."""
        return self.method.get("base", self.method).get("name", "unknown")

    @property
    def is_kdci(self) -> bool:
        """Wrapped in the KDCI head (the KDCI arm or its capacity-matched control)."""
        return "kdci" in self.method

    @property
    def arm(self) -> str:
        """'baseline', 'kdci' or 'control': the part of ``<base>+<arm>`` after the baseline's name."""
        return self.method_name.split("+", 1)[1] if self.is_kdci and "+" in self.method_name else "baseline"

    @property
    def seed(self) -> int | None:
        return self._record.get("seed")

    @property
    def weights_sha256(self) -> str:
        return self._record["files"][WEIGHTS_FILE]

    @property
    def teacher_network(self) -> str | None:
        teacher = self._record.get("teacher")
        return teacher["architecture"]["name"] if teacher else None

    @property
    def teacher_seed(self) -> int | None:
        """The seed of the teacher a student learnt from (None for a teacher, or a student of an imported one)."""
        teacher = self._record.get("teacher")
        return teacher.get("seed") if teacher else None

    @property
    def pair(self) -> str | None:
        """``teacher->student`` for a student, None for a teacher."""
        return f"{self.teacher_network}->{self.network}" if self.teacher_network else None

    @property
    def platform(self) -> Mapping[str, Any]:
        """The platform that computed it (CPU, instruction set, threads, library versions); {} if unrecorded."""
        return self._record.get("platform", {})

    @property
    def heads(self) -> dict[str, Any]:
        """``{head key: settings}`` of the heads this artefact's model carries."""
        return {key: value for key, value in self._record.items() if key not in RECORD_KEYS}


@dataclasses.dataclass(frozen=True)
class Head:
    """How to rebuild a wrapper a method adds around the backbone.

    ``wrap(backbone, settings)`` returns the module whose ``state_dict`` the weights file holds;
    ``attach(model, settings, folder)`` (optional) loads what the head keeps in its own files.
    """

    wrap: Callable[[nn.Module, Mapping[str, Any]], nn.Module]
    attach: Callable[[nn.Module, Mapping[str, Any], Path], None] | None = None


_HEADS: dict[str, Head] = {}


def register_head(key: str, head: Head) -> None:
    """Register the head stored under config.json's ``key`` (e.g. KDCI's ``intervention``)."""
    _HEADS[key] = head


def check_output_folder(out_dir: Path) -> None:
    """Refuse an output folder that holds something other than a repro artefact: replacing it would
    delete the user's files (``--out .`` or ``--out ~``). Absent, empty, or a previous artefact is fine."""
    out_dir = Path(out_dir)
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    try:
        previous = json.loads((out_dir / CONFIG_FILE).read_text()) if out_dir.is_dir() else None
    except (OSError, ValueError):
        previous = None
    if not (isinstance(previous, dict) and "format_version" in previous):
        what = "a folder that is not a repro artefact" if out_dir.is_dir() else "a file"
        raise UserError(f"output {out_dir} is {what}: refusing to replace it; choose another --out or remove it")


def save_artefact(out_dir: Path, model: nn.Module, config: dict[str, Any], operative_config: str,
                  extra_files: dict[str, Callable[[Path], None]] | None = None) -> None:
    """Write ``model``, its records and ``extra_files`` (name -> writer) to ``out_dir``, replaced as a
    whole so it is never half-written.

    Everything is written into ``.<name>.partial`` and fsync'ed; the previous artefact (if any) is
    moved to ``.<name>.previous`` for the instant between two renames and deleted after. A failed
    write leaves the previous artefact where it was."""
    from safetensors.torch import save as safetensors_bytes

    check_output_folder(out_dir)
    out_dir = Path(os.path.abspath(out_dir))  # `--out .` has no name to derive the temporary names from
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    previous = out_dir.with_name(f".{out_dir.name}.previous")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        io.write_durably(partial / WEIGHTS_FILE, safetensors_bytes(weights, metadata={"format": "pt"}))
        io.write_durably(partial / GIN_FILE, operative_config.encode("utf-8"))
        for name, write in (extra_files or {}).items():
            write(partial / name)
            io.fsync_path(partial / name)
        names = [WEIGHTS_FILE, GIN_FILE, *(extra_files or {})]
        record = {"format_version": FORMAT_VERSION, **config, "files": {name: io.sha256_of(partial / name) for name in names}}
        io.write_durably(partial / CONFIG_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        io.fsync_path(partial)
        shutil.rmtree(previous, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, previous)
        os.replace(partial, out_dir)
        io.fsync_path(out_dir.parent)
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if previous.exists() and not out_dir.exists():
            os.replace(previous, out_dir)
        if io.is_write_error(exc):
            kept = "the previous artefact is kept" if out_dir.exists() else "nothing was written"
            raise io.write_failed(out_dir, exc, kept) from None
        raise
    shutil.rmtree(previous, ignore_errors=True)


def read_config(artefact_dir: Path) -> ArtefactRecord:
    """The artefact's config.json, with a clear error when the artefact is missing or damaged."""
    artefact_dir = Path(artefact_dir)
    config_path = artefact_dir / CONFIG_FILE
    if not config_path.exists():
        previous = Path(os.path.abspath(artefact_dir))
        previous = previous.with_name(f".{previous.name}.previous")
        if (previous / CONFIG_FILE).exists():  # killed between the two renames of save_artefact
            raise UserError(f"no model artefact at {artefact_dir}, but the previous version is in {previous} "
                            f"(a replacement was interrupted): rename it to {artefact_dir} or re-run the stage")
        raise UserError(f"no model artefact at {artefact_dir} ({CONFIG_FILE} missing): run the stage that "
                        "produces it first (e.g. `dvc repro teacher`) or fix the path")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_path} is not valid JSON (line {exc.lineno}): re-run the stage that wrote it") from None
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        version = config.get("format_version") if isinstance(config, dict) else None
        raise UserError(f"{config_path} has format_version {version!r}, expected "
                        f"{FORMAT_VERSION}: it was not written by this version of repro")
    _check_record(config, config_path)
    _check_file_list(config["files"], config_path, artefact_dir)
    return ArtefactRecord(config)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(count: int, positive: bool) -> tuple[Callable[[Any], bool], str]:
    """A check for a list of ``count`` finite (positive) numbers, and how the message describes it."""
    def check(value: Any) -> bool:
        return (isinstance(value, list) and len(value) == count
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                        and (x > 0 or not positive) for x in value))
    return check, f"a list of {count} {'positive' if positive else 'finite'} number{'s' * (count != 1)} (one per channel)"


_OBJECT, _STRING = (lambda v: isinstance(v, dict), "an object"), (lambda v: isinstance(v, str), "a string")
_COUNT = (lambda v: _is_int(v) and v > 0, "a positive integer")
_SEED = (lambda v: v is None or _is_int(v), "an integer or null")
# Every field a consumer reads: (dotted name, (check, what is expected), required). A field below an
# optional one that is absent is not checked.
_FIELDS = (
    ("architecture", _OBJECT, True), ("architecture.name", _STRING, True), ("architecture.kwargs", _OBJECT, False),
    ("data", _OBJECT, True), ("data.name", _STRING, True), ("data.num_classes", _COUNT, True),
    ("data.channels", _COUNT, True), ("data.image_size", _COUNT, True), ("files", _OBJECT, True),
    ("role", (lambda v: v is None or v in ("teacher", "student"), "'teacher' or 'student'"), False),
    ("seed", _SEED, False), ("method", _OBJECT, False), ("method.name", _STRING, False), ("method.base", _OBJECT, False),
    ("dataset", _OBJECT, False), ("platform", _OBJECT, False), ("imported_from", _OBJECT, False),
    ("teacher", _OBJECT, False), ("teacher.architecture", _OBJECT, False), ("teacher.architecture.name", _STRING, False),
    ("teacher.sha256", _STRING, False), ("teacher.seed", _SEED, False),
)
_DAMAGED = "the artefact is damaged; re-run the stage that wrote it or pull it again"


def _field_error(config_path: Path, field: str, value: Any, expected: str) -> UserError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return UserError(f"{config_path} {field} is {shown}, expected {expected}: {_DAMAGED}")


def _check_record(config: dict[str, Any], config_path: Path) -> None:
    """Refuse a config.json whose fields have the wrong type, naming the first such field (a wrong
    type would otherwise surface as a traceback, or as a wrong value in a report, far from its cause)."""
    for field, (check, expected), required in _FIELDS:
        *parents, key = field.split(".")
        record: Any = config
        for parent in parents:
            record = record.get(parent) if isinstance(record, dict) else None
        if not isinstance(record, dict):
            continue  # an absent optional parent (a wrong-typed one was refused above)
        if key not in record:
            if required:
                raise UserError(f"{config_path} lacks a valid architecture, data or files record (no field "
                                f"{field!r}): {_DAMAGED}")
            continue
        if not check(record[key]):
            raise _field_error(config_path, f"field {field!r}", record[key], expected)
    channels = config["data"]["channels"]
    for key, positive in (("mean", False), ("std", True)):
        check, expected = _numbers(channels, positive)
        if not check(config["data"].get(key)):
            raise _field_error(config_path, f"field 'data.{key}'", config["data"].get(key), expected)


def _check_file_list(files: dict[str, Any], config_path: Path, artefact_dir: Path) -> None:
    """Every name config.json vouches for is a file directly inside the artefact, with a sha256 digest:
    the list decides what is hashed, loaded and published, so ``../`` or an absolute path in it
    would make repro read, or upload, a file from elsewhere."""
    for name, digest in files.items():
        if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise UserError(f"{config_path} field 'files' entry {name!r} is not a file name inside {artefact_dir}: "
                            "refusing an artefact that points outside itself; re-run the stage that wrote it or "
                            "pull it again from a source you trust")
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise _field_error(config_path, f"field 'files' entry {name!r}", digest,
                               "a sha256 digest (64 lowercase hex characters)")
    if WEIGHTS_FILE not in files:
        raise UserError(f"{config_path} field 'files' has no {WEIGHTS_FILE!r} digest: {_DAMAGED}")


def _check_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], weights_path: Path,
                   role: str) -> None:
    """Refuse weights of another dtype than the network's (float32 parameters; a silent cast would hide
    a foreign file) and NaN/inf weights (a teacher's would show up later as the student's divergence)."""
    retyped = sorted(name for name in expected if weights[name].dtype != expected[name].dtype)
    if retyped:
        name = retyped[0]
        raise UserError(f"{weights_path} holds {name!r} as {str(weights[name].dtype).removeprefix('torch.')}, "
                        f"expected {str(expected[name].dtype).removeprefix('torch.')} ({len(retyped)} tensors of "
                        "another dtype): the weights were converted or replaced; re-run the stage that wrote them")
    for name in sorted(weights):
        tensor = weights[name]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            fix = "re-train or re-import the teacher" if role == "teacher" else "re-run the stage that wrote it"
            raise UserError(f"{weights_path} holds NaN/inf in {name!r}: {fix}")


def load_artefact(artefact_dir: Path) -> tuple[nn.Module, ArtefactRecord]:
    """Rebuild the network described by ``artefact_dir`` (with its heads) and load its safetensors weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    artefact_dir = Path(artefact_dir)
    config = read_config(artefact_dir)
    weights_path = artefact_dir / WEIGHTS_FILE
    if not weights_path.exists():
        raise UserError(f"{weights_path} is missing: the artefact is incomplete; re-run the stage that wrote it")
    for name, expected in config.get("files", {}).items():
        path = artefact_dir / name
        if not path.exists():
            raise UserError(f"{path} is missing: the artefact is incomplete; re-run the stage or pull it again")
        if io.sha256_of(path) != expected:
            raise UserError(f"{path} does not match the sha256 in its config.json: the file is corrupt "
                            "or was replaced; re-run the stage or pull the artefact again")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights_path} is not a readable safetensors file ({exc}): re-run the stage") from None
    spec, architecture = DataSpec.from_dict(config["data"]), config["architecture"]
    try:
        model = create(architecture["name"], **{**dict(architecture.get("kwargs", {})),
                                                "num_classes": spec.num_classes, "in_channels": spec.channels})
    except (KeyError, TypeError, ValueError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise UserError(f"{artefact_dir / CONFIG_FILE} describes a network this version of repro cannot build "
                        f"({reason}): re-run the stage that wrote it or upgrade repro") from None
    heads = config.heads
    unknown = sorted(heads.keys() - _HEADS.keys())
    if unknown:
        raise UserError(f"{artefact_dir / CONFIG_FILE} has a {unknown[0]!r} head that no loaded module can rebuild: "
                        "load it through the repro CLI or import repro.kdci.model first")
    for key, settings in heads.items():
        try:
            model = _HEADS[key].wrap(model, settings)
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"{artefact_dir / CONFIG_FILE} has an invalid {key} record ({exc}): the artefact "
                            "is damaged; re-run the stage that wrote it or pull it again") from None
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape)
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise UserError(f"weights in {weights_path} do not fit architecture {architecture['name']!r} ({len(missing)} "
                        f"tensors missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. "
                        f"{example!r}): the config and weights come from different models") from None
    _check_weights(weights, expected, weights_path, config.role)
    model.load_state_dict(weights, strict=True)
    for key, settings in heads.items():
        if _HEADS[key].attach is not None:
            _HEADS[key].attach(model, settings, artefact_dir)
    return model.eval(), config
