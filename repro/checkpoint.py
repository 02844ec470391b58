"""Training state for resume, and final artefacts in Hub layout.

Resume state (local, never downloaded) is a torch file loaded with ``weights_only=True``; artefacts
that may travel (teachers, students) hold weights only as safetensors:

    <artefact>/config.json            architecture, data spec, method, seed, provenance, file digests
    <artefact>/model.safetensors      the weights
    <artefact>/operative_config.gin   gin's operative configuration of the run that wrote it

Every write goes to a temporary name first, is flushed and fsync'ed, and is renamed into place
(then the folder is fsync'ed), so neither a kill nor a power cut leaves a half-written file where a
complete one is expected. A write that fails (full disk, quota, permissions) ends with one line
naming the file, and the previous checkpoint or artefact is kept.

Resume policy: a checkpoint written by a different configuration of the same stage (another
fingerprint) is ignored with a printed note and overwritten after the first epoch; a file that is
not a readable repro checkpoint (truncated, foreign, damaged) is refused, because something other
than repro wrote or damaged it and the user should look before it is deleted.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import IO, Any, Callable

import torch
from torch import nn

from repro import nets
from repro.data import DataSpec
from repro.errors import UserError

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, GIN_FILE = "config.json", "model.safetensors", "operative_config.gin"
DICTIONARY_FILE = "confounder_dictionary.safetensors"
# What the Trainer saves after every epoch; a checkpoint without one of these is refused.
STATE_KEYS = ("fingerprint", "epoch", "model", "optimizer", "method", "rng")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- durable writes

def _open_for_writing(path: Path) -> IO[bytes]:
    """Every file this module writes is opened here (a test wraps it to simulate a full disk)."""
    return open(path, "wb")


def write_durably(path: Path, payload: bytes | memoryview) -> None:
    """Write ``payload`` to ``path`` and fsync it. Not atomic by itself: callers write to a
    temporary name or into a temporary folder and rename."""
    with _open_for_writing(path) as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    """fsync a file written by someone else, or a folder (so a rename in it survives a power cut)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. folders cannot be opened on Windows; nothing more can be done there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems refuse fsync on folders
    finally:
        os.close(descriptor)


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"os error (\d+)", str(exc))  # Rust writers (safetensors) report "(os error 28)"
    return int(found.group(1)) if found else None


def _write_failed(path: Path, exc: BaseException, kept: str) -> UserError:
    """The one-line error for a failed write of ``path``."""
    if _errno_of(exc) in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on device while writing {path}; free space and re-run ({kept})")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc).strip() or type(exc).__name__)
    return UserError(f"could not write {path} ({reason}); fix the cause and re-run ({kept})")


def _is_write_error(exc: BaseException) -> bool:
    from safetensors import SafetensorError

    return isinstance(exc, OSError) or (isinstance(exc, SafetensorError) and _errno_of(exc) is not None)


# ---------------------------------------------------------------- resume state

def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically and durably write ``state`` (tensors, numbers, strings, nested dicts) to ``path``."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialise first: torch's zip writer hides a failed write behind its own error
        torch.save(state, buffer)
        write_durably(partial, buffer.getbuffer())
        os.replace(partial, path)
        _fsync_path(path.parent)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was kept"
        raise _write_failed(path, exc, kept) from None


def load_training_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state if ``path`` holds one written by the same configuration, else ``None``.

    A leftover ``<path>.partial`` (a kill during a write) is never read."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"checkpoint {path} is corrupt or not a repro checkpoint ({type(exc).__name__}): "
                        "delete it to start the stage over") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise UserError(f"checkpoint {path} is not a repro training checkpoint: delete it to start the stage over")
    if state["fingerprint"] != fingerprint:
        print(f"note: ignoring checkpoint {path}: a different configuration or teacher wrote it; "
              "training starts from epoch 1 and overwrites it")
        return None
    missing = [key for key in STATE_KEYS if key not in state]
    if missing or not isinstance(state["epoch"], int) or state["epoch"] < 1:
        raise UserError(f"checkpoint {path} is incomplete (missing {', '.join(missing) or 'a valid epoch'}): "
                        "delete it to start the stage over")
    return state


# ---------------------------------------------------------------- artefacts

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
        write_durably(partial / WEIGHTS_FILE, safetensors_bytes(weights, metadata={"format": "pt"}))
        write_durably(partial / GIN_FILE, operative_config.encode("utf-8"))
        for name, write in (extra_files or {}).items():
            write(partial / name)
            _fsync_path(partial / name)
        names = [WEIGHTS_FILE, GIN_FILE, *(extra_files or {})]
        record = {"format_version": FORMAT_VERSION, **config, "files": {name: sha256_of(partial / name) for name in names}}
        write_durably(partial / CONFIG_FILE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        _fsync_path(partial)
        shutil.rmtree(previous, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, previous)
        os.replace(partial, out_dir)
        _fsync_path(out_dir.parent)
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if previous.exists() and not out_dir.exists():
            os.replace(previous, out_dir)
        if _is_write_error(exc):
            kept = "the previous artefact is kept" if out_dir.exists() else "nothing was written"
            raise _write_failed(out_dir, exc, kept) from None
        raise
    shutil.rmtree(previous, ignore_errors=True)


def read_config(artefact_dir: Path) -> dict[str, Any]:
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
    architecture, data, files = config.get("architecture"), config.get("data"), config.get("files")
    if not (isinstance(architecture, dict) and isinstance(architecture.get("name"), str) and isinstance(data, dict)
            and isinstance(files, dict)):
        raise UserError(f"{config_path} lacks a valid architecture, data or files record: the artefact is damaged; "
                        "re-run the stage that wrote it or pull it again")
    return config


def load_artefact(artefact_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network described by ``artefact_dir`` and load its safetensors weights."""
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
        if sha256_of(path) != expected:
            raise UserError(f"{path} does not match the sha256 in its config.json: the file is corrupt "
                            "or was replaced; re-run the stage or pull the artefact again")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights_path} is not a readable safetensors file ({exc}): re-run the stage") from None
    spec, architecture = DataSpec.from_dict(config["data"]), config["architecture"]
    try:
        model = nets.create(architecture["name"], **{**dict(architecture.get("kwargs", {})),
                                                     "num_classes": spec.num_classes, "in_channels": spec.channels})
    except (KeyError, TypeError, ValueError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise UserError(f"{artefact_dir / CONFIG_FILE} describes a network this version of repro cannot build "
                        f"({reason}): re-run the stage that wrote it or upgrade repro") from None
    if "intervention" in config:  # a KDCI student: backbone + intervention + its dictionary file
        from repro.kdci.model import DeconfoundedStudent

        try:
            model = DeconfoundedStudent(model, **config["intervention"])
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"{artefact_dir / CONFIG_FILE} has an invalid intervention record ({exc}): the artefact "
                            "is damaged; re-run the kdci stage or pull it again") from None
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape)
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise UserError(f"weights in {weights_path} do not fit architecture {architecture['name']!r} ({len(missing)} "
                        f"tensors missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. "
                        f"{example!r}): the config and weights come from different models") from None
    model.load_state_dict(weights, strict=True)
    if "intervention" in config:
        from repro.kdci.dictionary import ConfounderDictionary

        settings = config["intervention"]
        model.set_dictionary(ConfounderDictionary.load(artefact_dir / DICTIONARY_FILE, settings["num_prototypes"],
                                                       settings["prototype_dim"]))
    return model.eval(), config
