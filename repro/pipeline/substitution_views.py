"""Pictures of a run's substitution data for its MLflow record: image grids and class proportions.

A reviewer sees what the student was trained on: a grid of substitution images every few epochs
(drawn with ``method.sample``, de-normalised with the teacher's data spec) and, at the end, the
teacher-predicted class histogram of the substitution data against the uniform distribution.
Nothing here writes to MLflow: the stage hands the files to its tracker.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from repro.data.datasets import DataSpec
from repro.methods.base import DFKDMethod
from repro.train.hooks import Tracker

GRID_FOLDER = "substitution"
GRID_IMAGES = 64


def denormalize(images: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Normalised images [B, C, H, W] -> pixel values [B, C, H, W] in [0, 1] (``x * std + mean``)."""
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)


def save_image_grid(images: torch.Tensor, spec: DataSpec, path: Path, columns: int = 8, min_side: int = 32) -> Path:
    """Save normalised images [B, C, H, W] as one PNG grid, ``columns`` wide; images smaller than
    ``min_side`` are enlarged by an integer factor (nearest neighbour, so pixels stay visible)."""
    from torchvision.utils import save_image

    pixels = denormalize(images.detach().float().cpu(), spec)
    factor = max(1, math.ceil(min_side / pixels.shape[-1]))
    if factor > 1:
        pixels = F.interpolate(pixels, scale_factor=factor, mode="nearest")
    save_image(pixels, str(path), nrow=columns, padding=2, pad_value=1.0)
    return path


def class_proportions(predictions: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Share of each teacher-predicted class [K] and its total-variation distance to uniform."""
    shares = torch.bincount(predictions.long().cpu(), minlength=num_classes).double() / max(len(predictions), 1)
    return {"proportions": shares.tolist(), "uniform": 1.0 / num_classes, "count": int(len(predictions)),
            "tv_to_uniform": float(0.5 * (shares - 1.0 / num_classes).abs().sum())}


def save_class_proportion_plot(summary: dict[str, Any], title: str, path: Path) -> Path:
    """Bar chart of :func:`class_proportions` with the uniform share as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = summary["proportions"]
    figure, axes = plt.subplots(figsize=(max(4.0, 0.45 * len(shares) + 1.5), 3.2))
    axes.bar(range(len(shares)), shares, color="#4C72B0", label="substitution data (teacher prediction)")
    axes.axhline(summary["uniform"], color="#C44E52", linestyle="--", label="uniform")
    axes.set_xticks(range(len(shares)))
    axes.set_xlabel("class")
    axes.set_ylabel("share of samples")
    axes.set_title(f"{title}\nn = {summary['count']}, total variation to uniform = {summary['tv_to_uniform']:.3f}",
                   fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


class SubstitutionGrids:
    """Per-epoch callback (``Trainer.fit(on_epoch=...)``): every ``every`` epochs and at the
    last one, log a grid of ``count`` images drawn from ``method.sample`` as
    ``substitution/epoch_NNN.png``.

    Drawing runs under a forked RNG, so a run with grids trains exactly like one without.
    """

    def __init__(self, method: DFKDMethod, spec: DataSpec, tracker: Tracker, every: int, last_epoch: int,
                 count: int = GRID_IMAGES) -> None:
        self.method, self.spec, self.tracker = method, spec, tracker
        self.every, self.last_epoch, self.count = every, last_epoch, count

    def __call__(self, epoch: int) -> None:
        if self.every <= 0 or self.tracker.run_id is None or (epoch % self.every and epoch != self.last_epoch):
            return
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            images = self.method.sample(self.count).x
        with tempfile.TemporaryDirectory() as folder:
            path = save_image_grid(images, self.spec, Path(folder) / f"epoch_{epoch:03d}.png")
            self.tracker.log_artifact(path, GRID_FOLDER)


def log_class_proportions(tracker: Tracker, predictions: torch.Tensor, num_classes: int, title: str) -> dict:
    """Log the class-proportion plot and its numbers (``substitution/class_proportions.{png,json}``) and
    the total-variation distance to uniform as metric ``substitution/class_tv_to_uniform``."""
    summary = class_proportions(predictions, num_classes)
    with tempfile.TemporaryDirectory() as folder:
        tracker.log_artifact(save_class_proportion_plot(summary, title, Path(folder) / "class_proportions.png"),
                             GRID_FOLDER)
        numbers = Path(folder) / "class_proportions.json"
        numbers.write_text(json.dumps(summary, indent=2) + "\n")
        tracker.log_artifact(numbers, GRID_FOLDER)
    tracker.log_metrics({"substitution/class_tv_to_uniform": summary["tv_to_uniform"]})
    return summary
