"""Memory: activation checkpointing when the batch would not fit, and peak RSS."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runner.spec.types import TrainingSpec

if TYPE_CHECKING:  # torch stays unimported here: the command line calls bound_kernel_caches first
    import torch

ACTIVATION_BYTES_PER_TOKEN = 120  # x hidden size x layers: measured ~2 MB/token on SmolLM2-135M + LoRA, bf16


def use_activation_checkpointing(model: torch.nn.Module, training: TrainingSpec, longest_row: int) -> bool:
    """Turn activation checkpointing on when asked, or ("auto") when one forward/backward pass
    of activations would take more than half the memory available; returns whether it is on."""
    setting = training.activation_checkpointing
    if setting == "auto":
        config = getattr(model, "config", None)
        layers = getattr(config, "num_hidden_layers", 0) or 0
        hidden = getattr(config, "hidden_size", 0) or 0
        tokens = training.max_batch_tokens or training.batch_size * longest_row
        setting = tokens * ACTIVATION_BYTES_PER_TOKEN * hidden * layers > 0.5 * available_memory()
    if setting:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and with Lightning.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return bool(setting)


def available_memory() -> float:
    """Bytes the system can still give this process (MemAvailable; unbounded if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started or since `reset_peak_rss` (Linux
    VmHWM; elsewhere the process's ru_maxrss, KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def reset_peak_rss() -> bool:
    """Start peak_rss_mb afresh (Linux: writing 5 to /proc/self/clear_refs), so that runs of one
    experiment in one process each report their own peak. False where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


TRAINING_MMAP_THRESHOLD = 1 << 20  # bytes: glibc's M_MMAP_THRESHOLD while training (see training_allocator)
SCORING_MMAP_THRESHOLD = 32 << 20  # and after: the most glibc's own adjustment ever sets


@contextlib.contextmanager
def training_allocator():
    """Inside: glibc maps every allocation of 1 MB or more on its own and unmaps it when freed.
    By default glibc raises that threshold to the largest block freed so far (up to 32 MB), after
    which a training step's activations come from the heap, whose holes the next step's other
    shapes only partly reuse: the demo's process grew by ~1 GB over 40 steps, 6.3 GB by the end.
    At 1 MB, 335 MB lower after 40 steps for 2% of the training speed (256 KB halved it: every
    small tensor's pages faulted afresh). Scoring runs at 32 MB: its larger temporaries, mapped
    and faulted afresh each forward, made few-shot scoring twice as slow at 1 MB.
    On the way out the heap is trimmed: training's freed memory goes back to the system before
    scoring's buffers come on top of it. Nothing happens where there is no glibc."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, TRAINING_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, SCORING_MMAP_THRESHOLD)
            libc.malloc_trim(0)


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _libc():
    """glibc, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim_allocator() -> bool:
    """Hand the C allocator's free pages back to the system (glibc's malloc_trim), at a phase
    boundary: training's activations, freed, otherwise stay in the process and scoring's
    buffers come on top of them. Per step it would cost a quarter of the step time in page
    faults; between phases it costs milliseconds. False where there is no glibc."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


# oneDNN, which runs every bf16 matmul on a CPU, keeps each matmul shape's compiled kernel (its
# primitive cache) and PyTorch's ideep layer keeps more per shape (its LRU cache), up to 1,024 of
# each by default. Training sees a new shape at nearly every step (rows of every length), so the
# process grew by 1.3 GB over 250 shapes in tests/benchmarks/kernel_caches.py and the demo's
# training phase sat 1.2-1.5 GB above a single step (bounded: 2.5 GB peak for the whole demo).
# 128 leaves room for the shapes one step repeats across its layers (the model's few linear
# shapes, forward and backward, at one length); no slowdown measured at 64 or 256.
# Both are read on first use, so setting them at the command line's start is enough; a user's own
# setting wins. Nothing reads them on a GPU.
KERNEL_CACHE_ENTRIES = "128"


def bound_kernel_caches() -> None:
    """Both CPU kernel caches at KERNEL_CACHE_ENTRIES, where the user set neither."""
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, KERNEL_CACHE_ENTRIES)
