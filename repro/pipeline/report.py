"""The paper-style results table, built only from the metrics JSON files the pipeline wrote.

Per baseline method, every (teacher seed, student seed) cell holds three students that share teacher,
generator initialisation and data order as far as the method allows: the baseline, the baseline wrapped
in KDCI, and KDCI's capacity-matched control (the same head, a dictionary that carries no information
about the confounder). The KDCI student is also scored with its intervention off (the same head, F(z)
at its prior expectation). Means and stds over all cells, and paired per-cell deltas:

- KDCI - baseline: everything KDCI changes (head, dictionary, intervention);
- KDCI - control: what the confounder dictionary adds beyond the larger head;
- KDCI - intervention off: what the sample-specific intervention adds at test time, the trained
  student otherwise unchanged.

The 95% interval of a delta respects how the cells were drawn: a hierarchical (cluster) bootstrap
that resamples teachers, then student seeds within each drawn teacher. One teacher's luck moves every
student it taught, so an interval over student seeds of one teacher is too narrow. Per-teacher rows
show each teacher's own mean delta with a Student-t interval over its seeds.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

from repro.errors import UserError
from repro.io import check_folder_destination, write_json_atomically, write_text_atomically

FAMILIES = ("students", "kdci", "control")  # the metrics folders of the three arms
# (arm, its metrics folder, the key of its top-1 in that folder's files)
ARMS = (("baseline", "students", "top1"), ("kdci", "kdci", "top1"), ("control", "control", "top1"),
        ("kdci_intervention_off", "kdci", "intervention_off_top1"))
# (name in results.json, minuend arm, subtrahend arm): paired per-cell differences
DELTAS = (("delta", "kdci", "baseline"), ("control_delta", "control", "baseline"),
          ("kdci_vs_control", "kdci", "control"), ("intervention_delta", "kdci", "kdci_intervention_off"))
BOOTSTRAP_DRAWS = 10000
Cell = tuple[int, int]  # (teacher seed, student seed)


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


def hierarchical_interval(by_teacher: dict[int, list[float]], level: float = 0.95, draws: int = BOOTSTRAP_DRAWS,
                          seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the mean difference under a two-stage (cluster) bootstrap for
    hierarchical data: draw teachers with replacement, then each drawn teacher's seeds with
    replacement. None below 2 cells. With few teachers the top stage has few distinct outcomes (2
    teachers: 3), which is the honest answer: the interval cannot be tighter than the teachers allow.

    Pure Python with a seeded generator and exact sums (``math.fsum``), so the interval is the same
    on every machine for the same inputs."""
    teachers = [values for _, values in sorted(by_teacher.items()) if values]
    if sum(len(v) for v in teachers) < 2:
        return None
    rng = random.Random(seed)
    means = []
    for _ in range(draws):
        drawn = [rng.choice(teachers) for _ in teachers]
        sample = [rng.choice(values) for values in drawn for _ in values]
        means.append(math.fsum(sample) / len(sample))
    means.sort()
    low = means[int(math.floor((1 - level) / 2 * draws))]
    high = means[min(draws - 1, int(math.ceil((1 + level) / 2 * draws)) - 1)]
    return low, high


def _teacher_dataset(teacher: dict[str, Any]) -> str | None:
    """Dataset name from the teacher artefact's config.json (metrics files do not record it); None if unreadable."""
    try:
        return str(json.loads((Path(teacher["model"]) / "config.json").read_text())["data"]["name"])
    except (KeyError, TypeError, OSError, json.JSONDecodeError):
        return None


def _teacher_platform(teacher: dict[str, Any]) -> dict[str, Any] | None:
    """The platform record of the teacher's run (CPU, kernels, threads): what `repro verify` compares."""
    try:
        return json.loads((Path(teacher["model"]) / "config.json").read_text()).get("platform")
    except (KeyError, TypeError, OSError, json.JSONDecodeError):
        return None


def _parse_cell(stem: str) -> tuple[str, int, int] | None:
    """``<method>-teacher<T>-seed<S>`` -> (method, T, S); None for another name."""
    head, _, seed = stem.rpartition("-seed")
    method, _, teacher = head.rpartition("-teacher")
    if not (method and teacher.isdigit() and seed.isdigit()):
        return None
    return method, int(teacher), int(seed)


def collect(metrics_dir: Path) -> dict[str, Any]:
    """Teachers' top-1 and one row per baseline, from ``metrics/{teachers/,students/,kdci/,control/}``."""
    teacher_paths = sorted((metrics_dir / "teachers").glob("seed*.json"), key=lambda p: int(p.stem[4:] or 0))
    if not teacher_paths:
        raise UserError(f"no {metrics_dir}/teachers/seed<T>.json: run the teacher and evaluate stages first (`dvc repro`)")
    teachers = [_load(path) for path in teacher_paths]
    table: dict[str, dict[str, dict[Cell, dict]]] = {}
    for family in FAMILIES:
        for path in sorted((metrics_dir / family).glob("*.json")):
            parsed = _parse_cell(path.stem)
            if parsed is None:
                raise UserError(f"{path}: not a <method>-teacher<T>-seed<S>.json metrics file; remove it or re-run "
                                "`dvc repro`")
            method, teacher_seed, seed = parsed
            table.setdefault(method, {f: {} for f in FAMILIES})[family][(teacher_seed, seed)] = _load(path)
    rows = [_row(method, families) for method, families in sorted(table.items())]
    # Dataset and pair let `repro compare` put these rows beside the published cell of the same experiment.
    students = {m.get("network") for families in table.values() for runs in families.values() for m in runs.values()}
    top1 = [float(t["top1"]) for t in teachers]
    return {"teacher_top1": statistics.fmean(top1), "teacher_network": teachers[0].get("network"),
            "teachers": [{"seed": t.get("seed"), "top1": float(t["top1"]), "network": t.get("network")} for t in teachers],
            "platform": _teacher_platform(teachers[0]), "rows": rows,
            "dataset": _teacher_dataset(teachers[0]), "student_network": students.pop() if len(students) == 1 else None}


def _row(method: str, families: dict[str, dict[Cell, dict]]) -> dict[str, Any]:
    cells = sorted(set().union(*(set(runs) for runs in families.values())))
    # {arm: {cell: top-1}} for the cells whose file has that arm's number
    values = {arm: {c: float(families[folder][c][key]) for c in cells
                    if c in families[folder] and key in families[folder][c]} for arm, folder, key in ARMS}
    teacher_seeds = sorted({t for t, _ in cells})
    row: dict[str, Any] = {"method": method, "teacher_seeds": teacher_seeds, "seeds": sorted({s for _, s in cells}),
                           "cells": [list(c) for c in cells]}
    for arm, by_cell in values.items():
        row[f"{arm}_top1"] = [by_cell[c] for c in cells if c in by_cell]
        row[f"{arm}_mean"], row[f"{arm}_std"] = _mean_std(row[f"{arm}_top1"])
    row["per_cell"] = [{"teacher_seed": t, "seed": s, **{arm: by_cell.get((t, s)) for arm, by_cell in values.items()}}
                       for t, s in cells]
    row["per_teacher"] = []
    for teacher in teacher_seeds:
        entry: dict[str, Any] = {"teacher_seed": teacher}
        for arm, by_cell in values.items():
            entry[f"{arm}_mean"], entry[f"{arm}_std"] = _mean_std([v for (t, _), v in by_cell.items() if t == teacher])
        row["per_teacher"].append(entry)
    for name, first, second in DELTAS:
        paired = [c for c in cells if c in values[first] and c in values[second]]
        differences = {c: values[first][c] - values[second][c] for c in paired}
        by_teacher: dict[int, list[float]] = {}
        for (teacher, _), difference in differences.items():
            by_teacher.setdefault(teacher, []).append(difference)
        interval = hierarchical_interval(by_teacher)
        row[name] = statistics.fmean(differences.values()) if differences else None
        row[f"{name}_ci95"] = list(interval) if interval else None
        for entry in row["per_teacher"]:
            own = by_teacher.get(entry["teacher_seed"], [])
            entry[name] = statistics.fmean(own) if own else None
            own_interval = paired_interval(own)
            entry[f"{name}_ci95"] = list(own_interval) if own_interval else None
        if name == "delta":  # KDCI vs baseline: the pairs `repro compare` and the cards read
            row["paired_cells"] = [list(c) for c in paired]
            row["paired_differences"] = [differences[c] for c in paired]
    return row


def _fmt(mean: float | None, std: float | None) -> str:
    return "—" if mean is None else f"{mean:.2f} ± {std:.2f}"


def _delta(delta: float | None, interval: list[float] | None) -> str:
    if delta is None:
        return "—"
    return f"{delta:+.2f}" + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")


def _teacher_line(results: dict[str, Any]) -> str:
    teachers = results.get("teachers") or [{"seed": 0, "top1": results["teacher_top1"]}]
    each = ", ".join(f"seed {t['seed']}: {t['top1']:.2f}%" for t in teachers)
    return f"Teachers ({results['teacher_network']}), test top-1: {each}."


def render_markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    teachers = sorted({t for row in rows for t in row["teacher_seeds"]})
    seeds = sorted({s for row in rows for s in row["seeds"]})
    lines = [
        "# Results: baseline vs +KDCI vs its capacity-matched control",
        "",
        _teacher_line(results),
        "",
        f"Top-1 (%) on the test split, mean ± std over the {len(teachers)} teacher(s) x {len(seeds)} student seed(s) "
        "of each method (cells). Each Δ is the mean of paired per-cell differences in points; its 95% interval is a "
        "hierarchical bootstrap (teachers, then seeds within each teacher; 10,000 draws), so a teacher's luck, which "
        "moves every student it taught, widens it. The students of a cell share teacher, generator initialisation "
        "and data order. What each column isolates:",
        "",
        "- **Δ KDCI − baseline**: everything KDCI changes (a larger head, the confounder dictionary, the intervention).",
        "- **control**: the same head and parameter count trained the same way, with a dictionary that carries no "
        "information about the confounder (random prototypes, uniform prior; `gin/kdci_control.gin`). "
        "**Δ KDCI − control** is what the confounder dictionary adds beyond the larger head.",
        "- **KDCI, intervention off**: the trained KDCI student with F(z) replaced by its prior expectation "
        "(uniform attention) inside the same head. **Δ KDCI − off** is what the sample-specific intervention "
        "adds at test time.",
        "",
        "| baseline | cells | baseline | +KDCI | Δ KDCI − baseline | control | Δ KDCI − control | "
        "KDCI, intervention off | Δ KDCI − off |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {len(row['cells'])} | {_fmt(row['baseline_mean'], row['baseline_std'])} | "
            f"{_fmt(row['kdci_mean'], row['kdci_std'])} | {_delta(row['delta'], row['delta_ci95'])} | "
            f"{_fmt(row['control_mean'], row['control_std'])} | "
            f"{_delta(row['kdci_vs_control'], row['kdci_vs_control_ci95'])} | "
            f"{_fmt(row['kdci_intervention_off_mean'], row['kdci_intervention_off_std'])} | "
            f"{_delta(row['intervention_delta'], row['intervention_delta_ci95'])} |")
    lines += ["", "## Per teacher", "", "Each teacher's own mean over its student seeds; Δ with a Student-t 95% "
              "interval over those seeds.", "",
              "| baseline | teacher seed | baseline | +KDCI | Δ KDCI − baseline | control | Δ KDCI − control | Δ KDCI − off |",
              "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for e in row["per_teacher"]:
            lines.append(f"| {row['method']} | {e['teacher_seed']} | {_fmt(e['baseline_mean'], e['baseline_std'])} | "
                         f"{_fmt(e['kdci_mean'], e['kdci_std'])} | {_delta(e['delta'], e['delta_ci95'])} | "
                         f"{_fmt(e['control_mean'], e['control_std'])} | "
                         f"{_delta(e['kdci_vs_control'], e['kdci_vs_control_ci95'])} | "
                         f"{_delta(e['intervention_delta'], e['intervention_delta_ci95'])} |")
    arms = ("baseline", "kdci", "control", "kdci_intervention_off")
    lines += ["", "## Per cell", "", "| baseline | teacher seed | seed | baseline | +KDCI | control | KDCI, intervention off |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        for record in row["per_cell"]:
            values = ["—" if record[arm] is None else f"{record[arm]:.2f}" for arm in arms]
            lines.append(f"| {row['method']} | {record['teacher_seed']} | {record['seed']} | " + " | ".join(values) + " |")
    platform = results.get("platform") or {}
    if platform:
        lines += ["", "Platform of these runs (the teacher's record; `repro verify` compares it): " +
                  ", ".join(f"{key} {platform[key]}" for key in sorted(platform)) + "."]
    lines += ["", "Built by `repro report` from `metrics/{teachers,students,kdci,control}/`; final-epoch "
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
    axis.axhline(results["teacher_top1"], color="black", linestyle="--", linewidth=1, label="teacher (mean)")
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
    """Write results.{json,md,png}; ``diagnostics`` (a diagnostics.md) is appended as a section.

    ``--out`` (a file, a path below a file, a read-only folder) and ``diagnostics`` are checked before
    anything is read or written."""
    check_folder_destination(out_dir, "--out")
    if diagnostics is not None and not diagnostics.is_file():
        raise UserError(f"{diagnostics} not found: run `repro diagnose` (stage diagnose) first")
    results = collect(metrics_dir)
    markdown = render_markdown(results)
    if diagnostics is not None:
        markdown += "\n" + diagnostics.read_text()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out_dir / "results.json", results)
    write_text_atomically(out_dir / "results.md", markdown)
    plot(results, out_dir / "results.png")
    print(markdown)
    print(f"results: {out_dir / 'results.md'} (+ results.json, results.png); "
          "runs: `mlflow ui --backend-store-uri sqlite:///mlflow.db`")
    return results
