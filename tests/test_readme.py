"""The README and the pages of docs/: quoted results, links and anchors.

A table that quotes a results file is preceded by ``<!-- rows from PATH -->`` (PATH
relative to the repository root); every body row of that table must be a row of PATH,
character for character.  ``make figures`` redraws PATH from the committed runs, so a
number that changes there and not in the README or a docs page fails here.

Every relative link and image of README.md and docs/*.md must name a file or folder of
the repository, and every ``#anchor`` a heading of its page, with GitHub's slugs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- rows from (\S+) -->$")
#: The pages checked here: the README (the entry point) and every page of docs/.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: ``wc -l README.md`` at most (issue #30: the README is the entry point, about 250 lines).
README_MAX_LINES = 300


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


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
        assert source.is_file(), f"a page quotes {path}, which is not committed"
        assert rows, f"the table from {path} has no rows"
        have = {line.rstrip() for line in source.read_text().splitlines()}
        out += [(path, row) for row in rows if row not in have]
    return out


# --- links and anchors -------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def _prose(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks, with inline code spans removed."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            out.append(re.sub(r"`[^`]*`", "", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (code spans, emphasis and links
    reduced to their text), lowercased, punctuation other than ``-`` and ``_`` dropped,
    and each space turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown page (a repeated slug gets ``-1``, ``-2``...)."""
    seen: dict[str, int] = {}
    out = set()
    fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        match = None if fence else HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[str]:
    """Every link and image target of ``text`` outside code."""
    return [m.group(1) for line in _prose(text) for m in LINK.finditer(line)]


def broken_links(page: Path, root: Path) -> list[str]:
    """The relative links and images of ``page`` whose file or folder does not exist under
    ``root``, or whose ``#anchor`` is not a heading of the target page."""
    bad = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if root.resolve() not in (dest, *dest.parents):
            bad.append(f"{target} (outside the repository)")
            continue
        if not dest.exists():
            bad.append(f"{target} (no such file)")
            continue
        if fragment:
            if dest.is_dir() or dest.suffix != ".md":
                bad.append(f"{target} (an anchor into a page that is not Markdown)")
            elif fragment not in anchors(dest.read_text()):
                bad.append(f"{target} (no heading #{fragment} in {dest.name})")
    return bad


# --- the helpers themselves --------------------------------------------------------------

def test_quoted_tables_are_found_with_their_body_rows():
    text = "x\n<!-- rows from a.md -->\n\n| h | k |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nafter\n| 5 | 6 |\n"
    assert quoted_tables(text) == [("a.md", ["| 1 | 2 |", "| 3 | 4 |"])]


def test_a_changed_number_is_caught(tmp_path):
    (tmp_path / "t.md").write_text("| method | mrpc |\n|---|---:|\n| dense | 78.6 |\n")
    quote = "<!-- rows from t.md -->\n| method | mrpc |\n|---|---:|\n{}\n"
    assert unquoted_rows(quote.format("| dense | 99.9 |"), tmp_path) == [("t.md", "| dense | 99.9 |")]
    assert unquoted_rows(quote.format("| dense | 78.6 |"), tmp_path) == []


@pytest.mark.parametrize("heading, expected", [
    ("Results: the baselines at one matched budget (`baselines`, issue #13)",
     "results-the-baselines-at-one-matched-budget-baselines-issue-13"),
    ("The n:m sweep", "the-nm-sweep"),
    ("Multi-process training (`torchrun`)", "multi-process-training-torchrun"),
    ("Fidelity to the authors' code", "fidelity-to-the-authors-code"),
    ("Does ADMM converge before the hard prune?", "does-admm-converge-before-the-hard-prune"),
    ("The results store (version 2)", "the-results-store-version-2"),
    ("snake_case and a [link](x.md)", "snake_case-and-a-link"),
])
def test_slugs_follow_github(heading, expected):
    assert slug(heading) == expected


def test_anchors_skip_code_and_number_repeats():
    text = "# A\n\n```bash\n# not a heading\n```\n\n## A\n## B c\n"
    assert anchors(text) == {"a", "a-1", "b-c"}


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "fig.png").write_bytes(b"")
    (tmp_path / "docs" / "b.md").write_text("# The page\n\n## A part\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "# Own heading\n\n![ok](../fig.png) [ok](b.md) [ok](b.md#a-part) [ok](#own-heading) [ok](../docs/)\n"
        "[web](https://example.org/x) `[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n"
        "![bad](fig.png) [bad](b.md#no-part) [bad](#nowhere) [bad](../../outside.md)\n")
    assert broken_links(page, tmp_path) == [
        "fig.png (no such file)", "b.md#no-part (no heading #no-part in b.md)",
        "#nowhere (no heading #nowhere in a.md)", "../../outside.md (outside the repository)"]


# --- the committed pages -----------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_quoted_tables_match_the_committed_files(page):
    missing = unquoted_rows(page.read_text(), REPO)
    assert not missing, (f"{_rel(page)}: rows not in their file (redraw with `make figures` and copy them): "
                         f"{missing}")


def test_the_quoted_results_are_checked_in_the_readme_and_in_docs():
    quoting = {_rel(p) for p in PAGES if quoted_tables(p.read_text())}
    assert "README.md" in quoting, "the README quotes no results file (<!-- rows from PATH --> markers)"
    assert any(p.startswith("docs/") for p in quoting), "no docs page quotes a results file"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_links_and_anchors_resolve(page):
    assert not broken_links(page, REPO), f"{_rel(page)}: broken links: {broken_links(page, REPO)}"


def test_the_readme_is_the_entry_point():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "figures/cpu/paired_differences.png" in links(text)
    assert "docs/README.md" in links(text)


def test_every_docs_page_is_in_the_index():
    index = REPO / "docs" / "README.md"
    listed = {(index.parent / target.partition("#")[0]).resolve() for target in links(index.read_text())}
    pages = {p.resolve() for p in PAGES if p.parent.name == "docs" and p != index}
    assert pages, "docs/ has no pages"
    assert not pages - listed, f"docs pages missing from docs/README.md: {sorted(p.name for p in pages - listed)}"


def _words(text: str) -> str:
    return " ".join(text.split())


def module_constant(path: Path, name: str) -> str:
    """The value of the module-level string ``name`` of ``path``, read from its source (no
    import: the study layer pulls in torch): an f-string may use the module's literal constants."""
    import ast

    tree = ast.parse(path.read_text())
    names: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            try:
                names[target] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                if target == name:
                    names[target] = eval(compile(ast.Expression(node.value), str(path), "eval"), {}, dict(names))
    return names[name]


def test_the_docs_quote_the_selection_rules():
    package = REPO / "nxmlab" / "study" / "studies"
    rules = {"convergence.md": module_constant(package / "convergence.py", "DEFAULT_RULE"),
             "protocol.md": module_constant(package / "selection.py", "RULE")}
    for page, rule in rules.items():
        assert _words(rule) in _words((REPO / "docs" / page).read_text()), f"docs/{page} does not quote its rule"
