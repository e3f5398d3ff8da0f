"""Text read from files, made safe to print: a report.json or inference.json is input like any
other, and a string in it must not move the cursor, recolour or clear the terminal, retitle the
window, reorder the line (bidi overrides) or run to megabytes."""

from __future__ import annotations

import unicodedata

# Bidirectional overrides, embeddings and isolates ("Trojan source"), and the marks.
BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])
UNSAFE_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")  # controls (ESC, BEL, CR, C1), lone surrogates, line/paragraph separators


def printable(text: object, limit: int | None = 200, newlines: bool = False) -> str:
    """`text` safe on a terminal: every control character (ESC and so every escape sequence,
    BEL, backspace, carriage return, C1 controls), bidi override, lone surrogate and line
    separator written as its Python escape (`\\x1b`, `\\u202e`); newlines too unless `newlines`.
    Cut to `limit` characters (None: whole) with '…' and how much more there was."""
    text = str(text)
    cut = ""
    if limit is not None and len(text) > limit:
        cut = f"… ({len(text) - limit:,} more characters)"
        text = text[:limit]
    if not any(_unsafe(ch, newlines) for ch in text):
        return text + cut
    shown = "".join(repr(ch)[1:-1] if _unsafe(ch, newlines) else ch for ch in text)
    if limit is not None and len(shown) > limit:  # escapes are longer than what they stand for
        return shown[:limit] + (cut or "…")
    return shown + cut


def _unsafe(ch: str, newlines: bool) -> bool:
    if ch == "\n":
        return not newlines
    if ch == " " or " " < ch < "\x7f":  # the common case, quickly
        return False
    return ord(ch) in BIDI or unicodedata.category(ch) in UNSAFE_CATEGORIES


def quoted(value: object, limit: int = 80) -> str:
    """A value from a file as a message quotes it: its repr (which escapes controls), cut to `limit`."""
    return printable(repr(value), limit)
