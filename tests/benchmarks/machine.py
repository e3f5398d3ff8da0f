"""The machine a benchmark ran on, printed first by every benchmark script: timings mean little
without it (CPU model, cores torch uses, native bf16, versions, load from other work)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_lines(precision: str | None = None) -> list[str]:
    import torch
    import transformers

    from runner.model.precision import cpu_has_fast_bf16

    model = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"cpu: {model}; {usable} usable of {os.cpu_count()} logical cores; torch threads "
        f"{torch.get_num_threads()} (inter-op {torch.get_num_interop_threads()}); native bf16: {cpu_has_fast_bf16()}",
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}"
        + (f", cuda {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        f"precision: {precision}; load average {load}"
        if precision is not None
        else f"load average {load} (other work on the machine slows every timing)",
    ]


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
