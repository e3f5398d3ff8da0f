"""Does any table widen a report page? Each HTML file given is loaded in headless Chromium in a
1280 px wide frame, and the page's scroll width is printed beside its client width (equal: no
table runs off the right edge). Needs Chromium (`apt-get install chromium`); exits 2 without it.

    python tests/benchmarks/page_width.py runs/ticket_urgency/*/report.html runs/compare/compare.html
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<html><body style="margin:0"><iframe id=f src="{src}" style="width:{width}px;height:900px;border:0"></iframe>
<script>document.getElementById('f').onload=function(){{var d=this.contentDocument.documentElement;
document.body.setAttribute('data-w',d.scrollWidth+' '+d.clientWidth)}}</script></body></html>"""


def widths(page: Path, width: int, chromium: str) -> tuple[int, int] | None:
    """(scroll width, client width) of `page` shown `width` pixels wide, None if Chromium said nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(PROBE.format(src=page.resolve().as_uri(), width=width))
        dom = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--allow-file-access-from-files",
                "--virtual-time-budget=5000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    found = re.search(r'data-w="(\d+) (\d+)"', dom)
    return (int(found[1]), int(found[2])) if found else None


def main() -> int:
    """Print each page's widths; exit 1 when any page is wider than its frame."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        print("no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    wide = 0
    for page in args.pages:
        measured = widths(page, args.width, chromium)
        if measured is None:
            print(f"{page}: Chromium gave no width")
            wide += 1
            continue
        scroll, client = measured
        verdict = "fits" if scroll <= client else f"WIDER by {scroll - client} px"
        print(f"{page}: scroll width {scroll} px, client width {client} px at {args.width} px: {verdict}")
        wide += scroll > client
    return 1 if wide else 0


if __name__ == "__main__":
    sys.exit(main())
