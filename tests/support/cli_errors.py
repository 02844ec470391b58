"""Helpers for tests that feed the CLI bad input: run ``repro.cli.main`` in this process (fast: no
3 s interpreter start per case) and check what a user would see, and that nothing on disk was lost."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path

from conftest import REPO


@dataclasses.dataclass
class Outcome:
    code: int
    stdout: str
    stderr_lines: list[str]  # non-empty stderr lines, plus a line per warning Python would have printed


def run_main(argv: list[str], capfd, monkeypatch) -> Outcome:
    """``repro ARGV`` from the project folder, as the console script runs it."""
    from repro import cli

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("REPRO_DEBUG", raising=False)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        # Python's default filters for a script: these categories are not printed, all others once.
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        code = cli.main([str(arg) for arg in argv])
    out, err = capfd.readouterr()
    printed = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught]
    return Outcome(code, out, [line for line in err.splitlines() if line.strip()] + printed)


def assert_one_line_error(outcome: Outcome, *fragments: str) -> str:
    """Exit status 2, exactly one stderr line, starting ``error:`` and naming every fragment."""
    assert outcome.code == 2, (outcome.code, outcome.stderr_lines)
    assert not any("Traceback" in line for line in outcome.stderr_lines) and "Traceback" not in outcome.stdout
    assert len(outcome.stderr_lines) == 1, outcome.stderr_lines
    line = outcome.stderr_lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (folders are implied by their files)."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}
