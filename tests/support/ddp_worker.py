"""Run under ``torchrun``: a few DAFL epochs through the Trainer; each rank writes what it holds.

Run by path from tests/test_distributed.py. Writes ``<out>/rank<k>.json`` with the sha256 of the student's
parameters, of DAFL's generator parameters, and the epoch metrics the Trainer computed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import gin
import torch


def _digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for name, parameter in sorted(module.named_parameters()):
        hasher.update(name.encode())
        hasher.update(parameter.detach().cpu().numpy().tobytes())
    return hasher.hexdigest()


class _Metrics:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append({k: float(v) for k, v in metrics.items() if k != "epoch_seconds"})

    def __getattr__(self, name):  # every other tracker call is a no-op
        return lambda *args, **kwargs: None


def main(repo: str, teacher_dir: str, out: str) -> None:
    import repro.configurables  # noqa: F401  (every gin name, as the CLI registers them)
    from repro import artefact, config
    from repro.data.datasets import DataSpec
    from repro.train import distributed
    from repro.train.device import seed_everything
    from repro.train.engine import Trainer

    distributed.init_from_env()
    root = Path(repo)
    config.parse([root / "gin/experiments/digits.gin", root / "gin/methods/dafl.gin", root / "gin/profiles/smoke.gin"],
                 ["DISTILL_EPOCHS = 2", "STUDENT_STEPS = 10"])
    teacher, teacher_config = artefact.load_artefact(Path(teacher_dir))
    spec = DataSpec.from_dict(teacher_config["data"])
    seed_everything(0)
    student = gin.query_parameter("distill.student").scoped_configurable_fn().build(
        num_classes=spec.num_classes, in_channels=spec.channels)
    method = gin.query_parameter("distill.method").scoped_configurable_fn()
    with gin.config_scope("student"):
        trainer = Trainer()
    metrics = _Metrics()
    model = trainer.fit(method, student, spec, teacher, tracker=metrics)
    record = {"rank": distributed.rank(), "world": distributed.world_size(), "student": _digest(model),
              "generator": _digest(method.generator), "metrics": metrics.rows}
    Path(out, f"rank{distributed.rank()}.json").write_text(json.dumps(record))
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
