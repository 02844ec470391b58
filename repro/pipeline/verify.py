"""``repro verify``: do the regenerated metrics match the committed ones, and if not, why not?

Every ``*.json`` under the metrics folder, in the working tree or in ``HEAD``, is one cell. A cell is

- **identical**: the same bytes, or the same top-1 and per-class numbers;
- **within** the committed interval: its regenerated top-1 lies in mean ± 2 std of its method and arm
  over the committed seeds (``reports/results.json`` at ``HEAD``);
- **outside** it (or no committed interval exists for it);
- **missing**: on one side only.

The cells are found from the files, not from a list of methods: the arm is the folder (``students``
is the ``baseline`` arm, any other folder its own arm, ``teachers`` or a teacher file the teacher's
top-1), the method the file name (``<method>[-teacher<T>]-seed<S>.json``). Last bits on the CPU
depend on the instruction set and thread count (docs/stack-notes.md), so the report names the platform
of the committed run and of this one, and whether reproducible mode pinned the kernels in each.
It is a report, not a gate: ``--strict`` makes anything but all-identical exit 1.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from repro.errors import UserError
from repro.io import check_folder_destination, write_json_atomically, write_text_atomically

VERDICTS = ("identical", "within", "outside", "missing")
FOLDER_ARMS = {"students": "baseline"}  # other folders (kdci, control) are named as their arm
TEACHER_FOLDERS = ("teachers",)
STEM = re.compile(r"^(?P<method>.+?)(?:-teacher\d+)?-seed\d+$")
# Platform fields that decide a CPU result's last bits (repro.train.device.platform_record).
DECIDING = ("cpu", "machine", "cpu_capability", "threads", "torch", "mkl", "onednn", "pins", "gpu", "cuda")
INTERVAL_STDS = 2.0


@dataclass
class Cell:
    """One metrics file's verdict; ``path`` is relative to the repository root."""

    path: str
    verdict: str
    reason: str
    arm: str | None = None
    method: str | None = None
    committed_top1: float | None = None
    current_top1: float | None = None
    interval: tuple[float, float] | None = None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=120, check=False)
    except FileNotFoundError:
        raise UserError("git is not installed: verify reads the committed metrics with `git show HEAD:<path>`") from None


def repository_root(start: Path) -> Path:
    """The top of the git work tree holding ``start`` (a one-line error when there is none, or no commit)."""
    found = _git(start, "rev-parse", "--show-toplevel")
    if found.returncode != 0:
        raise UserError(f"{start} is not inside a git repository: verify compares the working tree with the "
                        "committed metrics (HEAD); run it in the project's clone")
    root = Path(found.stdout.decode().strip())
    if _git(root, "rev-parse", "--verify", "--quiet", "HEAD").returncode != 0:
        raise UserError(f"the git repository at {root} has no commit yet: commit the metrics to compare against")
    return root


def committed_bytes(root: Path, relative: str) -> bytes | None:
    """``git show HEAD:<relative>``, or None when that file is not committed."""
    shown = _git(root, "show", f"HEAD:{relative}")
    return shown.stdout if shown.returncode == 0 else None


def _committed_jsons(root: Path, relative_dir: str) -> set[str]:
    listed = _git(root, "ls-tree", "-r", "-z", "--name-only", "HEAD", "--", relative_dir)
    return {name for name in listed.stdout.decode().split("\0") if name.endswith(".json")}


def _parse(payload: bytes, label: str) -> dict[str, Any]:
    try:
        record = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{label} is not valid JSON ({exc}): restore it (git checkout) or regenerate it") from None
    if not isinstance(record, dict):
        raise UserError(f"{label} holds a JSON {type(record).__name__}, not an object: restore it or regenerate it")
    return record


def _per_class(record: dict[str, Any]) -> Any:
    return record.get("per_class", record.get("per_class_top1"))


def _arm_and_method(relative_to_metrics: Path, record: dict[str, Any]) -> tuple[str, str | None]:
    """('teacher', None) for a teacher's file; else (arm, method) from the folder and the file name."""
    folder = relative_to_metrics.parts[0] if len(relative_to_metrics.parts) > 1 else ""
    if folder in TEACHER_FOLDERS or record.get("role") == "teacher":
        return "teacher", None
    match = STEM.match(relative_to_metrics.stem)
    method = match["method"] if match else str(record.get("method", "")).split("+")[0] or None
    return FOLDER_ARMS.get(folder, folder or "unknown"), method


def _values(raw: Any) -> list[float]:
    if isinstance(raw, dict):
        raw = list(raw.values())
    if isinstance(raw, (int, float)):
        return [float(raw)]
    return [float(value) for value in raw] if isinstance(raw, list) else []


def committed_interval(results: dict[str, Any] | None, arm: str, method: str | None) -> tuple[float, float] | None:
    """mean ± 2 std of ``arm`` for ``method`` over the committed seeds (the teacher's top-1 for 'teacher')."""
    if not results:
        return None
    if arm == "teacher":
        values = _values(results.get("teacher_top1"))
        mean, std = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else (None, None)
    else:
        row = next((row for row in results.get("rows", []) if row.get("method") == method), None)
        if row is None:
            return None
        values = _values(row.get(f"{arm}_top1"))
        mean, std = row.get(f"{arm}_mean"), row.get(f"{arm}_std")
        if (mean is None or std is None) and values:
            mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    if mean is None or std is None or not math.isfinite(mean) or not math.isfinite(std):
        return None
    return mean - INTERVAL_STDS * std, mean + INTERVAL_STDS * std


def describe_platform(record: dict[str, Any] | None) -> str:
    """One line: CPU, what torch dispatched to, threads, library versions, reproducible mode."""
    if not record:
        return "not recorded"
    parts = [f"{record.get('cpu', '?')} ({record.get('machine', '?')})",
             f"torch dispatches to {record.get('cpu_capability', '?')}", f"{record.get('threads', '?')} threads",
             f"torch {record.get('torch', '?')}, MKL {record.get('mkl', '?')}, oneDNN {record.get('onednn', '?')}"]
    if "gpu" in record:
        parts.append(f"GPU {record['gpu']} (CUDA {record.get('cuda', '?')})")
    return "; ".join(parts) + f"; reproducible mode {_mode(record)}"


def _mode(record: dict[str, Any] | None) -> str:
    if not record or "reproducible" not in record:
        return "not recorded (written before reproducible mode existed)"
    if str(record["reproducible"]).lower() == "true":
        return f"on ({record.get('pins', '?')})"
    note = str(record.get("reproducible_note", record.get("pins", "no pins")))
    return note if note.startswith("off") else f"off ({note})"


def why(committed: dict[str, Any] | None, current: dict[str, Any] | None) -> str:
    """Why bits can differ between the committed run and this one, from their platform records."""
    if not committed or not current:
        side = "committed run" if not committed else "regenerated run"
        return f"the {side} recorded no platform: cannot tell a platform difference from a code or data change"
    differ = [f"{key} {committed.get(key)!s} vs {current.get(key)!s}" for key in DECIDING
              if str(committed.get(key)) != str(current.get(key))]
    both_pinned = all(str(record.get("reproducible")).lower() == "true" for record in (committed, current))
    if not differ:
        return ("same platform and the same pins: a change of code, config or data, or a nondeterministic kernel"
                if both_pinned else "same platform: a change of code, config or data (or an unpinned kernel choice)")
    if both_pinned:
        return (f"both runs pinned, yet the platforms differ ({'; '.join(differ)}): a pin that does not cover "
                "every kernel (e.g. cache-size blocking), or a code/data change")
    return f"different platforms, not both pinned ({'; '.join(differ)}): kernels chose other instruction sets or orders"


def verify(metrics_dir: Path, results_path: Path, out_dir: Path) -> dict[str, Any]:
    """Compare every metrics file with ``HEAD``'s; write ``out_dir``/verify.md and verify.json; return the report.
    ``out_dir`` is checked first (a file, a path below a file, a read-only folder is refused)."""
    check_folder_destination(out_dir, "--out")
    metrics_dir, results_path = Path(metrics_dir).resolve(), Path(results_path).resolve()
    root = repository_root(metrics_dir if metrics_dir.is_dir() else Path.cwd())
    try:
        metrics_rel = metrics_dir.relative_to(root).as_posix()
        results_rel = results_path.relative_to(root).as_posix()
    except ValueError:
        raise UserError(f"{metrics_dir} and {results_path} must lie inside the repository at {root}") from None

    committed_results_bytes = committed_bytes(root, results_rel)
    committed_results = _parse(committed_results_bytes, f"HEAD:{results_rel}") if committed_results_bytes else None
    current_results = _parse(results_path.read_bytes(), str(results_path)) if results_path.is_file() else None
    committed_platform = (committed_results or {}).get("platform") or None
    current_platform = (current_results or {}).get("platform") or None
    reason = why(committed_platform, current_platform)

    working = {path.relative_to(root).as_posix() for path in metrics_dir.rglob("*.json")} if metrics_dir.is_dir() else set()
    cells = []
    for relative in sorted(working | _committed_jsons(root, metrics_rel)):
        old_bytes = committed_bytes(root, relative)
        new_bytes = (root / relative).read_bytes() if relative in working else None
        cells.append(_cell(relative, Path(relative).relative_to(metrics_rel), old_bytes, new_bytes,
                           committed_results, reason, results_rel))
    counts = {verdict: sum(cell.verdict == verdict for cell in cells) for verdict in VERDICTS}
    report = {"metrics_dir": metrics_rel, "results": results_rel, "commit": _git(root, "rev-parse", "HEAD").stdout.decode().strip(),
              "results_committed": committed_results is not None,
              "committed_platform": committed_platform, "current_platform": current_platform, "why": reason,
              "counts": counts, "cells": [asdict(cell) for cell in cells]}
    out_dir = Path(out_dir)
    write_json_atomically(out_dir / "verify.json", report)
    write_text_atomically(out_dir / "verify.md", format_markdown(report))
    return report


def _cell(relative: str, inside: Path, old_bytes: bytes | None, new_bytes: bytes | None,
          committed_results: dict[str, Any] | None, reason: str, results_rel: str) -> Cell:
    if old_bytes is None or new_bytes is None:
        record = _parse(new_bytes if old_bytes is None else old_bytes, relative)
        arm, method = _arm_and_method(inside, record)
        side = "regenerated but not committed" if old_bytes is None else "committed but not regenerated"
        return Cell(relative, "missing", side, arm, method, None if old_bytes is None else record.get("top1"),
                    None if new_bytes is None else record.get("top1"))
    old, new = _parse(old_bytes, f"HEAD:{relative}"), _parse(new_bytes, relative)
    arm, method = _arm_and_method(inside, old)
    cell = Cell(relative, "identical", "", arm, method, old.get("top1"), new.get("top1"))
    if old_bytes == new_bytes:
        cell.reason = "same bytes"
        return cell
    if old.get("top1") == new.get("top1") and _per_class(old) == _per_class(new):
        cell.reason = "same top-1 and per-class numbers (other fields differ)"
        return cell
    cell.interval = committed_interval(committed_results, arm, method)
    if not isinstance(new.get("top1"), (int, float)):
        cell.verdict, cell.reason = "outside", "the regenerated file has no numeric top1"
    elif cell.interval is None:
        where = (f"{results_rel} is not committed" if committed_results is None
                 else f"{results_rel} at HEAD has no {arm} interval for {method or 'the teacher'}")
        cell.verdict, cell.reason = "outside", f"no committed interval ({where}); {reason}"
    else:
        low, high = cell.interval
        inside_interval = low - 1e-9 <= new["top1"] <= high + 1e-9
        cell.verdict = "within" if inside_interval else "outside"
        cell.reason = reason
    return cell


def _number(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def format_markdown(report: dict[str, Any]) -> str:
    """The table: one row per cell, after both platforms and the reason bits may differ."""
    counts = report["counts"]
    lines = ["# Regenerated metrics vs the committed ones", "",
             f"Compared `{report['metrics_dir']}/` in the working tree with commit `{report['commit'][:12]}`; intervals "
             f"are mean ± {INTERVAL_STDS:g} std over the committed seeds of each method and arm (`{report['results']}` at HEAD"
             + ("" if report["results_committed"] else ": not committed, so there are none") + ").", "",
             f"- committed run's platform: {describe_platform(report['committed_platform'])}",
             f"- this run's platform: {describe_platform(report['current_platform'])}",
             f"- why bits may differ: {report['why']}", "",
             f"**{counts['identical']} identical, {counts['within']} within the committed interval, "
             f"{counts['outside']} outside it, {counts['missing']} missing on one side.**", "",
             "| cell | arm | method | verdict | committed top-1 | regenerated top-1 | committed interval | why |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        interval = f"[{cell['interval'][0]:.2f}, {cell['interval'][1]:.2f}]" if cell["interval"] else "-"
        note = cell["reason"] if cell["verdict"] in ("identical", "missing") else ("see above" if cell["reason"] == report["why"] else cell["reason"])
        lines.append(f"| `{cell['path']}` | {cell['arm'] or '-'} | {cell['method'] or '-'} | {cell['verdict']} | "
                     f"{_number(cell['committed_top1'])} | {_number(cell['current_top1'])} | {interval} | {note} |")
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any], out_dir: Path) -> str:
    """The line ``repro verify`` prints."""
    counts = report["counts"]
    return (f"verify: {counts['identical']} identical, {counts['within']} within the committed interval, "
            f"{counts['outside']} outside it, {counts['missing']} missing -> {Path(out_dir) / 'verify.md'}")
