"""reports/published_numbers.csv and `repro compare`: every published number has its source, and ours land in the
right cell of reports/paper_comparison.md with the right difference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import REPO
from repro import cli
from repro.errors import UserError
from repro.pipeline import compare, report

PUBLISHED = REPO / "reports/published_numbers.csv"


def _results(path: Path, dataset: str | None, teacher: str, student: str | None, rows: dict[str, tuple[list, list]],
             teacher_top1: float = 77.5) -> Path:
    """A results.json as `repro report` writes it (only the fields compare reads, plus dataset and pair)."""
    body: dict = {"teacher_top1": teacher_top1, "teacher_network": teacher, "rows": [
        {"method": method, "baseline_top1": base, "kdci_top1": kdci,
         "paired_differences": [k - b for b, k in zip(base, kdci)]} for method, (base, kdci) in rows.items()]}
    if dataset is not None:
        body.update(dataset=dataset, student_network=student)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    return path


def _cells(markdown: str, section: str, first_cells: str) -> list[str]:
    """The cells of the one table row under ``## section`` that starts with ``first_cells``."""
    text = markdown.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {first_cells} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def _published(rows: list[compare.Published], **match: str) -> list[compare.Published]:
    return [row for row in rows if all(getattr(row, key) == value for key, value in match.items())]


def test_published_numbers_parse_and_every_row_has_a_source() -> None:
    rows = compare.read_published(PUBLISHED)
    assert len(rows) == 184
    for row in rows:
        assert row.source and row.url.startswith("https://"), row
        assert 0.0 <= row.value <= 100.0 and row.metric == "top1", row
        assert row.kind == "accuracy" or (row.kind == "delta" and row.kdci and row.origin == "paper"), row
    keys = [(r.dataset, r.teacher, r.student, r.method, r.kdci, r.kind, r.source) for r in rows]
    assert len(keys) == len(set(keys)), "one number per cell and source"
    # Spot checks against the method notes (which quote the same READMEs): CIFAR-100 ResNet-34 teacher and baselines.
    cifar100 = {"dataset": "cifar100", "teacher": "resnet34", "student": "resnet18"}
    assert {r.value for r in _published(rows, method="teacher", **cifar100)} == {78.05}
    assert {r.value for r in _published(rows, method="deepinv", **cifar100)} == {61.32}
    assert {r.value for r in _published(rows, method="fast", **cifar100)} == {74.34}
    assert {r.value for r in _published(rows, kind="delta")} == {15.54, 10.87, 14.16, 18.29}


def test_our_cifar100_numbers_land_in_their_cell_with_the_difference(tmp_path: Path) -> None:
    resnet = _results(tmp_path / "r34/results.json", "cifar100", "resnet34", "resnet18",
                      {"dafl": ([70.0, 72.0, 74.0], [80.0, 81.0, 85.0]), "mosaickd": ([60.0, 62.0], [61.0, 64.0])})
    _results(tmp_path / "vgg/results.json", "cifar100", "vgg11_bn", "resnet18", {"dafl": ([50.0, 52.0], [55.0, 58.0])},
             teacher_top1=70.0)
    out = tmp_path / "paper_comparison.md"
    markdown = compare.write_comparison(PUBLISHED, [resnet, tmp_path / "vgg"], out)
    assert out.read_text() == markdown
    published = compare.read_published(PUBLISHED)

    cells = _cells(markdown, "CIFAR-100", "ResNet-34 → ResNet-18 | DAFL")
    (benchmark,) = {r.value for r in _published(published, dataset="cifar100", teacher="resnet34",
                                                student="resnet18", method="dafl")}
    assert cells[2].startswith(f"{benchmark:.2f} [")
    assert cells[4:6] == ["72.00 ± 2.00 (n=3)", "82.00 ± 2.65 (n=3)"]
    assert cells[6].startswith("+10.00 [")  # paired differences 10, 9, 11
    assert cells[7].startswith(f"{72.0 - benchmark:+.2f} [")  # ours - published
    teacher = _cells(markdown, "CIFAR-100", "ResNet-34 → ResNet-18 | Teacher")
    assert teacher[4] == "77.50 (our teacher)" and teacher[7].startswith(f"{77.5 - 78.05:+.2f} [")
    # Two sources disagree on VGG-11 -> ResNet-18 DAFL: one difference per source, each with its reference.
    vgg = _cells(markdown, "CIFAR-100", "VGG-11 → ResNet-18 | DAFL")
    values = [r.value for r in _published(published, dataset="cifar100", teacher="vgg11_bn", method="dafl")]
    assert len(set(values)) == 2
    assert len(vgg[7].split("; ")) == 2 and all(f"{51.0 - value:+.2f} [" in vgg[7] for value in values)
    # A method of ours with no published number for the pair: ours shown, nothing to subtract.
    mosaic = _cells(markdown, "CIFAR-100", "ResNet-34 → ResNet-18 | MosaicKD")
    assert mosaic[2] == "—" and mosaic[4] == "61.00 ± 1.41 (n=2)" and mosaic[7] == "—"
    # The same pair on CIFAR-10 was not run: the run must not leak into another dataset's cell.
    assert _cells(markdown, "CIFAR-10", "ResNet-34 → ResNet-18 | DAFL")[4:7] == ["not run"] * 3
    # The paper's pair-less effect: ours Δ - paper Δ for every pair we ran.
    (paper,) = _published(published, dataset="cifar100", method="dafl", kind="delta")
    effects = markdown.split("## Effects the paper reports without a pair", 1)[1].split("\n## ", 1)[0]
    assert "| ResNet-34 → ResNet-18 | +10.00 [" in effects and f"| {10.0 - paper.value:+.2f} |" in effects
    assert "| VGG-11 → ResNet-18 | +5.50 [" in effects and f"| {5.5 - paper.value:+.2f} |" in effects


def test_runs_without_counterpart_and_old_results_identified_from_metrics(tmp_path: Path) -> None:
    # A results.json from before report.py recorded dataset/pair: identified from the metrics it was built from.
    model = tmp_path / "models/teacher"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"data": {"name": "digits"}}))
    metrics = tmp_path / "metrics"
    (metrics / "students").mkdir(parents=True)
    (metrics / "teachers").mkdir(parents=True)
    (metrics / "teachers/seed0.json").write_text(json.dumps({"top1": 99.8, "network": "digits_cnn_large",
                                                             "model": str(model)}))
    (metrics / "students/dafl-teacher0-seed0.json").write_text(json.dumps({"top1": 94.0, "network": "digits_cnn_small"}))
    results = _results(tmp_path / "results.json", None, "digits_cnn_large", None,
                       {"dafl": ([94.0, 96.0], [95.0, 96.0])}, teacher_top1=99.8)
    assert report.collect(metrics)["dataset"] == "digits"
    assert report.collect(metrics)["student_network"] == "digits_cnn_small"
    markdown = compare.write_comparison(PUBLISHED, [results], tmp_path / "out.md", metrics)
    cells = _cells(markdown, "Runs of ours without a published counterpart", "digits (scikit-learn)")
    assert cells[1:6] == ["digits_cnn_large → digits_cnn_small", "99.80", "DAFL", "95.00 ± 1.41 (n=2)",
                          "95.50 ± 0.71 (n=2)"]
    with pytest.raises(UserError, match="does not say its dataset"):
        compare.write_comparison(PUBLISHED, [results], tmp_path / "out.md", tmp_path / "elsewhere")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("edit, expected", [
    (lambda row: re.sub(r"https://[^,]*README\.md", "", row), "empty 'url'"),
    (lambda row: re.sub(r'"[^"]*"', '""', row, count=1), "empty 'source'"),
    (lambda row: row.replace(",95.70,", ",195.70,"), "outside"),
    (lambda row: row.replace(",95.70,", ",n/a,"), "not a number"),
    (lambda row: row.replace(",false,", ",maybe,"), "kdci"),
])
def test_invalid_published_rows_are_one_line_errors(tmp_path: Path, edit, expected: str) -> None:
    lines = PUBLISHED.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("cifar10,resnet34,resnet18,teacher,"))
    lines[first] = edit(lines[first])
    bad = tmp_path / "published.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as exc:
        compare.read_published(bad)
    assert expected in _one_line(exc) and f"{bad}:{first + 1}" in str(exc.value)


def test_missing_or_invalid_inputs_are_one_line_errors(tmp_path: Path, capsys) -> None:
    results = _results(tmp_path / "ok/results.json", "cifar100", "resnet34", "resnet18", {"dafl": ([1.0], [2.0])})
    (tmp_path / "header_only.csv").write_text(",".join(compare.COLUMNS) + "\n")
    (tmp_path / "no_source_column.csv").write_text("dataset,value\ncifar10,1\n")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    for published, paths, expected in [
        (tmp_path / "absent.csv", [results], "cannot read published numbers"),
        (tmp_path / "header_only.csv", [results], "no published numbers"),
        (tmp_path / "no_source_column.csv", [results], "lacks the column"),
        (PUBLISHED, [tmp_path / "absent.json"], "not found"),
        (PUBLISHED, [tmp_path / "broken.json"], "not a `repro report` results.json"),
        (PUBLISHED, [tmp_path / "empty"], "no results.json under"),
        (PUBLISHED, [results, results.parent], None),  # the same file twice is read once
    ]:
        if expected is None:
            compare.write_comparison(published, paths, tmp_path / "out.md")
            continue
        with pytest.raises(UserError) as exc:
            compare.write_comparison(published, paths, tmp_path / "out.md")
        assert expected in _one_line(exc)
    twice = _results(tmp_path / "copy/results.json", "cifar100", "resnet34", "resnet18", {"dafl": ([1.0], [2.0])})
    with pytest.raises(UserError, match="both hold dafl"):
        compare.write_comparison(PUBLISHED, [results, twice], tmp_path / "out.md")
    # Through the CLI: exit status 2 and one `error:` line.
    capsys.readouterr()
    assert cli.main(["compare", "--published", str(PUBLISHED), "--results", str(tmp_path / "absent.json"),
                     "--out", str(tmp_path / "out.md")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error
    assert cli.main(["compare", "--published", str(PUBLISHED), "--results", str(tmp_path / "ok"),
                     "--out", str(tmp_path / "cli.md")]) == 0
    assert "| ResNet-34 → ResNet-18 | DAFL |" in (tmp_path / "cli.md").read_text()
