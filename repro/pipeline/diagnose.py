"""The paper's motivating evidence, regenerated for any run: how shifted is the substitution data?

At the end of distillation the stage records the teacher's view of a sample of the method's
substitution data (``substitution_sample.safetensors``: teacher penultimate features [M, D] and
predicted classes [M]); this needs no real data. ``repro diagnose`` compares that record with the
teacher's view of the real test split: class proportions (substitution by teacher prediction, test by
label), their total-variation distance (the shift score), and the Frechet distance between the two
feature distributions (FID computed in the teacher's feature space rather than Inception's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gin
import numpy as np
import torch
from torch.utils.data import DataLoader

from repro import artefact
from repro.data.datasets import RealDataset
from repro.errors import UserError
from repro.methods.base import DFKDMethod

SAMPLE_FILE = "substitution_sample.safetensors"


@torch.no_grad()
def teacher_view(teacher: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher features [B, D] and predicted classes [B] of normalised images [B, C, H, W]."""
    logits, features = teacher(images, return_features=True)
    return features.float().cpu(), logits.argmax(dim=1).cpu()


def sample_substitution_data(method: DFKDMethod, teacher: torch.nn.Module, count: int) -> dict[str, torch.Tensor]:
    """Draw ``count`` substitution images from ``method`` and record the teacher's view of them.

    Runs under a forked RNG so recording never changes what a later stage would draw.
    """
    features, predictions, drawn = [], [], 0
    with torch.random.fork_rng(devices=[]):
        while drawn < count:
            batch = method.sample(min(512, count - drawn))
            f, p = teacher_view(teacher, batch.x)
            features.append(f)
            predictions.append(p)
            drawn += len(p)
    return {"features": torch.cat(features), "predictions": torch.cat(predictions)}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` for samples a [M, D], b [K, D]."""
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = root.real  # numerical noise gives tiny imaginary parts
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def proportions(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=num_classes).double() / max(len(labels), 1)


def real_reference(teacher: torch.nn.Module, dataset: RealDataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's features [N, D] of the real test split and the split's class proportions [K]."""
    features, labels = [], []
    for images, targets in DataLoader(dataset.split("test"), batch_size=batch_size):
        features.append(teacher_view(teacher, images)[0])
        labels.append(targets)
    return torch.cat(features), proportions(torch.cat(labels), dataset.spec.num_classes)


@gin.configurable(denylist=["teacher"])
def test_reference(teacher: torch.nn.Module, dataset: RealDataset = gin.REQUIRED) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`real_reference` of the configured dataset (``test_reference.dataset = %DATASET``)."""
    return real_reference(teacher, dataset)


def shift_row(model_dir: Path, real_features: torch.Tensor, real_share: torch.Tensor) -> dict[str, Any]:
    """Shift score (TV of class proportions) and Frechet distance of one student's substitution sample."""
    from safetensors.torch import load_file

    path = model_dir / SAMPLE_FILE
    if not path.exists():
        raise UserError(f"{path} is missing: re-run the distillation stage that wrote {model_dir}")
    sample = load_file(str(path))
    config = artefact.read_config(model_dir)
    share = proportions(sample["predictions"].long(), len(real_share))
    return {
        "model": str(model_dir), "method": config["method"]["name"], "seed": config.get("seed"),
        "teacher_seed": config.teacher_seed,
        "samples": int(len(sample["predictions"])),
        "class_proportions": [round(float(v), 5) for v in share],
        "shift_score_tv": float(0.5 * (share - real_share).abs().sum()),
        "frechet_distance": frechet_distance(sample["features"], real_features),
    }


@gin.configurable(denylist=["model_dirs", "out_dir", "teacher_dir"])
def diagnose(model_dirs: list[Path], out_dir: Path, teacher_dir: Path | None = None, *,
             dataset: RealDataset = gin.REQUIRED, batch_size: int = 512) -> dict[str, Any]:
    """Shift diagnostics of every model folder holding a substitution sample -> JSON, markdown, PNG.

    Each student is measured through the eyes of the teacher it learnt from (the ``teacher.path`` of
    its config.json), or of ``teacher_dir`` for all when given."""
    by_teacher: dict[Path, list[Path]] = {}
    for model_dir in map(Path, model_dirs):
        own = teacher_dir or Path(artefact.read_config(model_dir).get("teacher", {}).get("path", ""))
        by_teacher.setdefault(own, []).append(model_dir)
    spec = dataset.spec
    rows, floor, share = [], None, None
    for path, students in by_teacher.items():
        teacher, teacher_config = artefact.load_artefact(path)
        if spec.name != teacher_config.data.name:
            raise UserError(f"the teacher was trained on {teacher_config.data.name} but the dataset is {spec.name}: "
                            "diagnose with the same experiment gin")
        real_features, real_share = real_reference(teacher, dataset, batch_size)
        if floor is None:
            floor, share = _split_half_floor(real_features), real_share
        rows += [shift_row(model_dir, real_features, real_share) for model_dir in students]
    result = {"teachers": [str(path) for path in by_teacher], "rows": rows, "real_vs_real_frechet_floor": floor,
              "test_class_proportions": [round(float(v), 5) for v in share] if share is not None else []}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diagnostics.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out_dir / "diagnostics.md").write_text(render(result))
    _plot(result, out_dir / "class_proportions.png")
    print(render(result))
    return result


def _split_half_floor(features: torch.Tensor) -> float:
    """Frechet distance between two halves of the real test features: what 'no shift' looks like."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))
    half = len(features) // 2
    return frechet_distance(features[order[:half]], features[order[half:]])


def render(result: dict[str, Any]) -> str:
    lines = ["## Substitution-data shift", "",
             "Shift score: total-variation distance between the class proportions of the substitution data "
             "(teacher predictions) and of the real test split (labels); 0 = identical, 1 = disjoint. Frechet "
             "distance between teacher penultimate features of substitution and real test data "
             f"(two halves of the real test split give {result['real_vs_real_frechet_floor']:.3f}).", "",
             "| method | seeds | shift score (TV), mean ± std | Frechet distance, mean ± std |", "|---|---|---|---|"]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in result["rows"]:
        by_method.setdefault(row["method"], []).append(row)
    for method, rows in by_method.items():
        tv = np.array([r["shift_score_tv"] for r in rows])
        fd = np.array([r["frechet_distance"] for r in rows])
        lines.append(f"| {method} | {len(rows)} | {tv.mean():.3f} ± {tv.std(ddof=1) if len(tv) > 1 else 0:.3f} | "
                     f"{fd.mean():.3f} ± {fd.std(ddof=1) if len(fd) > 1 else 0:.3f} |")
    lines += ["", "Per student:", "", "| method | teacher seed | seed | samples | shift score (TV) | Frechet distance |",
              "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | {row.get('teacher_seed')} | {row['seed']} | {row['samples']} | "
                     f"{row['shift_score_tv']:.3f} | "
                     f"{row['frechet_distance']:.3f} |")
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: dict[str, list[list[float]]] = {}
    # KDCI students sample their baseline's data (paired seeds): plot the baselines when there are any.
    baselines = [row for row in result["rows"] if not row["method"].endswith("+kdci")] or result["rows"]
    for row in baselines:
        methods.setdefault(row["method"], []).append(row["class_proportions"])
    classes = len(result["test_class_proportions"])
    figure, axis = plt.subplots(figsize=(max(5.0, 0.5 * classes + 2), 3.2))
    width = 0.8 / (len(methods) + 1)
    positions = np.arange(classes)
    axis.bar(positions, result["test_class_proportions"], width, label="real test split", color="black")
    for index, (method, shares) in enumerate(sorted(methods.items()), start=1):
        axis.bar(positions + index * width, np.mean(shares, axis=0), width, label=method)
    axis.set_xlabel("class (substitution data: teacher prediction)")
    axis.set_ylabel("proportion")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
