"""Peak resident memory per phase of a command (a `runner run`, say): the process's RSS is read
from /proc every 0.2 s, and each reading goes to the phase named by the last progress bar or
stage line the command printed. Linux only.

    python tests/benchmarks/memory_phases.py runner run experiments/ticket_urgency.yaml --set training.max_steps=60
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

# A progress bar ("base, probe general_mc:  40%|…") or one of runner's stage lines names a phase.
BAR = re.compile(r"([A-Za-z_][\w ,.-]*?):\s+\d+%")
STAGES = ("Training:", "Epoch", "Validation", "Report:", "Comparison:")


def rss_mb(pid: int) -> float:
    """The resident memory of `pid` (MB), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    """Run the command, print each phase's start time and peak RSS, and the command's exit code."""
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    started, phase, peaks = time.monotonic(), ["start"], {}

    def sample() -> None:
        while proc.poll() is None:
            name, value = phase[0], rss_mb(proc.pid)
            at, peak = peaks.get(name, (time.monotonic() - started, 0.0))
            peaks[name] = (at, max(peak, value))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    while chunk := os.read(proc.stdout.fileno(), 65536):
        for line in chunk.decode(errors="replace").replace("\r", "\n").splitlines():
            line = line.strip()
            found = BAR.match(line)
            if found:
                phase[0] = found[1][:60]
            elif line.startswith(STAGES):
                phase[0] = line[:40]
    proc.wait()
    for name, (at, peak) in peaks.items():
        print(f"{at:7.1f} s  {peak:7.0f} MB  {name}")
    print(f"exit code {proc.returncode}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
