"""Resume state of a training run: local, never downloaded, never published.

A torch file loaded with ``weights_only=True``, written atomically and durably after every epoch.
Policy: a checkpoint written by a different configuration of the same stage (another fingerprint)
is ignored with a printed note and overwritten after the first epoch; a file that is not a readable
repro checkpoint (truncated, foreign, damaged) is refused, because something other than repro wrote
or damaged it and the user should look before it is deleted.
"""

from __future__ import annotations

import io as _bytes_io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repro import io
from repro.errors import UserError

# What the Trainer saves after every epoch; a checkpoint without one of these is refused.
STATE_KEYS = ("fingerprint", "epoch", "model", "optimizer", "method", "rng")


def capture_rng() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically and durably write ``state`` (tensors, numbers, strings, nested dicts) to ``path``."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = _bytes_io.BytesIO()  # serialise first: torch's zip writer hides a failed write behind its own error
        torch.save(state, buffer)
        io.write_durably(partial, buffer.getbuffer())
        os.replace(partial, path)
        io.fsync_path(path.parent)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was kept"
        raise io.write_failed(path, exc, kept) from None


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
    _check_finite(state["model"], path)
    return state


def _check_finite(model_state: Any, path: Path) -> None:
    """The Trainer stops before it would checkpoint a NaN, so a non-finite weight in the file is damage:
    resuming from it would end in a divergence message that blames the learning rate."""
    if not isinstance(model_state, dict):
        return  # the Trainer's load_state_dict refuses it with its own message
    for name, tensor in model_state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"checkpoint {path} holds NaN/inf in model tensor {name!r}: delete it to start the "
                            "stage over")
