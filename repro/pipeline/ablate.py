"""The ablation study of the paper's Sec. 4.4, regenerated: each KDCI component switched off in turn.

Variants are gin bindings applied on top of the KDCI configuration (``gin/ablations.gin``). Each
variant is distilled and evaluated for the methods ``ablation_variants.methods`` names (default: all of
params.yaml) and every seed, on the first teacher, in this process; the table compares it with full
KDCI and with the baseline of the same (teacher, seed) cell, from the pipeline's metrics files. It runs
with the study (``dvc exp run -S study=true``); otherwise the committed report is kept.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import gin

from repro import config
from repro.io import write_text_atomically
from repro.pipeline import cells, runset
from repro.pipeline.report import paired_interval


@gin.configurable
def ablation_variants(variants: dict[str, list[str]] = gin.REQUIRED) -> dict[str, list[str]]:
    """``{variant name: [gin binding, ...]}`` applied on top of full KDCI."""
    return variants


@gin.configurable
def ablation_methods(methods: list[str] | None = None) -> list[str] | None:
    """The methods ablated, of those params.yaml lists (None: all of them)."""
    return methods


def keep_or_explain(out: Path, title: str, how: str) -> str:
    """A study stage run with ``study: false``: keep the committed report (DVC persists it), or explain."""
    if out.exists():
        text = out.read_text()
        print(f"{out}: kept (the study is off; `dvc exp run -S study=true` regenerates it)")
        return text
    text = f"# {title}\n\nThe study is off (the default). {how}\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return text


def _top1(path: Path) -> float | None:
    return json.loads(path.read_text())["top1"] if path.exists() else None


def run_ablations(params_path: Path, teacher_dir: Path | None, metrics_dir: Path, out: Path,
                  gin_root: Path = Path("gin"), work_dir: Path = Path("models/ablations"), track: bool = True) -> str:
    """Run every variant (when ``study`` is true in params.yaml) and write the markdown table."""
    params = runset.read_params(params_path, gin_root)
    if not params.get("study", False):
        return keep_or_explain(out, "Ablations", "Run them with `dvc exp run -S study=true`: random lambda, random z, "
                               "no prior and other N, each against full KDCI, per seed.")
    teacher_seed = params["teacher_seeds"][0]
    teacher_dir = teacher_dir or runset.teacher_dir(teacher_seed)
    config.parse(runset.gin_files(params, extras=["ablations"], gin_root=gin_root))
    chosen = ablation_methods()
    variants = ablation_variants()
    methods = [m for m in params["methods"] if chosen is None or m in chosen]
    results: dict[str, dict[str, dict[int, float]]] = {}
    for method in methods:
        for variant, bindings in variants.items():
            for seed in params["seeds"]:
                metrics = cells.distill_and_evaluate(
                    params, method, seed, teacher_dir=teacher_dir, model_dir=work_dir / variant / method / f"seed{seed}",
                    metrics_path=metrics_dir / "ablations" / variant / f"{method}-seed{seed}.json", kdci=True,
                    extras=["ablations"], bindings=bindings, track=track, gin_root=gin_root)
                results.setdefault(method, {}).setdefault(variant, {})[int(seed)] = metrics["top1"]
    text = render(results, variants, metrics_dir, params["seeds"], teacher_seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, text)
    print(text)
    return text


def render(results: dict[str, dict[str, dict[int, float]]], variants: dict[str, list[str]], metrics_dir: Path,
           seeds: list[int], teacher_seed: int = 0) -> str:
    lines = ["# Ablations (paper Sec. 4.4)", "",
             f"Teacher seed {teacher_seed}. Top-1 (%) on the test split, mean ± std over seeds {seeds}; Δ are paired "
             "per-seed differences in points with 95% confidence intervals (Student t).", "",
             "| baseline | variant | bindings | top-1 | Δ vs full KDCI [95% CI] | Δ vs baseline [95% CI] |",
             "|---|---|---|---|---|---|"]
    for method, by_variant in results.items():
        cell = {s: runset.run_for(method, teacher_seed, s, metrics=metrics_dir) for s in seeds}
        full = {s: _top1(cell[s].metrics_path("kdci")) for s in seeds}
        base = {s: _top1(cell[s].metrics_path("students")) for s in seeds}
        reference = [full[s] for s in seeds if full[s] is not None]
        if reference:
            lines.append(f"| {method} | full KDCI | — | {statistics.fmean(reference):.2f} ± "
                         f"{statistics.stdev(reference) if len(reference) > 1 else 0:.2f} | — | "
                         f"{_delta([full[s] - base[s] for s in seeds if None not in (full[s], base[s])])} |")
        for variant, per_seed in by_variant.items():
            values = [per_seed[s] for s in seeds]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(
                f"| {method} | {variant} | `{'; '.join(variants[variant])}` | {statistics.fmean(values):.2f} ± {spread:.2f} | "
                f"{_delta([per_seed[s] - full[s] for s in seeds if full[s] is not None])} | "
                f"{_delta([per_seed[s] - base[s] for s in seeds if base[s] is not None])} |")
    return "\n".join(lines) + "\n"


def _delta(differences: list[float]) -> str:
    if not differences:
        return "—"
    interval = paired_interval(differences)
    mean = statistics.fmean(differences)
    return f"{mean:+.2f}" + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")
