"""The README's table of bad inputs quotes only what the hostile-input tests assert: each quoted line
fragment must occur in one of those tests, so the table cannot drift from the behaviour."""

from __future__ import annotations

import re

from conftest import REPO

SOURCES = ["test_hostile_inputs.py", "test_hostile_artefacts.py", "test_params_check.py", "test_hub.py",
           "test_tracking_faults.py"]


def _table_rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("### What bad input prints", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # the header row is not a case


def test_every_quoted_message_is_asserted_by_a_test() -> None:
    tested = "\n".join((REPO / "tests" / name).read_text() for name in SOURCES)
    rows = _table_rows()
    assert len(rows) >= 20
    for category, case, says in rows:
        quoted = re.fullmatch(r"`(.+)`", says)
        assert quoted, f"row {case!r}: the last column must quote one message fragment"
        fragment = quoted.group(1)
        # The tests write fragments as Python literals: compare with the quotes escaped as they would be.
        assert fragment in tested or fragment.replace("'", "\\'") in tested, f"{category}: {fragment!r} is not asserted"
