"""`runner export RUN_DIR (--merged OUT | --adapter OUT)`: take a run's model away.

--merged: a plain Hugging Face folder (adapters folded into the weights) that loads with
`AutoModelForCausalLM.from_pretrained`, no peft needed. --adapter: the peft adapter alone, for
`PeftModel.from_pretrained(base, OUT)`. The tokenizer and its chat template go with either.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from runner.errors import RunnerError
from runner.model.methods import METHODS
from runner.rundir.folder import writing
from runner.rundir.model_files import load_run_model, read_inference


def export(run_dir: Path, out: Path, merged: bool) -> Path:
    """Write the run's model to a new folder `out`, merged into the base weights or as its peft adapter.

    The folder is written beside `out` and renamed into place, so a failed export leaves nothing at `out`.

    The run folder is checked first (read_inference): a damaged or changed file stops before any work.

    Raises:
        RunnerError: `out` is not empty, or the run's method cannot be exported that way.
        RunFolderError: a file in the run folder is damaged or changed.
    """
    inference = read_inference(run_dir)
    method = METHODS[inference["method"]]
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunnerError(f"{out}: exists and is not empty; export writes a new folder (nothing is overwritten).")
    kind = inference["method"]
    if merged and not method.mergeable:
        raise RunnerError(
            f"{run_dir}: method {kind!r} cannot be merged into the weights: its virtual tokens are inputs "
            f"the model reads, not a change to its weights. Export the adapter instead: "
            f"runner export {run_dir} --adapter {out} (loads with PeftModel.from_pretrained)."
        )
    if not merged and not method.adapter:
        raise RunnerError(
            f"{run_dir}: method {kind!r} trains the model's own weights and has no adapter; "
            f"use runner export {run_dir} --merged {out} for a plain Hugging Face folder."
        )
    partial = out.with_name(out.name + ".partial")  # a failed export leaves no half folder at OUT
    shutil.rmtree(partial, ignore_errors=True)
    model, tokenizer = load_run_model(run_dir, inference)
    if merged and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with writing(out):
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        if out.exists():
            out.rmdir()
        partial.replace(out)
    return out
