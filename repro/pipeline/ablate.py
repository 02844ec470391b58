"""The ablation study of the paper's Sec. 4.4, regenerated: each KDCI component switched off in turn.

Variants are gin bindings applied on top of the KDCI configuration (``gin/ablations.gin``). Each
variant is distilled and evaluated for every method and seed, in this process; the table compares
it with full KDCI and with the baseline, paired by seed, from the pipeline's metrics files.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import gin

from repro import config
from repro.pipeline import cells, runset
from repro.pipeline.report import paired_interval


@gin.configurable
def ablation_variants(variants: dict[str, list[str]] = gin.REQUIRED) -> dict[str, list[str]]:
    """``{variant name: [gin binding, ...]}`` applied on top of full KDCI."""
    return variants


def _top1(path: Path) -> float | None:
    return json.loads(path.read_text())["top1"] if path.exists() else None


def run_ablations(params_path: Path, teacher_dir: Path, metrics_dir: Path, out: Path, gin_root: Path = Path("gin"),
                  work_dir: Path = Path("models/ablations"), track: bool = True) -> str:
    """Run every variant (when ``ablate`` is true in params.yaml) and write the markdown table."""
    params = runset.read_params(params_path, gin_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not params.get("ablate", False):
        text = ("# Ablations\n\nAblations are off (the default). Run them with `dvc exp run -S ablate=true`: "
                "random lambda, random z, no prior and other N, each against full KDCI, per seed.\n")
        out.write_text(text)
        print(text)
        return text
    config.parse(runset.gin_files(params, extras=["ablations"], gin_root=gin_root))
    variants = ablation_variants()
    results: dict[str, dict[str, dict[int, float]]] = {}
    for method in params["methods"]:
        for variant, bindings in variants.items():
            for seed in params["seeds"]:
                metrics = cells.distill_and_evaluate(
                    params, method, seed, teacher_dir=teacher_dir, model_dir=work_dir / variant / method / f"seed{seed}",
                    metrics_path=metrics_dir / "ablations" / variant / f"{method}-seed{seed}.json", kdci=True,
                    extras=["ablations"], bindings=bindings, track=track, gin_root=gin_root)
                results.setdefault(method, {}).setdefault(variant, {})[int(seed)] = metrics["top1"]
    text = render(results, variants, metrics_dir, params["seeds"])
    out.write_text(text)
    print(text)
    return text


def render(results: dict[str, dict[str, dict[int, float]]], variants: dict[str, list[str]], metrics_dir: Path,
           seeds: list[int]) -> str:
    lines = ["# Ablations (paper Sec. 4.4)", "",
             "Top-1 (%) on the test split, mean ± std over seeds; Δ are paired per-seed differences in points "
             "with 95% confidence intervals.", "",
             "| baseline | variant | bindings | top-1 | Δ vs full KDCI [95% CI] | Δ vs baseline [95% CI] |",
             "|---|---|---|---|---|---|"]
    for method, by_variant in results.items():
        full = {s: _top1(metrics_dir / "kdci" / f"{method}-seed{s}.json") for s in seeds}
        base = {s: _top1(metrics_dir / "students" / f"{method}-seed{s}.json") for s in seeds}
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
