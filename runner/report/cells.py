"""How numbers and free text look in the report's tables and sentences."""

from __future__ import annotations


def num(value) -> str:
    """A loss or probe value to four places; a dash for a value that was never measured."""
    return "—" if value is None else f"{value:.4f}"


def seconds(value) -> str:
    """Wall time in whole seconds; a dash for a stage that did not run."""
    return "—" if value is None else f"{value:.0f} s"


def table_cell(text: str, width: int = 80) -> str:
    """Free text on one line and at most `width` characters, so a long answer cannot break a table."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
