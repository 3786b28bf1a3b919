"""experiments/text_columns.py: the aligned text tables the commands print."""

from __future__ import annotations

from experiments.text_columns import align


def test_columns_align_to_their_widest_cell_without_trailing_spaces() -> None:
    assert align([["mode", "Mbit/s"], ["tunnel", "497.1"], ["a", ""]]) == [
        "mode    Mbit/s",
        "tunnel  497.1",
        "a",
    ]
    assert align([]) == []


def test_a_capped_column_lets_a_longer_cell_overflow() -> None:
    assert align([["abcdef", "x"], ["ab", "y"]], max_width=3) == ["abcdef  x", "ab   y"]
