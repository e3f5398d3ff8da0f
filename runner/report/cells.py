"""How numbers and free text look in the report's tables and sentences: for people, not as Python
spells them (no "False", "None" or 0.013000000268220901)."""

from __future__ import annotations


def num(value) -> str:
    """A loss or probe value to four places; a dash for a value that was never measured."""
    return "—" if value is None else f"{value:.4f}"


def seconds(value) -> str:
    """Wall time in whole seconds; a dash for a stage that did not run."""
    return "—" if value is None else f"{value:.0f} s"


def duration(value) -> str:
    """Wall time as a person says it: 42 s, 3.5 min, 1 h 05 min; a dash for a stage that did not run."""
    if value is None:
        return "—"
    if value < 90:
        return f"{value:.0f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    hours, minutes = divmod(round(value / 60), 60)
    return f"{hours} h {minutes:02d} min"


def memory(megabytes) -> str:
    """A memory or file size: MB below 1 GB, GB with one decimal above."""
    if megabytes is None:
        return "—"
    return f"{megabytes:.0f} MB" if megabytes < 1024 else f"{megabytes / 1024:.1f} GB"


def count(value) -> str:
    """A large count in millions or thousands (135.5 M, 921.6 K); small counts whole."""
    if value is None:
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.1f} M"
    if value >= 1e4:
        return f"{value / 1e3:.1f} K"
    return f"{value:,}"


def share(value) -> str:
    """A fraction as a percentage: 0.0068 → 0.68%, 0.891 → 89%."""
    if value is None:
        return "—"
    pct = 100 * value
    if pct == 0:
        return "0%"
    return f"{pct:.2f}%" if pct < 1 else f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def signed(value, digits: int = 3) -> str:
    """A difference with its sign: +0.120, −0.045 (a real minus sign reads better in prose)."""
    return f"{value:+.{digits}f}".replace("-", "−")


def interval(ci, digits: int = 3) -> str:
    """A 95% interval of a difference: −0.020..+0.150."""
    return f"{signed(ci[0], digits)}..{signed(ci[1], digits)}"


def yes_no(flag) -> str:
    """A flag in words."""
    return "yes" if flag else "no"


def plural(n: int, word: str) -> str:
    """`1 row`, `3 rows`."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def table_cell(text: str, width: int = 80) -> str:
    """Free text on one line and at most `width` characters, so a long answer cannot break a table."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def distinct_inputs(prompts: list[str], width: int = 300) -> list[str]:
    """The prompts less the lines every one of them shares (the template's instructions first,
    its answer cue last), each on one line of at most `width` characters: what sets a sample
    apart, not the instruction it repeats."""
    lines = [p.strip().splitlines() for p in prompts]
    if len(lines) > 1:
        head = 0
        while all(len(s) > head + 1 and s[head] == lines[0][head] for s in lines):
            head += 1
        tail = 0
        while all(len(s) > head + tail + 1 and s[-1 - tail] == lines[0][-1 - tail] for s in lines):
            tail += 1
        lines = [s[head : len(s) - tail] for s in lines]
    return [table_cell(" ".join(s), width) for s in lines]
