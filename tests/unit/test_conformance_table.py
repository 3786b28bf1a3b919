"""The README's conformance table ("### Conformance to the drafts", in "The protocol core"):
one row per normative sentence of the three drafts, with its status, the modules that implement
it and the tests that exercise it.

Such a table rots without anyone noticing: a test is renamed or removed, a module moves, a row is
copied and keeps its id, a requirement is marked done with nothing to show for it. This test
keeps the table honest with the repository as it is, without importing any test module: test
node ids are looked up in the test files' syntax trees (module-level functions, and `Class::method`
for methods; a parametrisation `[...]` is ignored), modules are looked up on disk.

Table format: columns `id | section | requirement | status | where | test`. The status is one of
STATUSES, optionally followed by `: ` and a note (required for `done (choice)` and `deviates`:
which choice, why). `where` and `test` are comma-separated lists, in backticks or not; `—` means
none.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
README: Final = REPO / "README.md"
HEADING: Final = "### Conformance to the drafts"
COLUMNS: Final = ("id", "section", "requirement", "status", "where", "test")
STATUSES: Final = frozenset(
    {"done", "done (choice)", "done (untested)", "deviates", "missing", "n/a"}
)
NEEDS_TEST: Final = frozenset({"done", "done (choice)", "deviates"})
"""Statuses that claim behaviour of ours, which a test must show (`done (untested)` says none
does yet)."""
NEEDS_NOTE: Final = frozenset({"done (choice)", "deviates"})
NEEDS_WHERE: Final = frozenset({"done", "done (choice)", "done (untested)", "deviates"})
NONE: Final = "—"
KEYWORDS: Final = ("MUST", "REQUIRED", "SHALL", "SHOULD", "RECOMMENDED", "MAY", "OPTIONAL")
MAX_REQUIREMENT_WORDS: Final = 15
ID_PATTERN: Final = re.compile(r"^[TSC]-(?P<section>\d+(?:\.\d+)*)-[1-9]\d*$")
"""T (tunnel draft), S (-session), C (-tcp), the draft's section number, the item's rank in it."""


class ConformanceTableError(ValueError):
    """The README has no usable conformance table."""


@dataclass(frozen=True)
class Row:
    line: int
    """1-based line number in the README."""
    id: str
    section: str
    requirement: str
    status: str
    note: str
    where: tuple[str, ...]
    tests: tuple[str, ...]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _items(cell: str) -> tuple[str, ...]:
    """A comma-separated cell as its items, backticks removed; `—` (or nothing) is none."""
    items = tuple(item.strip().strip("`").strip() for item in cell.split(","))
    return tuple(item for item in items if item and item != NONE)


def _section_lines(text: str, name: str) -> list[tuple[int, str]]:
    """(line number, line) of the section under HEADING, up to the next heading of level 1-3
    (outside code fences)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == HEADING]
    if not starts:
        raise ConformanceTableError(f"{name} has no {HEADING!r} heading")
    if len(starts) > 1:
        raise ConformanceTableError(f"{name} has {len(starts)} {HEADING!r} headings, not one")
    section: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(lines[starts[0] + 1 :], start=starts[0] + 2):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,3} ", line):
            break
        section.append((number, line))
    return section


def read_table(readme: Path) -> list[Row]:
    """The rows of the conformance table in `readme`; ConformanceTableError if there is no
    such section, no table in it, more than one table, or the table is malformed or empty."""
    section = _section_lines(readme.read_text(encoding="utf-8"), str(readme))
    tables: list[list[tuple[int, str]]] = []
    previous_was_table = False
    for number, line in section:
        is_table = line.lstrip().startswith("|")
        if is_table:
            if not previous_was_table:
                tables.append([])
            tables[-1].append((number, line))
        previous_was_table = is_table
    if len(tables) != 1:
        raise ConformanceTableError(
            f"the {HEADING!r} section must hold exactly one table, it holds {len(tables)}"
        )
    (table,) = tables
    if len(table) < 2 or tuple(c.lower() for c in _cells(table[0][1])) != COLUMNS:
        raise ConformanceTableError(
            f"the conformance table's header must be | {' | '.join(COLUMNS)} |, "
            f"got {table[0][1].strip()!r}"
        )
    if not all(set(cell) <= set(":-") and cell for cell in _cells(table[1][1])):
        raise ConformanceTableError(
            f"line {table[1][0]}: the header must be followed by a |---| separator row"
        )
    rows: list[Row] = []
    for number, line in table[2:]:
        cells = _cells(line)
        if len(cells) != len(COLUMNS):
            raise ConformanceTableError(
                f"line {number}: {len(cells)} cells instead of {len(COLUMNS)} "
                f"(a pipe inside a cell?): {line.strip()!r}"
            )
        row_id, section_title, requirement, status_cell, where, tests = cells
        status, _, note = status_cell.partition(":")
        rows.append(
            Row(
                line=number,
                id=row_id,
                section=section_title,
                requirement=requirement,
                status=status.strip(),
                note=note.strip(),
                where=_items(where),
                tests=_items(tests),
            )
        )
    if not rows:
        raise ConformanceTableError("the conformance table has no rows")
    return rows


# -- the checks, each returning one message per problem, naming the row ----------------------------


def status_problems(rows: list[Row]) -> list[str]:
    problems = []
    for row in rows:
        if row.status not in STATUSES:
            allowed = ", ".join(sorted(STATUSES))
            problems.append(f"{row.id}: status {row.status!r} is none of: {allowed}")
        elif row.status in NEEDS_NOTE and not row.note:
            problems.append(
                f"{row.id}: status {row.status!r} needs a note after a colon (which choice, "
                "or why we deviate)"
            )
    return problems


def id_problems(rows: list[Row]) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    for row in rows:
        if row.id in seen:
            problems.append(f"{row.id}: duplicated id (lines {seen[row.id]} and {row.line})")
        seen.setdefault(row.id, row.line)
        match = ID_PATTERN.match(row.id)
        if match is None:
            problems.append(f"{row.id!r} (line {row.line}): an id is T-, S- or C-<section>-<n>")
        elif not row.section.startswith(f"§{match['section']} "):
            problems.append(
                f"{row.id}: section {row.section!r} should start with §{match['section']} "
                "and the section's title"
            )
    return problems


def requirement_problems(rows: list[Row]) -> list[str]:
    problems = []
    for row in rows:
        words = row.requirement.split()
        if not set(re.findall(r"\b[A-Z]+\b", row.requirement)) & set(KEYWORDS):
            problems.append(f"{row.id}: the requirement names no keyword in capitals")
        if len(words) > MAX_REQUIREMENT_WORDS:
            problems.append(
                f"{row.id}: the requirement has {len(words)} words, more than "
                f"{MAX_REQUIREMENT_WORDS}"
            )
    return problems


def missing_test_problems(rows: list[Row]) -> list[str]:
    return [
        f"{row.id}: status {row.status!r} needs a test (or say 'done (untested)')"
        for row in rows
        if row.status in NEEDS_TEST and not row.tests
    ]


@functools.cache
def _defined_tests(path: Path) -> frozenset[str]:
    """`name` of every module-level function and `Class::name` of every method in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}" for item in node.body if isinstance(item, functions)
            )
    return frozenset(names)


def node_id_problems(rows: list[Row], repo: Path) -> list[str]:
    problems = []
    for row in rows:
        for node_id in row.tests:
            file_part, separator, name = node_id.partition("::")
            if not separator or not name:
                problems.append(f"{row.id}: {node_id!r} is not a pytest node id (file::test)")
                continue
            path = repo / file_part
            if path.suffix != ".py" or not path.is_file():
                problems.append(f"{row.id}: {node_id!r}: no test file {file_part}")
                continue
            if name.endswith("]") and "[" in name:
                name = name[: name.index("[")]  # a parametrisation's id
            if name not in _defined_tests(path):
                problems.append(f"{row.id}: {node_id!r}: {file_part} defines no {name}")
    return problems


def where_problems(rows: list[Row], repo: Path) -> list[str]:
    problems = []
    for row in rows:
        if row.status in NEEDS_WHERE and not row.where:
            problems.append(f"{row.id}: status {row.status!r} needs the module(s) in 'where'")
        problems.extend(
            f"{row.id}: 'where' names {path}, which does not exist"
            for path in row.where
            if not (repo / path).exists()
        )
    return problems


def count_problems(rows: list[Row], readme: Path) -> list[str]:
    """The intro's "Of the N rows, a are `done`, b `done (choice)`, ..." against the table."""
    intro = " ".join(line for _, line in _section_lines(readme.read_text("utf-8"), str(readme)))
    found = re.search(r"Of the (\d+) rows, (.*?) and (\d+) `n/a`", intro)
    if found is None:
        return ["the intro does not say how many rows have each status (Of the N rows, ...)"]
    said = {"total": int(found[1]), "n/a": int(found[3])}
    for count, status in re.findall(r"(\d+) (?:are )?`([^`]+)`", found[2]):
        said[status] = int(count)
    actual = {"total": len(rows)} | {status: 0 for status in STATUSES}
    for row in rows:
        actual[row.status] = actual.get(row.status, 0) + 1
    return [
        f"the intro says {said.get(key)} for {key}, the table has {value}"
        for key, value in actual.items()
        if said.get(key) != value
    ]


# -- the tests, on the repository's README -------------------------------------------------------


@functools.cache
def _rows() -> list[Row]:
    return read_table(README)


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s) in the README's conformance table:\n" + "\n".join(problems)


def test_the_table_exists_and_has_rows() -> None:
    assert _rows()


def test_every_status_is_an_allowed_one_with_its_note() -> None:
    problems = status_problems(_rows())
    assert not problems, _report(problems)


def test_ids_are_unique_and_match_their_section() -> None:
    problems = id_problems(_rows())
    assert not problems, _report(problems)


def test_each_requirement_is_short_and_names_its_keyword() -> None:
    problems = requirement_problems(_rows())
    assert not problems, _report(problems)


def test_every_implemented_or_deviating_row_names_a_test() -> None:
    problems = missing_test_problems(_rows())
    assert not problems, _report(problems)


def test_every_named_test_exists() -> None:
    problems = node_id_problems(_rows(), REPO)
    assert not problems, _report(problems)


def test_every_named_module_exists() -> None:
    problems = where_problems(_rows(), REPO)
    assert not problems, _report(problems)


def test_the_intro_counts_are_the_tables() -> None:
    problems = count_problems(_rows(), README)
    assert not problems, _report(problems)
