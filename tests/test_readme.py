"""The README's quoted results are the committed figures' numbers.

A README table that quotes a results file is preceded by ``<!-- rows from PATH -->``
(PATH relative to the repository root); every body row of that table must be a row of
PATH, character for character.  ``make figures`` redraws PATH from the committed runs,
so a number that changes there and not in the README fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- rows from (\S+) -->$")


def quoted_tables(text: str) -> list[tuple[str, list[str]]]:
    """``(path, body rows)`` of every marked table of ``text`` (the header and rule rows dropped)."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if not match:
            continue
        rows = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                if rows:
                    break
                continue
            rows.append(row.rstrip())
        out.append((match.group(1), rows[2:]))  # header and |---| rule
    return out


def test_quoted_tables_are_found_with_their_body_rows():
    text = "x\n<!-- rows from a.md -->\n\n| h | k |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nafter\n| 5 | 6 |\n"
    assert quoted_tables(text) == [("a.md", ["| 1 | 2 |", "| 3 | 4 |"])]


def test_readme_tables_quote_the_committed_figure_files():
    tables = quoted_tables((REPO / "README.md").read_text())
    assert tables, "the README quotes no results file (<!-- rows from PATH --> markers)"
    for path, rows in tables:
        source = REPO / path
        assert source.is_file(), f"README quotes {path}, which is not committed"
        have = {line.rstrip() for line in source.read_text().splitlines()}
        assert rows, f"the README's table from {path} has no rows"
        missing = [row for row in rows if row not in have]
        assert not missing, f"README rows not in {path} (redraw with `make figures` and copy them): {missing}"


@pytest.mark.parametrize("row", ["| dense | 99.9 |"])
def test_a_changed_number_is_caught(tmp_path, row):
    (tmp_path / "t.md").write_text("| method | mrpc |\n|---|---:|\n| dense | 78.6 |\n")
    have = set((tmp_path / "t.md").read_text().splitlines())
    rows = quoted_tables(f"<!-- rows from t.md -->\n| method | mrpc |\n|---|---:|\n{row}\n")[0][1]
    assert [r for r in rows if r not in have] == [row]
