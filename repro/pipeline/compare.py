"""Our results beside the published numbers: the markdown of ``reports/paper_comparison.md``.

Two inputs, nothing else:

- ``reports/published_numbers.csv``: one row per published top-1 number, each with the document, table and URL it
  was read from (the file's comment lines describe the columns). ``origin`` says whose number it is: ``benchmark``
  (the zju-vipa CMI / Fast-Datafree tables the baselines come from) or ``paper`` (the KDCI paper). ``kind`` is
  ``accuracy`` (a top-1 value) or ``delta`` (KDCI minus baseline, in points).
- one or more ``results.json`` written by ``repro report``: per method, the baseline and KDCI students' top-1 per
  seed, for one experiment (dataset, teacher, student).

For each (dataset, teacher -> student, method) with a published number the report gives the published values with
their sources, ours (mean ± std over seeds, Δ = mean of the paired per-seed differences with its 95% interval) and
the difference ours - published. Runs of ours whose experiment no source covers get a section of their own.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from repro.errors import UserError
from repro.io import check_file_destination, write_text_atomically
from repro.pipeline.report import paired_interval

COLUMNS = ("dataset", "teacher", "student", "method", "kdci", "origin", "metric", "kind", "value", "source", "url",
           "note")
ORIGINS = ("benchmark", "paper")
KINDS = ("accuracy", "delta")
# Reference rows: not distillation methods; `teacher` is compared with our teacher, the others have no stage of ours.
REFERENCE_METHODS = ("teacher", "scratch", "kd")
METHOD_ORDER = (*REFERENCE_METHODS, "dafl", "zskt", "dfad", "deepinv", "dfq", "cmi", "fast2", "fast5", "fast",
                "mosaickd", "dfnd")
METHOD_NAMES = {"teacher": "Teacher", "scratch": "Student, real data", "kd": "KD, real data", "dafl": "DAFL",
                "zskt": "ZSKT", "dfad": "DFAD", "deepinv": "DeepInv", "dfq": "DFQ", "cmi": "CMI", "fast2": "Fast-2",
                "fast5": "Fast-5", "fast": "Fast-10", "mosaickd": "MosaicKD", "dfnd": "DFND"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny_imagenet": "Tiny-ImageNet",
                 "imagenet": "ImageNet", "digits": "digits (scikit-learn)"}
NETWORK_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "vgg11_bn": "VGG-11",
                 "wrn16_1": "WRN-16-1", "wrn16_2": "WRN-16-2", "wrn40_1": "WRN-40-1", "wrn40_2": "WRN-40-2"}
NOT_RUN = "not run"


@dataclass(frozen=True)
class Published:
    """One published number (a row of the published-numbers file)."""

    dataset: str
    teacher: str
    student: str
    method: str
    kdci: bool
    origin: str
    metric: str
    kind: str
    value: float
    source: str
    url: str
    note: str
    line: int


@dataclass(frozen=True)
class OurRun:
    """One method of one of our experiments: per-seed top-1 of the baseline and the KDCI student."""

    dataset: str
    teacher: str
    student: str
    method: str
    teacher_top1: float
    baseline: tuple[float, ...]
    kdci: tuple[float, ...]
    paired_differences: tuple[float, ...]
    results_file: Path

    @property
    def delta(self) -> float | None:
        """Mean of the paired per-seed differences KDCI - baseline (None without a pair)."""
        return statistics.fmean(self.paired_differences) if self.paired_differences else None


def _bool(text: str) -> bool | None:
    return {"true": True, "false": False}.get(text.strip().lower())


def read_published(path: Path) -> list[Published]:
    """Parse and check the published-numbers CSV (``#`` lines are comments).

    Raises:
        UserError: missing file, missing column, or a row without source/URL, with a bad value or out of range.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read published numbers {path} ({exc.strerror or exc}): "
                        "pass --published reports/published_numbers.csv") from None
    numbered = [(number, line) for number, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise UserError(f"{path} has no header and no rows: it needs the columns {', '.join(COLUMNS)}")
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in numbered)))
    missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}: its header must name {', '.join(COLUMNS)}")
    rows = []
    for (number, _), record in zip(numbered[1:], reader):
        where = f"{path}:{number}"
        cells = {column: (record.get(column) or "").strip() for column in COLUMNS}
        for column in ("dataset", "method", "metric", "source", "url"):
            if not cells[column]:
                raise UserError(f"{where}: empty {column!r}: every published number names its {column}")
        kdci = _bool(cells["kdci"])
        if kdci is None:
            raise UserError(f"{where}: kdci is {cells['kdci']!r}: write true or false")
        if cells["origin"] not in ORIGINS or cells["kind"] not in KINDS:
            raise UserError(f"{where}: origin {cells['origin']!r} / kind {cells['kind']!r}: origin is one of "
                            f"{', '.join(ORIGINS)}, kind one of {', '.join(KINDS)}")
        try:
            value = float(cells["value"])
        except ValueError:
            raise UserError(f"{where}: value {cells['value']!r} is not a number") from None
        low = 0.0 if cells["kind"] == "accuracy" else -100.0
        if not low <= value <= 100.0:
            raise UserError(f"{where}: {cells['kind']} {value} is outside [{low:g}, 100]: top-1 is in percent")
        if cells["kind"] == "accuracy" and not (cells["teacher"] and cells["student"]):
            raise UserError(f"{where}: an accuracy needs its teacher and student networks")
        rows.append(Published(cells["dataset"], cells["teacher"], cells["student"], cells["method"], kdci,
                              cells["origin"], cells["metric"], cells["kind"], value, cells["source"], cells["url"],
                              cells["note"], number))
    if not rows:
        raise UserError(f"{path} has a header but no published numbers")
    return rows


def find_results(paths: Sequence[Path]) -> list[Path]:
    """The results.json files named, or found under the folders named (sorted, each once)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(path.rglob("results.json"))
            if not inside:
                raise UserError(f"no results.json under {path}: run `repro report` (stage report) first")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} not found: pass results.json files (e.g. reports/results.json) or folders")
    return list(dict.fromkeys(found))


def _experiment_from_metrics(metrics_dir: Path, teacher_network: str | None) -> tuple[str | None, str | None]:
    """Dataset and student network of a results.json written before report.py recorded them."""
    try:
        teacher = json.loads(sorted((metrics_dir / "teachers").glob("seed*.json"))[0].read_text())
        dataset = json.loads((Path(teacher["model"]) / "config.json").read_text())["data"]["name"]
        if teacher.get("network") != teacher_network:
            return None, None  # these metrics belong to another experiment
        students = {json.loads(path.read_text()).get("network") for path in (metrics_dir / "students").glob("*.json")}
    except (KeyError, TypeError, OSError, IndexError, json.JSONDecodeError):
        return None, None
    return dataset, students.pop() if len(students) == 1 else None


def read_results(path: Path, metrics_dir: Path = Path("metrics")) -> list[OurRun]:
    """One OurRun per method of a ``repro report`` results.json.

    Dataset and student network come from the file (``dataset``, ``student_network``), or, for a file written
    before report.py recorded them, from ``metrics_dir`` (teacher artefact config, student metrics) when its teacher
    network matches.

    Raises:
        UserError: unreadable or malformed file, or an experiment that cannot be identified.
    """
    try:
        results = json.loads(path.read_text())
        teacher_top1, rows = float(results["teacher_top1"]), list(results["rows"])
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}): run `repro report` to write it") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is not a `repro report` results.json ({type(exc).__name__}: {exc}): "
                        "regenerate it with `repro report`") from None
    teacher = results.get("teacher_network")
    dataset, student = results.get("dataset"), results.get("student_network")
    if not (dataset and student):
        dataset, student = _experiment_from_metrics(metrics_dir, teacher)
    if not (dataset and teacher and student):
        raise UserError(f"{path} does not say its dataset and student network: re-run `repro report` (it records "
                        "them) or pass --metrics-dir with the metrics it was built from")
    runs = []
    for row in rows:
        try:
            runs.append(OurRun(str(dataset), str(teacher), str(student), str(row["method"]), teacher_top1,
                               tuple(map(float, row["baseline_top1"])), tuple(map(float, row["kdci_top1"])),
                               tuple(map(float, row.get("paired_differences") or ())), path))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: a row lacks {exc} or has a non-numeric top-1: regenerate it with "
                            "`repro report`") from None
    return runs


def _network(name: str) -> str:
    return NETWORK_NAMES.get(name, name)


def _pair(teacher: str, student: str) -> str:
    return f"{_network(teacher)} → {_network(student)}"


def _method(name: str) -> str:
    return METHOD_NAMES.get(name, name)


def _order(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return NOT_RUN
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f} (n={len(values)})"


def _delta(run: OurRun) -> str:
    if run.delta is None:
        return "—"
    interval = paired_interval(list(run.paired_differences))
    return f"{run.delta:+.2f}" + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")


class _Sources:
    """Numbers each distinct (source, url) in order of first use, for the footnote references."""

    def __init__(self) -> None:
        self.numbers: dict[tuple[str, str], int] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def register(self, row: Published) -> None:
        key = (row.source, row.url)
        self.numbers.setdefault(key, len(self.numbers) + 1)
        self.counts[key] = self.counts.get(key, 0) + 1

    def ref(self, row: Published) -> int:
        return self.numbers[(row.source, row.url)]


def _grouped(rows: Sequence[Published], sources: _Sources, offset: float | None = None) -> str:
    """Values (or ``offset - value`` differences) with their source references; equal values share one entry."""
    if not rows:
        return "—"
    groups: dict[float, set[int]] = {}
    for row in rows:
        groups.setdefault(row.value, set()).add(sources.ref(row))
    shown = {value: (f"{value:.2f}" if offset is None else f"{offset - value:+.2f}") for value in groups}
    return "; ".join(f"{shown[value]} [{','.join(map(str, sorted(refs)))}]" for value, refs in groups.items())


@dataclass(frozen=True)
class Cell:
    """Everything the report shows for one (dataset, teacher, student, method)."""

    benchmark: tuple[Published, ...]
    paper_baseline: tuple[Published, ...]
    paper_kdci: tuple[Published, ...]
    paper_delta: tuple[Published, ...]
    run: OurRun | None
    teacher_top1: float | None


def _ours_mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _cell_row(pair: str, method: str, cell: Cell, sources: _Sources) -> str:
    """One markdown table row; the difference columns are ours minus each published value."""
    run = cell.run
    if method == "teacher":
        ours = [NOT_RUN if cell.teacher_top1 is None else f"{cell.teacher_top1:.2f} (our teacher)", "—", "—"]
        ours_baseline = cell.teacher_top1
    elif method in REFERENCE_METHODS:
        ours, ours_baseline = ["no such stage", "—", "—"], None
    elif run is None:
        ours, ours_baseline = [NOT_RUN, NOT_RUN, NOT_RUN], None
    else:
        ours, ours_baseline = [_mean_std(run.baseline), _mean_std(run.kdci), _delta(run)], _ours_mean(run.baseline)
    paper = " / ".join(_grouped(rows, sources) for rows in (cell.paper_baseline, cell.paper_kdci, cell.paper_delta))
    versus_benchmark = _grouped(cell.benchmark, sources, ours_baseline) if ours_baseline is not None else "—"
    versus_paper = []
    if run is not None and method not in REFERENCE_METHODS:
        for label, rows, ours_value in (("baseline", cell.paper_baseline, ours_baseline),
                                        ("+KDCI", cell.paper_kdci, _ours_mean(run.kdci)),
                                        ("Δ", cell.paper_delta, run.delta)):
            if rows and ours_value is not None:
                versus_paper.append(f"{label} {_grouped(rows, sources, ours_value)}")
    return (f"| {pair} | {_method(method)} | {_grouped(cell.benchmark, sources)} | {paper} | "
            + " | ".join(ours) + f" | {versus_benchmark} | {'; '.join(versus_paper) or '—'} |")


def build_comparison(published: Sequence[Published], runs: Sequence[OurRun]) -> str:
    """The markdown report: published cells with ours beside them, the paper's pair-less effects, our other runs.

    Raises:
        UserError: two results files with the same (dataset, teacher, student, method).
    """
    ours: dict[tuple[str, str, str, str], OurRun] = {}
    for run in runs:
        key = (run.dataset, run.teacher, run.student, run.method)
        if key in ours:
            raise UserError(f"{run.results_file} and {ours[key].results_file} both hold {run.method} on "
                            f"{run.dataset} {_pair(run.teacher, run.student)}: pass one results.json per experiment")
        ours[key] = run
    teachers = {(run.dataset, run.teacher, run.student): run.teacher_top1 for run in runs}
    sources = _Sources()
    for row in published:
        sources.register(row)
    placed = [row for row in published if row.teacher and row.student]
    pairless = [row for row in published if not (row.teacher and row.student)]
    published_pairs = {(row.dataset, row.teacher, row.student) for row in placed}

    keys = list(dict.fromkeys([(r.dataset, r.teacher, r.student, r.method) for r in placed]
                              + [key for key in ours if key[:3] in published_pairs]))
    datasets = list(dict.fromkeys(key[0] for key in keys))
    lines = [
        "# Our results beside the published numbers",
        "",
        "Top-1 (%) on the test split. *Benchmark*: the zju-vipa CMI / Fast-Datafree tables the baselines come from "
        "(no KDCI). *Paper*: the KDCI paper (Wang et al., CVPR 2024), baseline / +KDCI / Δ. *Ours*: mean ± std over "
        "seeds of the final-epoch students from `reports/results.json` (`repro report`); Δ = KDCI − baseline, the "
        "mean of the paired per-seed differences with its 95% confidence interval. *Ours − benchmark* = our baseline "
        "mean minus each published value; *ours − paper* likewise per column. `[n]` names the source (list at the "
        "end); equal values from several sources share one entry. *not run*: no run of ours for that cell yet.",
        "",
        "Read the differences with care: the benchmark READMEs report full-budget runs (the project's method notes: "
        "their code reports best-epoch test accuracy), ours are final-epoch students at the budget of the profile "
        "that produced `results.json`.",
        "",
    ]
    if not any(row.origin == "paper" and row.kind == "accuracy" for row in published):
        lines += ["The KDCI paper's per-pair values (its baseline and +KDCI tables) were not available here; the "
                  "paper column is empty and only the effects it states are listed, under *Effects the paper reports "
                  "without a pair*.", ""]
    for dataset in datasets:
        lines += [f"## {DATASET_NAMES.get(dataset, dataset)}", "",
                  "| teacher → student | method | benchmark | paper: baseline / +KDCI / Δ | ours: baseline | "
                  "ours: +KDCI | ours: Δ [95% CI] | ours − benchmark | ours − paper |",
                  "|---|---|---|---|---|---|---|---|---|"]
        pairs = list(dict.fromkeys(key[1:3] for key in keys if key[0] == dataset))
        for teacher, student in pairs:
            methods = sorted({key[3] for key in keys if key[:3] == (dataset, teacher, student)}, key=_order)
            for method in methods:
                matching = [r for r in placed if (r.dataset, r.teacher, r.student, r.method) == (dataset, teacher,
                                                                                                 student, method)]
                cell = Cell(
                    benchmark=tuple(r for r in matching if r.origin == "benchmark" and r.kind == "accuracy"),
                    paper_baseline=tuple(r for r in matching if r.origin == "paper" and r.kind == "accuracy"
                                         and not r.kdci),
                    paper_kdci=tuple(r for r in matching if r.origin == "paper" and r.kind == "accuracy" and r.kdci),
                    paper_delta=tuple(r for r in matching if r.kind == "delta"),
                    run=ours.get((dataset, teacher, student, method)),
                    teacher_top1=teachers.get((dataset, teacher, student)))
                lines.append(_cell_row(_pair(teacher, student), method, cell, sources))
        lines.append("")

    if pairless:
        lines += ["## Effects the paper reports without a pair", "",
                  "KDCI − baseline (points) as the source states it, without the teacher/student pair; ours is "
                  "listed for every pair we ran on that dataset with that method.", "",
                  "| dataset | method | paper Δ | ours: teacher → student | ours: Δ [95% CI] | "
                  "ours Δ − paper Δ |",
                  "|---|---|---|---|---|---|"]
        for row in pairless:
            matches = [run for key, run in ours.items() if (key[0], key[3]) == (row.dataset, row.method)]
            label = f"{row.value:+.2f} [{sources.ref(row)}]" if row.kind == "delta" else _grouped([row], sources)
            if not matches:
                lines.append(f"| {DATASET_NAMES.get(row.dataset, row.dataset)} | {_method(row.method)} | {label} | "
                             f"{NOT_RUN} | {NOT_RUN} | — |")
            for run in matches:
                difference = (f"{run.delta - row.value:+.2f}" if run.delta is not None and row.kind == "delta"
                              else "—")
                lines.append(f"| {DATASET_NAMES.get(row.dataset, row.dataset)} | {_method(row.method)} | {label} | "
                             f"{_pair(run.teacher, run.student)} | {_delta(run)} | {difference} |")
        lines.append("")

    unmatched = [run for key, run in ours.items() if key[:3] not in published_pairs]
    lines += ["## Runs of ours without a published counterpart", ""]
    if unmatched:
        lines += ["No source in the published-numbers file covers these experiments (dataset and teacher → "
                  "student), so there is nothing to subtract.", "",
                  "| dataset | teacher → student | teacher top-1 | method | ours: baseline | ours: +KDCI | "
                  "ours: Δ [95% CI] | results file |",
                  "|---|---|---|---|---|---|---|---|"]
        for run in sorted(unmatched, key=lambda r: (r.dataset, r.teacher, r.student, _order(r.method))):
            lines.append(f"| {DATASET_NAMES.get(run.dataset, run.dataset)} | {_pair(run.teacher, run.student)} | "
                         f"{run.teacher_top1:.2f} | {_method(run.method)} | {_mean_std(run.baseline)} | "
                         f"{_mean_std(run.kdci)} | {_delta(run)} | `{run.results_file}` |")
    else:
        lines.append("None.")
    lines += ["", "## Sources", ""]
    for (source, url), number in sources.numbers.items():
        count = sources.counts[(source, url)]
        lines.append(f"{number}. {source}. <{url}> ({count} number{'' if count == 1 else 's'})")
    lines += ["", "Built by `repro compare` from the published-numbers file and our `results.json`; every published "
              "number is a row of that file with its source.", ""]
    return "\n".join(lines)


def write_comparison(published_path: Path, results: Sequence[Path], out: Path,
                     metrics_dir: Path = Path("metrics")) -> str:
    """Read both inputs, write the markdown to ``out`` and return it. ``out`` is checked first: a folder,
    a path below a file or in a read-only folder is refused before anything is read."""
    check_file_destination(out, "--out", "paper_comparison.md")
    published = read_published(published_path)
    files = find_results(results)
    runs = [run for path in files for run in read_results(path, metrics_dir)]
    markdown = build_comparison(published, runs)
    write_text_atomically(out, markdown)
    matched = {(r.dataset, r.teacher, r.student) for r in published if r.teacher}
    print(f"comparison: {out} ({len(published)} published numbers; {len(runs)} method(s) of ours from "
          f"{len(files)} results file(s), {sum((r.dataset, r.teacher, r.student) in matched for r in runs)} beside a "
          "published cell)")
    return markdown
