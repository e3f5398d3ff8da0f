"""The model card (README.md) that `runner export` writes into the exported folder.

Built from the run's typed results (report.json read back as a RunResult), its inference.json,
its own template copies and one real test prompt, so that whoever is handed the folder knows
what the model is, where it came from under which licence, what it was trained to answer, how
well it did (with intervals), what it forgot, and how to load and ask it. Hugging Face reads
the YAML front matter (license, base_model, tags, library_name).

Every string that comes from the user's data (names, labels, templates, prompts, paths) is
shown in code spans or fenced blocks, one line per table cell, so that it renders as the text
it is and cannot break the card's layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from runner.report.cells import table_cell
from runner.report.document import probe_rows
from runner.report.task_blocks import RUNG_TITLES, RUNGS, rung_title, with_ci
from runner.results import RunResult, TaskResult
from runner.terminal import printable


@dataclass
class BaseModel:
    """The base model as the card names it: `hub_id` (the Hugging Face id, when runner knows
    one) goes into the front matter; `licence` is a Hugging Face licence id (None: unknown to
    runner); `base_code` is Python that sets `base` to the base model, for loading an adapter."""

    source: str
    hub_id: str | None
    licence: str | None
    base_code: str
    note: str = ""


@dataclass
class Example:
    """One real test row of a task as the run scored it: the template's prompt, the text the
    model reads (the chat template applied, when the run used it) and the row's gold answer."""

    prompt: str
    model_text: str
    gold: str | None


@dataclass
class ExportInfo:
    """What this export is: merged weights or the adapter, in which dtype, in which folder."""

    merged: bool
    dtype: str
    folder: str
    runner_version: str
    chat: bool  # whether the run wrapped each prompt in the tokenizer's chat template


def model_card(
    result: RunResult,
    inference: dict,
    templates: dict[str, str],
    examples: dict[str, Example],
    base: BaseModel,
    export: ExportInfo,
) -> str:
    """The card's Markdown: front matter, then what a user of the exported folder needs to know."""
    lines = ["---", front_matter(inference, base, export).strip(), "---", ""]
    lines += intro_lines(result, inference, base, export)
    lines += base_lines(result, base)
    lines += training_lines(result)
    for name, entry in inference["tasks"].items():
        task = result.tasks.get(name)
        lines += task_lines(name, entry, task, templates.get(name, ""), examples.get(name))
    lines += forgetting_lines(result)
    lines += usage_lines(inference, examples.get(inference["primary_task"]), base, export)
    return "\n".join(lines).rstrip() + "\n"


def front_matter(inference: dict, base: BaseModel, export: ExportInfo) -> str:
    """Hugging Face's card metadata as YAML (safe_dump quotes whatever needs quoting)."""
    classification = any(entry["labels"] for entry in inference["tasks"].values())
    meta: dict = {"license": base.licence or "other"}
    if base.hub_id:
        meta["base_model"] = base.hub_id
        meta["base_model_relation"] = "finetune" if export.merged else "adapter"
    meta["library_name"] = "transformers" if export.merged else "peft"
    meta["pipeline_tag"] = "text-generation"
    tags = ["runner", inference["method"], "text-classification" if classification else "text-generation"]
    meta["tags"] = tags + ([] if export.merged else [f"base_model:adapter:{base.hub_id}"] if base.hub_id else [])
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def intro_lines(result: RunResult, inference: dict, base: BaseModel, export: ExportInfo) -> list[str]:
    """Title, description, and what this folder holds."""
    lines = [f"# {span(result.name or export.folder, 100)}", ""]
    if result.description.strip():
        lines += [text_line(result.description, 1000), ""]
    what = (
        "the fine-tuned weights as one plain model (any adapter merged in: no peft needed)"
        if export.merged
        else "the peft adapter alone (load it on the base model below)"
    )
    text = (
        f"Fine-tuned from {span(base.source)} with runner {export.runner_version} (method "
        f"{span(inference['method'])}), exported from the run folder {span(run_folder(result.run_dir), 120)}. "
        f"This folder holds {what}, as {export.dtype}, with the tokenizer and its chat template."
    )
    if export.dtype != "fp32":
        text += (
            f" The scores below are the run's own (float32 weights, precision {span(inference['precision'], 20)}); "
            f"in {export.dtype} they may move slightly."
        )
    lines.append(text)
    if result.status != "complete":
        lines += ["", f"Note: the run's report says it is {span(result.status, 40)}, not complete."]
    return [*lines, ""]


def run_folder(run_dir: str) -> str:
    """The run folder as `<name>/<timestamp>`: enough to find it, no path of the machine it ran on."""
    return "/".join(run_dir.replace("\\", "/").rstrip("/").split("/")[-2:])


def base_lines(result: RunResult, base: BaseModel) -> list[str]:
    """The base model: source, the weights really used (file and checksum), and its licence."""
    model = result.model
    rows = [["source", span(base.source)]]
    if base.hub_id:
        rows.append(["Hugging Face id", span(base.hub_id)])
    if model.get("weights"):
        rows.append(["weights", span(model["weights"], 160)])
    if model.get("sha256"):
        rows.append(["sha256", span(model["sha256"], 64)])
    if model.get("package"):
        rows.append(["package", span(model["package"])])
    if base.licence:
        licence = f"{base.licence}, the base model's; these weights derive from it and carry its terms"
    else:
        licence = "the base model's, which runner does not know: check it before you share or use these weights"
    rows.append(["licence", licence])
    lines = ["## Base model", "", *table(["", ""], rows)]
    if base.note:
        lines += [f"Note: {base.note}.", ""]
    lines += ["The training data's own terms may apply too; runner does not know them.", ""]
    return lines


def training_lines(result: RunResult) -> list[str]:
    """What the model was trained on and how training went, in a few rows."""
    rows = []
    for name, task in result.tasks.items():
        data = task.data
        files = sorted({str(f).replace("\\", "/").rsplit("/", 1)[-1] for f in (data.get("files") or {}).values()})
        split = ", ".join(f"{data[k]} {k}" for k in ("train", "val", "test") if isinstance(data.get(k), int))
        rows.append(
            [
                f"task {span(name, 60)}",
                f"{split} rows" + (f" from {', '.join(span(f, 60) for f in files)}" if files else ""),
            ]
        )
    training = result.training
    if training is not None:
        rows.append(["epochs", f"{training.epochs_run} run, best {training.best_epoch} (its checkpoint was exported)"])
        if training.best_val_loss is not None:
            rows.append(["best validation loss", f"{training.best_val_loss:.4f}"])
    cost = result.cost
    if cost.trainable_params is not None and cost.total_params:
        share = 100 * cost.trainable_params / cost.total_params
        rows.append(["trained parameters", f"{cost.trainable_params:,} of {cost.total_params:,} ({share:.2f}%)"])
    return ["## Training", "", *table(["", ""], rows)] if rows else []


def task_lines(name: str, entry: dict, task: TaskResult | None, template: str, example: Example | None) -> list[str]:
    """One task: its labels, template, a real prompt, and its test scores per rung."""
    kind = "classification" if entry["labels"] else "generation"
    lines = [f"## Task {span(name, 60)} ({kind})", ""]
    if entry["labels"]:
        labels = ", ".join(span(label, 60) for label in entry["labels"])
        lines += [f"Labels ({len(entry['labels'])}): {labels}.", ""]
    lines += [
        f"Template ({span(f'templates/{name}.jinja', 80)} in the run folder; `|||` splits prompt from answer):",
        "",
    ]
    lines += [*fenced(template, "jinja"), ""]
    if example is not None:
        lines += ["A test row's prompt, as the template rendered it:", "", *fenced(example.prompt), ""]
        if example.model_text != example.prompt:
            lines += [
                "What the model reads (the tokenizer's chat template applied):",
                "",
                *fenced(example.model_text),
                "",
            ]
        if example.gold is not None:
            lines += [f"Its gold answer: {span(example.gold, 120)}.", ""]
    if entry["labels"]:
        lines += [
            "The model answers with the label whose tokens it gives the highest log-likelihood after the prompt.",
            "",
        ]
    return lines + score_lines(task)


def score_lines(task: TaskResult | None) -> list[str]:
    """The task's test scores per rung with 95% bootstrap intervals, and the paired deltas."""
    if task is None or not task.test:
        return ["No test scores in report.json for this task.", ""]
    metrics = ["accuracy", "f1_macro"] if task.kind == "classification" else ["exact_match", "token_f1"]
    rows = [
        [span(rung_title(rung, m), 120) if rung in RUNG_TITLES else span(rung), *(with_ci(m, k) for k in metrics), m.n]
        for rung, m in sorted(task.test.items(), key=lambda item: rung_order(item[0]))
    ]
    lines = ["Test split, each metric with its 95% bootstrap interval:", ""]
    lines += table(["model", *(f"{k} [95% CI]" for k in metrics), "n"], rows)
    for pair, delta in task.deltas.items():
        parts = [
            f"{metric} {d.delta:+.3f} (95% CI {d.ci95[0]:+.3f}..{d.ci95[1]:+.3f}, "
            f"{'excludes' if d.excludes_zero else 'includes'} zero)"
            for metric, d in delta.items()
        ]
        lines.append(f"- {span(pair, 80)}: " + "; ".join(parts))
    return lines + ([""] if task.deltas else [])


def rung_order(rung: str) -> int:
    """Cheapest rung first, as the run report orders them; unknown rungs last."""
    return RUNGS.index(rung) if rung in RUNGS else len(RUNGS)


def forgetting_lines(result: RunResult) -> list[str]:
    """What the forgetting probes found before and after training, or that none ran."""
    lines = ["## Forgetting", ""]
    if not result.forgetting:
        return [
            *lines,
            "No forgetting probes ran (evaluation.forgetting was empty): this card cannot say what "
            "the model forgot of its general abilities.",
            "",
        ]
    if result.forgetting_summary:
        lines += [text_line(result.forgetting_summary, 2000), ""]
    rows = [[span(row[0], 60), *row[1:]] for name, e in result.forgetting.items() for row in probe_rows(name, e)]
    return lines + table(["probe", "metric", "before", "after", "delta", "delta 95% CI", "retention"], rows)


def usage_lines(inference: dict, example: Example | None, base: BaseModel, export: ExportInfo) -> list[str]:
    """How to load the folder and ask it what the run asked, as code that runs."""
    entry = inference["tasks"][inference["primary_task"]]
    folder = repr(export.folder)
    code = ["import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if export.merged:
        code += ["", f"model = AutoModelForCausalLM.from_pretrained({folder})"]
    else:
        code += ["from peft import PeftModel", "", *base.base_code.splitlines()]
        code.append(f"model = PeftModel.from_pretrained(base, {folder})")
    code += [f"tokenizer = AutoTokenizer.from_pretrained({folder})", "model.eval()", ""]
    code.append(f"prompt = {example.prompt!r}" if example else "prompt = '...'  # a row rendered by the template")
    code += prompt_code(export.chat)
    code += label_code(entry, export.chat) if entry["labels"] else generate_code(inference["max_new_tokens"])
    lines = ["## How to use", ""]
    if not export.merged and base.note:
        lines += [f"Load the adapter on its base model ({base.note.rstrip('.')}).", ""]
    lines += [*fenced("\n".join(code), "python"), ""]
    lines.append(
        f"runner shortens prompts longer than {inference['max_length']} tokens (model.max_length, also the "
        f"tokenizer's model_max_length here) by its {span(inference['truncation'])} rule; this code does not."
    )
    lines += ["", COMPATIBILITY]
    return [*lines, ""]


# Measured by tests/benchmarks/export_transformers4.py (SmolLM2-135M-Instruct and random-tiny exports).
COMPATIBILITY = (
    "The files are written for transformers 4.x as well as 5.x: the tokenizer class is "
    "`PreTrainedTokenizerFast`, its chat template is also in tokenizer_config.json, tokenizer.json keeps its "
    "merges in the older form, and config.json carries `torch_dtype` and `rope_theta`. A merged export "
    "loads and scores as in transformers 5 from transformers 4.33 on (4.35 for `add_generation_prompt`)."
)


def prompt_code(chat: bool) -> list[str]:
    """Token ids of the prompt exactly as runner built them: the chat template, or the bare prompt."""
    if chat:
        return [
            'messages = [{"role": "user", "content": prompt}]',
            "text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
            'prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]',
        ]
    return ['prompt_ids = tokenizer(prompt)["input_ids"]']


def label_code(entry: dict, chat: bool) -> list[str]:
    """Every label's summed log-likelihood after the prompt; the highest is the answer. Without
    a chat template the label follows the prompt after a space, as runner trained it."""
    text = "label" if chat else '" " + label'
    eos = " + [tokenizer.eos_token_id]" if entry["label_eos"] else ""
    return [
        f"labels = {list(entry['labels'])!r}",
        "scores = {}",
        "with torch.no_grad():",
        "    for label in labels:",
        f'        label_ids = tokenizer({text}, add_special_tokens=False)["input_ids"]{eos}',
        "        ids = prompt_ids + label_ids",
        "        logprobs = model(input_ids=torch.tensor([ids])).logits[0, -len(ids) :].float().log_softmax(-1)",
        "        start = len(prompt_ids) - 1  # the logits at position i predict token i + 1",
        "        scores[label] = sum(logprobs[start + i, t].item() for i, t in enumerate(label_ids))",
        "print(max(scores, key=scores.get), scores)",
    ]


def generate_code(max_new_tokens: int) -> list[str]:
    """Greedy generation, as runner scored a free-text task."""
    return [
        "with torch.no_grad():",
        f"    out = model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens={max_new_tokens}, do_sample=False)",
        "answer = tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)",
        "print(answer)",
    ]


# --- Markdown that stays what it says ----------------------------------------------------------


def span(text: object, width: int = 80) -> str:
    """User text as one inline code span: one line, at most `width` characters, control
    characters escaped, fenced by more backticks than any run inside it."""
    text = printable(table_cell(text, width), None)
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def text_line(text: str, width: int) -> str:
    """Free text (a description) as one plain paragraph: Markdown's punctuation escaped, so
    that it reads as the words it is, never as a heading, list, link, HTML or emphasis."""
    text = printable(table_cell(text, width), None)
    text = re.sub(r"[\\`*_{}\[\]<>#|~]|^[-+]", lambda m: "\\" + m.group(0), text)
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", text)  # "1. " would start a list


def fenced(text: str, language: str = "") -> list[str]:
    """A fenced code block holding `text` verbatim (controls but newlines and tabs escaped),
    fenced by more backticks than any run of them inside."""
    text = "\t".join(printable(part, 20_000, newlines=True) for part in text.split("\t"))
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [fence + language, *text.splitlines(), fence]


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; a `|` inside a cell (code spans too) is escaped so it cannot split the row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return [*lines, ""]
