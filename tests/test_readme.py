"""The README's quoted results are the committed figures' numbers.

A README table that quotes a results file is preceded by ``<!-- rows from PATH -->``
(PATH relative to the repository root); every body row of that table must be a row of
PATH, character for character.  ``make figures`` redraws PATH from the committed runs,
so a number that changes there and not in the README fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def unquoted_rows(text: str, root: Path) -> list[tuple[str, str]]:
    """``(path, row)`` for every body row of a marked table of ``text`` that is not a row of
    its file (``root / path``); a marked table without rows or a missing file fails."""
    out = []
    for path, rows in quoted_tables(text):
        source = root / path
        assert source.is_file(), f"README quotes {path}, which is not committed"
        assert rows, f"the README's table from {path} has no rows"
        have = {line.rstrip() for line in source.read_text().splitlines()}
        out += [(path, row) for row in rows if row not in have]
    return out


def test_quoted_tables_are_found_with_their_body_rows():
    text = "x\n<!-- rows from a.md -->\n\n| h | k |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nafter\n| 5 | 6 |\n"
    assert quoted_tables(text) == [("a.md", ["| 1 | 2 |", "| 3 | 4 |"])]


def test_readme_tables_quote_the_committed_figure_files():
    text = (REPO / "README.md").read_text()
    assert quoted_tables(text), "the README quotes no results file (<!-- rows from PATH --> markers)"
    missing = unquoted_rows(text, REPO)
    assert not missing, f"README rows not in their file (redraw with `make figures` and copy them): {missing}"


def test_a_changed_number_is_caught(tmp_path):
    (tmp_path / "t.md").write_text("| method | mrpc |\n|---|---:|\n| dense | 78.6 |\n")
    quote = "<!-- rows from t.md -->\n| method | mrpc |\n|---|---:|\n{}\n"
    assert unquoted_rows(quote.format("| dense | 99.9 |"), tmp_path) == [("t.md", "| dense | 99.9 |")]
    assert unquoted_rows(quote.format("| dense | 78.6 |"), tmp_path) == []
