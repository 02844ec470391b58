"""Accuracy of a classifier on a real split: top-1, top-5 and per class, as a metrics record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, num_classes: int, device: torch.device,
             batch_size: int = 512, num_workers: int = 0) -> dict[str, Any]:
    """Top-1/top-5 (in percent) and per-class top-1 of ``model`` on ``dataset``.

    ``model(x)`` must return logits ``[B, num_classes]``; the model is put in eval mode and restored.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    per_class_correct = torch.zeros(num_classes, dtype=torch.long, device=device)
    per_class_total = torch.zeros(num_classes, dtype=torch.long, device=device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        if logits.shape[-1] != num_classes:
            raise ValueError(f"model returned {logits.shape[-1]} classes, the data has {num_classes}")
        top = logits.topk(min(5, num_classes), dim=1).indices
        hit1 = top[:, 0] == labels
        correct1 += hit1.sum()
        correct5 += (top == labels[:, None]).any(dim=1).sum()
        per_class_total += torch.bincount(labels, minlength=num_classes)
        per_class_correct += torch.bincount(labels[hit1], minlength=num_classes)
    model.train(was_training)
    total = int(per_class_total.sum())
    if total == 0:
        raise ValueError("the evaluation split is empty")
    return {
        "top1": 100.0 * int(correct1) / total,
        "top5": 100.0 * int(correct5) / total,
        "per_class_top1": [round(100.0 * int(c) / max(int(t), 1), 4) for c, t in zip(per_class_correct, per_class_total)],
        "num_samples": total,
    }


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Write a DVC metrics JSON (sorted keys, so reruns give identical files), atomically: a failed
    write keeps the previous file."""
    from repro.io import write_json_atomically

    write_json_atomically(path, metrics)
