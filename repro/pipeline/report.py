"""The paper-style results table, built only from the metrics JSON files the pipeline wrote.

Per baseline and seed, three students share teacher, generator initialisation and data order as far
as the method allows: the baseline, the baseline wrapped in KDCI, and KDCI's capacity-matched control
(the same head, a dictionary that carries no information about the confounder). The KDCI student is
also scored with its intervention off (the same head, F(z) at its prior expectation). Means and stds
over seeds, and paired per-seed deltas with 95% confidence intervals:

- KDCI - baseline: everything KDCI changes (head, dictionary, intervention);
- KDCI - control: what the confounder dictionary adds beyond the larger head;
- KDCI - intervention off: what the sample-specific intervention adds at test time, the trained
  student otherwise unchanged.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from repro.errors import UserError

FAMILIES = ("students", "kdci", "control")  # the metrics folders of the three arms
# (arm, its metrics folder, the key of its top-1 in that folder's files)
ARMS = (("baseline", "students", "top1"), ("kdci", "kdci", "top1"), ("control", "control", "top1"),
        ("kdci_intervention_off", "kdci", "intervention_off_top1"))
# (name in results.json, minuend arm, subtrahend arm): paired per-seed differences
DELTAS = (("delta", "kdci", "baseline"), ("control_delta", "control", "baseline"),
          ("kdci_vs_control", "kdci", "control"), ("intervention_delta", "kdci", "kdci_intervention_off"))


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
    """Teacher top-1 and one row per baseline, from ``metrics/{teacher.json,students/,kdci/,control/}``."""
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
        seeds = sorted(set().union(*(set(runs) for runs in families.values())))
        # {arm: {seed: top-1}} for the seeds whose file has that arm's number
        values = {arm: {s: float(families[folder][s][key]) for s in seeds
                        if s in families[folder] and key in families[folder][s]} for arm, folder, key in ARMS}
        row: dict[str, Any] = {"method": method, "seeds": seeds}
        for arm, by_seed in values.items():
            row[f"{arm}_top1"] = [by_seed[s] for s in seeds if s in by_seed]
            row[f"{arm}_mean"], row[f"{arm}_std"] = _mean_std(row[f"{arm}_top1"])
        row["per_seed"] = [{"seed": s, **{arm: by_seed.get(s) for arm, by_seed in values.items()}} for s in seeds]
        for name, first, second in DELTAS:
            paired = [s for s in seeds if s in values[first] and s in values[second]]
            differences = [values[first][s] - values[second][s] for s in paired]
            interval = paired_interval(differences)
            row[name] = statistics.fmean(differences) if differences else None
            row[f"{name}_ci95"] = list(interval) if interval else None
            if name == "delta":  # KDCI vs baseline: the pairs `repro compare` and the cards read
                row["paired_seeds"], row["paired_differences"] = paired, differences
        rows.append(row)
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
        "# Results: baseline vs +KDCI vs its capacity-matched control",
        "",
        f"Teacher ({results['teacher_network']}): top-1 **{results['teacher_top1']:.2f}%** on the test split.",
        "",
        "Top-1 (%) on the test split, mean ± std over seeds. Each Δ is the mean of paired per-seed differences in "
        "points with its 95% confidence interval (Student t); the students of a seed share teacher, generator "
        "initialisation and data order. What each column isolates:",
        "",
        "- **Δ KDCI − baseline**: everything KDCI changes (a larger head, the confounder dictionary, the intervention).",
        "- **control**: the same head and parameter count trained the same way, with a dictionary that carries no "
        "information about the confounder (random prototypes, uniform prior; `gin/kdci_control.gin`). "
        "**Δ KDCI − control** is what the confounder dictionary adds beyond the larger head.",
        "- **KDCI, intervention off**: the trained KDCI student with F(z) replaced by its prior expectation "
        "(uniform attention) inside the same head. **Δ KDCI − off** is what the sample-specific intervention "
        "adds at test time.",
        "",
        "| baseline | seeds | baseline | +KDCI | Δ KDCI − baseline | control | Δ KDCI − control | "
        "KDCI, intervention off | Δ KDCI − off |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['method']} | {len(row['seeds'])} | {_fmt(row['baseline_mean'], row['baseline_std'])} | "
            f"{_fmt(row['kdci_mean'], row['kdci_std'])} | {_delta(row['delta'], row['delta_ci95'])} | "
            f"{_fmt(row['control_mean'], row['control_std'])} | "
            f"{_delta(row['kdci_vs_control'], row['kdci_vs_control_ci95'])} | "
            f"{_fmt(row['kdci_intervention_off_mean'], row['kdci_intervention_off_std'])} | "
            f"{_delta(row['intervention_delta'], row['intervention_delta_ci95'])} |")
    arms = ("baseline", "kdci", "control", "kdci_intervention_off")
    lines += ["", "## Per seed", "", "| baseline | seed | baseline | +KDCI | control | KDCI, intervention off |",
              "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        for record in row["per_seed"]:
            cells = ["—" if record[arm] is None else f"{record[arm]:.2f}" for arm in arms]
            lines.append(f"| {row['method']} | {record['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "Built by `repro report` from `metrics/{teacher.json,students/,kdci/,control/}`; final-epoch "
              "students (no best-epoch selection on test data).", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: baseline, +KDCI and control (mean ± std) per baseline method, teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 2), 3.2))
    width = 0.27
    for offset, (key, label) in enumerate((("baseline", "baseline"), ("kdci", "+KDCI"), ("control", "control"))):
        means = [row[f"{key}_mean"] or 0.0 for row in rows]
        stds = [row[f"{key}_std"] or 0.0 for row in rows]
        axis.bar([i + (offset - 1) * width for i in range(len(rows))], means, width, yerr=stds, capsize=3, label=label)
    axis.axhline(results["teacher_top1"], color="black", linestyle="--", linewidth=1, label="teacher")
    axis.set_xticks(range(len(rows)), [row["method"] for row in rows])
    values = [v for row in rows for v in row["baseline_top1"] + row["kdci_top1"] + row["control_top1"]]
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
