"""The model card (``README.md``) of a published artefact.

YAML front matter in the Hub's format (license, datasets, tags, library_name, ``model-index`` with
the test accuracy) plus our own ``checksums`` (sha256 of every other file in the repository, checked
on pull); then a description, the results table from the run's metrics files (never typed in), how to
load it, the training configuration and the paper's citation.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from repro.artefact import ArtefactRecord

CARD_FILE, METRICS_FILE = "README.md", "metrics.json"
CITATION = """@inproceedings{wang2024kdci,
  title     = {De-confounded Data-free Knowledge Distillation for Handling Distribution Shifts},
  author    = {Wang, Yuzheng and Yang, Dingkang and Chen, Zhaoyu and Liu, Yang and Liu, Siao and
               Zhang, Wenqiang and Zhang, Lihua and Qi, Lizhe},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}"""
# Hub dataset ids of the datasets we train on (the digits bundle has no Hub dataset: named as is).
HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100", "tiny_imagenet": "zh-plus/tiny-imagenet",
                "imagenet": "ILSVRC/imagenet-1k", "digits": "scikit-learn/digits"}


def _front_matter(repo_id: str, config: ArtefactRecord, metrics: dict[str, Any], checksums: dict[str, str]) -> dict:
    data = config["data"]["name"]
    tags = ["data-free-knowledge-distillation", "knowledge-distillation", "pytorch", "safetensors", "kdci-repro"]
    if config.role == "student":
        tags.append(config.base_method)
        tags += ["kdci", "causal-inference"] if config.is_kdci else ["kdci-baseline"]
    else:
        tags.append("teacher")
    return {
        "license": "apache-2.0",
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "datasets": [HUB_DATASETS.get(data, data)],
        "tags": tags,
        "model-index": [{
            "name": repo_id.split("/")[-1],
            "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"type": HUB_DATASETS.get(data, data), "name": data, "split": "test"},
                "metrics": [{"type": "accuracy", "value": round(float(metrics["top1"]), 2), "name": "Top-1 accuracy"},
                            {"type": "accuracy", "value": round(float(metrics["top5"]), 2), "name": "Top-5 accuracy"}],
            }],
        }],
        "checksums": dict(sorted(checksums.items())),
    }


def read_card_checksums(text: str) -> dict[str, str]:
    """The ``checksums`` mapping of a card's front matter ({} when there is none)."""
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    sums = meta.get("checksums", {}) if isinstance(meta, dict) else {}
    return {str(k): str(v) for k, v in sums.items()} if isinstance(sums, dict) else {}


def _results_table(config: ArtefactRecord, metrics: dict[str, Any], results: dict[str, Any] | None,
                   paired: dict[str, float]) -> list[str]:
    lines = ["## Results", "", f"Top-1 / top-5 of this model on the {config['data']['name']} test split "
             f"({metrics.get('samples', 'all')} images): **{metrics['top1']:.2f}% / {metrics['top5']:.2f}%**."]
    if "intervention_off_top1" in metrics:
        lines.append(f"With the intervention switched off (the same head, F(z) at its prior expectation): "
                     f"{metrics['intervention_off_top1']:.2f}%.")
    if config.role != "student":
        return lines + [""]
    base = config.base_method
    if paired:
        lines += ["", f"The same seed ({config.seed}), baseline vs KDCI (paired: same generator "
                  "initialisation and data order):", "", "| student | top-1 (%) |", "|---|---|"]
        lines += [f"| {base}{' + KDCI' if label == 'kdci' else ''} | {value:.2f} |" for label, value in paired.items()]
    row = next((r for r in (results or {}).get("rows", []) if r.get("method") == base), None)
    if row:
        ci = row.get("delta_ci95")
        lines += ["", f"The whole run (seeds {row['seeds']}; `reports/results.md` of the pipeline):", "",
                  "| | top-1 (%) mean ± std |", "|---|---|",
                  f"| teacher | {results['teacher_top1']:.2f} |",
                  f"| {base} | {row['baseline_mean']:.2f} ± {row['baseline_std']:.2f} |",
                  f"| {base} + KDCI | {row['kdci_mean']:.2f} ± {row['kdci_std']:.2f} |",
                  f"| Δ (paired) | {row['delta']:+.2f}" + (f" [95% CI {ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "") + " |"]
    return lines + [""]


def render_card(repo_id: str, config: ArtefactRecord, metrics: dict[str, Any], results: dict[str, Any] | None,
                checksums: dict[str, str], paired: dict[str, float]) -> str:
    front = yaml.safe_dump(_front_matter(repo_id, config, metrics, checksums), sort_keys=False)
    method, arch = config.method, config.network
    if config.role == "student":
        what = (f"A {arch} student distilled data-free from a {config.teacher_network} teacher with "
                f"**{config.base_method}**" + (" wrapped in **KDCI** (confounder dictionary + backdoor-adjusted prediction)"
                                               if config.is_kdci else " (the baseline, without KDCI)") + ".")
    else:
        what = f"The {arch} teacher the students of this run were distilled from, trained on the real training split."
    dictionary = ("\nThe confounder dictionary (`confounder_dictionary.safetensors`: prototypes, prior, PCA) is part of "
                  "the model: the KDCI student's prediction uses it.\n" if config.is_kdci else "")
    body = [
        f"# {repo_id.split('/')[-1]}", "",
        what,
        "Reproduction of *De-confounded Data-free Knowledge Distillation for Handling Distribution Shifts* (KDCI, "
        "CVPR 2024, [arXiv:2403.19539](https://arxiv.org/abs/2403.19539)) with kdci-repro; weights are safetensors only.",
        dictionary,
        *_results_table(config, metrics, results, paired),
        "## Use it", "",
        "```python",
        "from repro.registry.hub import load_student",
        f'model, config = load_student("{repo_id}")   # nn.Module in eval mode; expects normalised images',
        "```", "",
        "```bash",
        f"repro pull {repo_id}                                   # -> models/hub/{repo_id.replace('/', '--')}",
        f"repro evaluate --gin gin/experiments/<experiment>.gin --from-hub {repo_id}   # re-measure the top-1 above",
        "```", "",
        f"Input: {config['data']['channels']}x{config['data']['image_size']}x{config['data']['image_size']} images "
        f"in [0, 1], normalised with mean {list(config['data']['mean'])} and std {list(config['data']['std'])}; "
        f"{config['data']['num_classes']} classes.", "",
        "## Training configuration", "",
        f"Seed {config.get('seed')}. Method settings (`config.json` has all of them; `operative_config.gin` is the "
        "exact gin configuration of the run):", "",
        "```json", json.dumps(method, indent=2, sort_keys=True), "```", "",
        "## Citation", "", "```bibtex", CITATION, "```", "",
    ]
    return f"---\n{front}---\n\n" + "\n".join(body)
