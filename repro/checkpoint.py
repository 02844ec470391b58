"""Training state for resume, and final artefacts in Hub layout.

Resume state (local, never downloaded) is a torch file loaded with ``weights_only=True``; artefacts
that may travel (teachers, students) hold weights only as safetensors:

    <artefact>/config.json            architecture, data spec, method, seed, provenance, file digests
    <artefact>/model.safetensors      the weights
    <artefact>/operative_config.gin   gin's operative configuration of the run that wrote it

Every write goes to a temporary name first and is renamed into place, so a kill never leaves a
half-written file where a complete one is expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from repro.architecture import NetSpec
from repro.errors import UserError

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, GIN_FILE = "config.json", "model.safetensors", "operative_config.gin"
DICTIONARY_FILE = "confounder_dictionary.safetensors"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- resume state

def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (tensors, numbers, strings, nested dicts) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(state, partial)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path} ({exc.strerror or exc}): free disk space; "
                        "the previous checkpoint is kept") from None


def load_training_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state if ``path`` holds one written by the same configuration, else ``None``."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"checkpoint {path} is corrupt or not a repro checkpoint ({type(exc).__name__}): "
                        "delete it to start the stage over") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise UserError(f"checkpoint {path} is not a repro training checkpoint: delete it to start over")
    if state["fingerprint"] != fingerprint:
        print(f"note: {path} was written by a different configuration; starting this stage from scratch")
        return None
    return state


# ---------------------------------------------------------------- artefacts

def save_artefact(out_dir: Path, model: nn.Module, config: dict[str, Any], operative_config: str,
                  extra_files: dict[str, Callable[[Path], None]] | None = None) -> None:
    """Write ``model``, its records and ``extra_files`` (name -> writer) to ``out_dir``, replaced as a
    whole so it is never half-written."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(weights, str(partial / WEIGHTS_FILE), metadata={"format": "pt"})
        (partial / GIN_FILE).write_text(operative_config)
        for name, write in (extra_files or {}).items():
            write(partial / name)
        names = [WEIGHTS_FILE, GIN_FILE, *(extra_files or {})]
        record = {"format_version": FORMAT_VERSION, **config, "files": {name: sha256_of(partial / name) for name in names}}
        (partial / CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(partial, out_dir)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"could not write artefact {out_dir} ({exc.strerror or exc}): free disk space and re-run") from None


def read_config(artefact_dir: Path) -> dict[str, Any]:
    """The artefact's config.json, with a clear error when the artefact is missing or damaged."""
    artefact_dir = Path(artefact_dir)
    config_path = artefact_dir / CONFIG_FILE
    if not config_path.exists():
        raise UserError(f"no model artefact at {artefact_dir} ({CONFIG_FILE} missing): run the stage that "
                        "produces it first (e.g. `dvc repro teacher`) or fix the path")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_path} is not valid JSON (line {exc.lineno}): re-run the stage that wrote it") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{config_path} has format_version {config.get('format_version')!r}, expected "
                        f"{FORMAT_VERSION}: it was not written by this version of repro")
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
    data = config["data"]
    model = NetSpec.from_dict(config["architecture"]).build(num_classes=data["num_classes"], in_channels=data["channels"])
    if "intervention" in config:  # a KDCI student: backbone + intervention + its dictionary file
        from repro.kdci.model import DeconfoundedStudent

        model = DeconfoundedStudent(model, **config["intervention"])
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"weights in {weights_path} do not fit architecture {config['architecture']['name']!r} "
                        f"({first}): the config and weights come from different models") from None
    if "intervention" in config:
        from repro.kdci.dictionary import ConfounderDictionary

        settings = config["intervention"]
        model.set_dictionary(ConfounderDictionary.load(artefact_dir / DICTIONARY_FILE, settings["num_prototypes"],
                                                       settings["prototype_dim"]))
    return model.eval(), config
