"""Rows of text cells as aligned columns: the tables the commands print (bench, compare, an
experiment's parameters)."""

from __future__ import annotations

from collections.abc import Sequence


def align(rows: Sequence[Sequence[str]], max_width: int | None = None) -> list[str]:
    """Each row as one line: its cells left-aligned to their column's widest cell (at most
    `max_width`; a longer cell overflows), two spaces apart, trailing spaces stripped."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    if max_width is not None:
        widths = [min(max_width, w) for w in widths]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
