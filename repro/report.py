"""The results table, built only from the metrics JSON files the pipeline wrote."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from repro.errors import UserError


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read metrics file {path} ({exc}): re-run `dvc repro` to regenerate it") from None


def collect(metrics_dir: Path) -> dict[str, Any]:
    """Teacher top-1 and, per method, the per-seed student top-1 with mean and std."""
    teacher_path = metrics_dir / "teacher.json"
    if not teacher_path.exists():
        raise UserError(f"{teacher_path} not found: run the teacher and evaluate stages first (`dvc repro`)")
    teacher = _load(teacher_path)
    by_method: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((metrics_dir / "students").glob("*.json")):
        record = _load(path)
        by_method.setdefault(record["method"], []).append((int(record["seed"]), float(record["top1"])))
    rows = []
    for method, results in sorted(by_method.items()):
        results.sort()
        top1 = [value for _, value in results]
        rows.append({
            "method": method,
            "seeds": [seed for seed, _ in results],
            "top1": top1,
            "mean": statistics.fmean(top1),
            "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
        })
    return {"teacher_top1": float(teacher["top1"]), "teacher_network": teacher.get("network"), "rows": rows}


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Results",
        "",
        f"Teacher ({results['teacher_network']}): top-1 {results['teacher_top1']:.2f}% on the test split.",
        "",
        "| method | seeds | student top-1 per seed (%) | mean ± std (%) |",
        "|---|---|---|---|",
    ]
    for row in results["rows"]:
        per_seed = ", ".join(f"{value:.2f}" for value in row["top1"])
        lines.append(f"| {row['method']} | {len(row['seeds'])} | {per_seed} | {row['mean']:.2f} ± {row['std']:.2f} |")
    lines += ["", "Built by `repro report` from `metrics/*.json`; final-epoch students (no best-epoch selection)."]
    return "\n".join(lines) + "\n"


def write_report(metrics_dir: Path, out_dir: Path) -> dict[str, Any]:
    results = collect(metrics_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / "results.md").write_text(render_markdown(results))
    print(render_markdown(results))
    print(f"results: {out_dir / 'results.md'} and {out_dir / 'results.json'}; runs: `mlflow ui --backend-store-uri sqlite:///mlflow.db`")
    return results
