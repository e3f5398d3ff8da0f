"""Markdown to a self-contained HTML page."""

from __future__ import annotations

import html
import re


def to_markdown(blocks: list[tuple], image_files: dict[str, str]) -> str:
    """The blocks as Markdown; an img block shows only when `image_files` has a file for its key."""
    lines = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(map(str, header)) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img" and block[1] in image_files:
            lines += [f"![{block[2]}]({image_files[block[1]]})", ""]
    return "\n".join(lines)


# Every table sits in a box that scrolls sideways inside the page, so no table widens the page;
# a long one (many labels) also scrolls down inside a box of its own height, its header kept in view.
HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
.tbl{max-width:100%;overflow:auto;margin:0.8em 0}.tbl.long{max-height:28em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f4f6;position:sticky;top:0}td:first-child,th:first-child,td.t,th.t{text-align:left}
td.t{max-width:36em;overflow-wrap:anywhere}td:not(.t){white-space:nowrap}img{max-width:100%;display:block;margin:0.8em 0}
code{background:#f3f4f6;padding:0 3px;overflow-wrap:anywhere}h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em}
.verdict{background:#f6f8fa;border-left:4px solid #2563eb;padding:0.1em 1.2em 0.4em;margin:1em 0}.verdict h2{margin-top:0.6em}
"""

LONG_TABLE_ROWS = 20  # rows past which a table scrolls inside its own box


def to_html(blocks: list[tuple], images: dict[str, str], title: str) -> str:
    """A self-contained page: styles inline, plots embedded as data URIs; readable offline."""
    body, boxed = [], False
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2") and boxed:  # the verdict's box ends where the next section starts
            body.append("</section>")
            boxed = False
        if kind == "h2" and block[1] == "Verdict":
            body.append('<section class="verdict">')
            boxed = True
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "table":
            # A header sits over its column: right over numbers, left over text.
            first = block[2][0] if block[2] else []
            header = "".join(
                f"<th{'' if i < len(first) and _numeric(first[i]) else ' class=t'}>{html.escape(str(c))}</th>"
                for i, c in enumerate(block[1])
            )
            rows = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in block[2])
            long = " long" if len(block[2]) > LONG_TABLE_ROWS else ""
            body.append(
                f'<div class="tbl{long}"><table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table></div>'
            )
        elif kind == "img" and block[1] in images:
            body.append(f'<img src="{images[block[1]]}" alt="{html.escape(block[2])}">')
    if boxed:
        body.append("</section>")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _numeric(cell) -> bool:
    """Whether a cell holds a number (with or without an interval, a mark or a unit) or a dash."""
    return bool(re.fullmatch(r"[-+−]?[\d.,]+%?( \[.*\])?( ✓)?( s| min| MB| GB)?|—", str(cell)))


def _td(cell) -> str:
    """A table cell: numbers right-aligned, text left-aligned."""
    text = html.escape(str(cell))
    return f"<td>{text}</td>" if _numeric(cell) else f'<td class="t">{text}</td>'


def _inline(text: str) -> str:
    """Escape, then render `code` spans and **bold** spans."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    if len(parts) % 2 == 0:  # an unpaired ** stays as it is
        return text
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
