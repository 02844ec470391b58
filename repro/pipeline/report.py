"""The paper-style results table, built only from the metrics JSON files the pipeline wrote.

Per baseline: top-1 of the baseline student and of the KDCI student for each seed, their mean and
std, the KDCI student's backbone-only top-1 (intervention off), and the delta with a 95% confidence
interval of the *paired* per-seed differences (both students of a seed share teacher, generator
initialisation and data order as far as the method allows).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from repro.errors import UserError

FAMILIES = ("students", "kdci")


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read metrics file {path} ({exc}): re-run `dvc repro` to regenerate it") from None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_interval(differences: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean of paired differences (None below 2 pairs)."""
    if len(differences) < 2:
        return None
    from scipy.stats import t

    mean = statistics.fmean(differences)
    half = t.ppf(0.5 + level / 2, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean - half, mean + half


def _teacher_dataset(teacher: dict[str, Any]) -> str | None:
    """Dataset name from the teacher artefact's config.json (metrics files do not record it); None if unreadable."""
    try:
        return str(json.loads((Path(teacher["model"]) / "config.json").read_text())["data"]["name"])
    except (KeyError, TypeError, OSError, json.JSONDecodeError):
        return None


def collect(metrics_dir: Path) -> dict[str, Any]:
    """Teacher top-1 and one row per baseline, from ``metrics/{teacher.json,students/,kdci/}``."""
    teacher_path = metrics_dir / "teacher.json"
    if not teacher_path.exists():
        raise UserError(f"{teacher_path} not found: run the teacher and evaluate stages first (`dvc repro`)")
    teacher = _load(teacher_path)
    table: dict[str, dict[str, dict[int, dict]]] = {}
    for family in FAMILIES:
        for path in sorted((metrics_dir / family).glob("*-seed*.json")):
            method, _, seed = path.stem.rpartition("-seed")
            table.setdefault(method, {f: {} for f in FAMILIES})[family][int(seed)] = _load(path)
    rows = []
    for method, families in sorted(table.items()):
        baseline, kdci = families["students"], families["kdci"]
        seeds = sorted(set(baseline) | set(kdci))
        paired = [seed for seed in seeds if seed in baseline and seed in kdci]
        base_top1 = [float(baseline[s]["top1"]) for s in seeds if s in baseline]
        kdci_top1 = [float(kdci[s]["top1"]) for s in seeds if s in kdci]
        backbone_top1 = [float(kdci[s]["backbone_top1"]) for s in seeds if s in kdci and "backbone_top1" in kdci[s]]
        differences = [float(kdci[s]["top1"]) - float(baseline[s]["top1"]) for s in paired]
        backbone_differences = [float(kdci[s]["backbone_top1"]) - float(baseline[s]["top1"]) for s in paired
                                if "backbone_top1" in kdci[s]]
        (base_mean, base_std), (kdci_mean, kdci_std) = _mean_std(base_top1), _mean_std(kdci_top1)
        backbone_mean, backbone_std = _mean_std(backbone_top1)
        interval = paired_interval(differences)
        backbone_interval = paired_interval(backbone_differences)
        rows.append({
            "method": method,
            "seeds": seeds,
            "baseline_top1": base_top1,
            "kdci_top1": kdci_top1,
            "kdci_backbone_top1": backbone_top1,
            "baseline_mean": base_mean, "baseline_std": base_std,
            "kdci_mean": kdci_mean, "kdci_std": kdci_std,
            "kdci_backbone_mean": backbone_mean, "kdci_backbone_std": backbone_std,
            "paired_seeds": paired,
            "per_seed": [{"seed": s, "baseline": baseline.get(s, {}).get("top1"), "kdci": kdci.get(s, {}).get("top1"),
                          "kdci_backbone": kdci.get(s, {}).get("backbone_top1")} for s in seeds],
            "paired_differences": differences,
            "delta": statistics.fmean(differences) if differences else None,
            "delta_ci95": list(interval) if interval else None,
            "backbone_delta": statistics.fmean(backbone_differences) if backbone_differences else None,
            "backbone_delta_ci95": list(backbone_interval) if backbone_interval else None,
        })
    # Dataset and pair let `repro compare` put these rows beside the published cell of the same experiment.
    students = {m.get("network") for families in table.values() for runs in families.values() for m in runs.values()}
    return {"teacher_top1": float(teacher["top1"]), "teacher_network": teacher.get("network"), "rows": rows,
            "dataset": _teacher_dataset(teacher), "student_network": students.pop() if len(students) == 1 else None}


def _fmt(mean: float | None, std: float | None) -> str:
    return "—" if mean is None else f"{mean:.2f} ± {std:.2f}"


def _delta(delta: float | None, interval: list[float] | None) -> str:
    if delta is None:
        return "—"
    return f"{delta:+.2f}" + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Results: baseline vs +KDCI",
        "",
        f"Teacher ({results['teacher_network']}): top-1 **{results['teacher_top1']:.2f}%** on the test split.",
        "",
        "Top-1 (%) on the test split, mean ± std over seeds. Δ = KDCI − baseline in points, mean of the paired "
        "per-seed differences with its 95% confidence interval (Student t). *KDCI backbone* is the KDCI student "
        "with its intervention switched off (backbone logits only).",
        "",
        "| baseline | seeds | baseline | +KDCI | Δ [95% CI] | KDCI backbone | Δ backbone [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['method']} | {len(row['seeds'])} | {_fmt(row['baseline_mean'], row['baseline_std'])} | "
            f"{_fmt(row['kdci_mean'], row['kdci_std'])} | {_delta(row['delta'], row['delta_ci95'])} | "
            f"{_fmt(row['kdci_backbone_mean'], row['kdci_backbone_std'])} | "
            f"{_delta(row['backbone_delta'], row['backbone_delta_ci95'])} |")
    lines += ["", "## Per seed", "", "| baseline | seed | baseline | +KDCI | KDCI backbone |", "|---|---|---|---|---|"]
    for row in results["rows"]:
        for record in row["per_seed"]:
            cells = ["—" if record[key] is None else f"{record[key]:.2f}" for key in ("baseline", "kdci", "kdci_backbone")]
            lines.append(f"| {row['method']} | {record['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "Built by `repro report` from `metrics/{teacher.json,students/,kdci/}`; final-epoch students "
              "(no best-epoch selection on test data).", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: baseline vs +KDCI (mean ± std) per baseline method, teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 2), 3.2))
    width = 0.38
    for offset, (key, label) in enumerate((("baseline", "baseline"), ("kdci", "+KDCI"))):
        means = [row[f"{key}_mean"] or 0.0 for row in rows]
        stds = [row[f"{key}_std"] or 0.0 for row in rows]
        axis.bar([i + (offset - 0.5) * width for i in range(len(rows))], means, width, yerr=stds, capsize=3, label=label)
    axis.axhline(results["teacher_top1"], color="black", linestyle="--", linewidth=1, label="teacher")
    axis.set_xticks(range(len(rows)), [row["method"] for row in rows])
    values = [v for row in rows for v in row["baseline_top1"] + row["kdci_top1"]]
    if values:
        axis.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values + [results["teacher_top1"]]) + 2))
    axis.set_ylabel("test top-1 (%)")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(metrics_dir: Path, out_dir: Path, diagnostics: Path | None = None) -> dict[str, Any]:
    """Write results.{json,md,png}; ``diagnostics`` (a diagnostics.md) is appended as a section."""
    results = collect(metrics_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    markdown = render_markdown(results)
    if diagnostics is not None:
        if not diagnostics.exists():
            raise UserError(f"{diagnostics} not found: run `repro diagnose` (stage diagnose) first")
        markdown += "\n" + diagnostics.read_text()
    (out_dir / "results.md").write_text(markdown)
    plot(results, out_dir / "results.png")
    print(markdown)
    print(f"results: {out_dir / 'results.md'} (+ results.json, results.png); "
          "runs: `mlflow ui --backend-store-uri sqlite:///mlflow.db`")
    return results
