"""Scoring bookkeeping: which rungs and probes run on which model, and how their per-row
outcomes become confidence intervals, deltas and the forgetting verdict in the report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from runner.data import checks
from runner.data.encode import Encoder
from runner.data.examples import TaskData
from runner.data.split import sample_indices
from runner.data.truncation import Fitter
from runner.evaluation import cache
from runner.evaluation.evaluator import Evaluator
from runner.evaluation.probes import PROBES, ProbeData, run_probe
from runner.evaluation.rungs import majority_baseline, tfidf_baseline
from runner.model.forward import virtual_tokens
from runner.model.load import causal_lm, merged_adapters
from runner.model.methods import METHODS
from runner.model.precision import autocast_dtype, resolve_precision
from runner.report import uncertainty as stats
from runner.report.cells import distinct_inputs
from runner.report.sentences import forgetting_sentence
from runner.report.uncertainty import ItemScores, add_uncertainty, forgetting_entry
from runner.results import ProbeResult, RungResult, RunResult, TaskResult
from runner.spec.types import Spec

BASE_RUNGS = {"base_zero_shot": False, "base_few_shot": True}  # rung -> uses few-shot prompts


@dataclass
class Scoring:
    """What every scoring step shares: the spec, the data and probes, where results go, and the
    per-item outcomes kept for paired bootstraps."""

    spec: Spec
    tasks: list[TaskData]
    probes: list[ProbeData]
    result: RunResult | None  # None on another rank, which does not score
    run_dir: Path
    tasks_items: dict[str, dict[str, ItemScores]] = field(default_factory=dict)
    probes_before: dict[str, tuple[dict, torch.Tensor | None]] = field(default_factory=dict)
    probes_after: dict[str, tuple[dict, torch.Tensor | None]] = field(default_factory=dict)
    compared: dict[str, dict] = field(default_factory=dict)  # two-model probes (drift): base and tuned together
    cached: dict[str, str] = field(default_factory=dict)  # base unit ("task rung", "probe name") -> fingerprint
    # An experiment's base_scores/ folder: its runs score the base model once and share it,
    # whether or not the user's score cache is on.
    shared: Path | None = None
    shared_hits: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # evaluation.test_rows: every rung scores the same seeded sample of each test split,
        # stratified by label (a split file used whole is often sorted by label: its first rows
        # would be a few labels), so the paired comparisons still pair.
        cap = self.spec.evaluation.test_rows
        if cap is not None and any(len(t.test) > cap for t in self.tasks):
            if self.result is not None:
                scored = ", ".join(f"{t.task.name} {min(cap, len(t.test))} of {len(t.test)}" for t in self.tasks)
                self.result.notes.append(f"Only a sample of test rows was scored (evaluation.test_rows): {scored}.")
            self.tasks = [dataclasses.replace(t, test=test_sample(t, cap, self.spec.seed)) for t in self.tasks]

    def cache_folders(self) -> list[Path]:
        """Where base scores are looked up and stored: the experiment's folder, then the cache."""
        folders = [self.shared] if self.shared is not None else []
        return folders + ([cache.scores_dir()] if cache.enabled(self.spec.evaluation.cache) else [])

    def lookup(self, key: str, unit: str) -> dict | None:
        for folder in self.cache_folders():
            hit = cache.load(key, folder)
            if hit is not None:
                if folder == self.shared:
                    self.shared_hits.append(unit)
                return hit
        return None

    def keep(self, key: str, value: dict, about: dict) -> None:
        for folder in self.cache_folders():
            cache.store(key, value, about, folder)


def score_base(evaluator: Evaluator, scoring: Scoring) -> None:
    """The untouched model: majority, zero-shot and few-shot rungs, and every probe's 'before'.

    Zero-shot, few-shot and probe results come from the score cache when an earlier run scored
    the same model on the same rows with the same settings and code (runner.evaluation.cache); the cheap
    majority rung is always computed."""
    spec = scoring.spec
    cacheable = any(r in spec.evaluation.baselines for r in BASE_RUNGS) or any(
        PROBES[p.probe.kind].score is not None for p in scoring.probes
    )
    use_cache = cacheable and bool(scoring.cache_folders())
    context = cache.context_parts(spec, evaluator) if use_cache else None
    if "majority" in spec.evaluation.baselines:
        score_tasks("majority", scoring, majority_baseline)
    if "baseline_tfidf" in spec.evaluation.baselines:
        score_tasks("baseline_tfidf", scoring, tfidf_baseline, classification_only=True)
    for rung, few_shot in BASE_RUNGS.items():
        if rung in spec.evaluation.baselines:
            shots = spec.evaluation.few_shot_k if few_shot else 0

            def score(data: TaskData, k: int = shots) -> tuple[dict, list[dict]]:
                return evaluator.evaluate(data, shots=k, seed=spec.seed)

            if context is not None:
                score = _cached_rung(scoring, context, rung, shots, score)
            score_tasks(rung, scoring, score, evaluator)
    for p in scoring.probes:
        if PROBES[p.probe.kind].score is not None:
            scoring.probes_before[p.probe.name] = _probe_before(evaluator, scoring, p, context)
    if use_cache:
        _note_cached(scoring)


def _cached_rung(scoring: Scoring, context: dict, rung: str, shots: int, score):
    """`score` behind the cache: a stored (metrics, records) for this rung and task, else
    scored and stored. A hit's metrics carry `cached: <fingerprint>`."""

    def cached_score(data: TaskData) -> tuple[dict, list[dict]]:
        key = cache.fingerprint({"context": context, **cache.task_parts(data, rung, shots)})
        unit = f"{data.task.name} {rung}"
        hit = scoring.lookup(key, unit)
        if _is_rung_entry(hit, len(data.test)):
            scoring.cached[unit] = key
            return {**hit["metrics"], "cached": key}, hit["records"]
        metrics, records = score(data)
        about = {"task": data.task.name, "rung": rung, **_about(scoring.spec)}
        scoring.keep(key, {"metrics": metrics, "records": records}, about)
        return metrics, records

    return cached_score


def _is_rung_entry(hit: dict | None, n: int) -> bool:
    """A usable cached rung: metrics, and one record per test row with what score_tasks reads."""
    return (
        hit is not None
        and isinstance(hit.get("metrics"), dict)
        and isinstance(hit.get("records"), list)
        and len(hit["records"]) == n
        and all(isinstance(r, dict) and {"correct", "prediction", "gold"} <= r.keys() for r in hit["records"])
    )


def _probe_before(
    evaluator: Evaluator, scoring: Scoring, p: ProbeData, context: dict | None
) -> tuple[dict, torch.Tensor | None]:
    """A probe's result on the base model: from the cache (metrics carry `cached: <fingerprint>`),
    else scored, and stored when the cache is on."""
    key = cache.fingerprint({"context": context, **cache.probe_parts(p)}) if context is not None else None
    hit = scoring.lookup(key, f"probe {p.probe.name}") if key is not None else None
    if (
        hit is not None
        and isinstance(hit.get("metrics"), dict)
        and isinstance(hit.get("items"), (torch.Tensor, dict, type(None)))
    ):
        scoring.cached[f"probe {p.probe.name}"] = key
        return {**hit["metrics"], "cached": key}, hit["items"]
    with evaluator.describing(f"base, probe {p.probe.name}"):
        metrics, items = run_probe(evaluator, p)
    if key is not None:
        scoring.keep(key, {"metrics": metrics, "items": items}, {"probe": p.probe.name, **_about(scoring.spec)})
    return metrics, items


def _about(spec: Spec) -> dict:
    """For a person browsing the cache folder: what an entry was scored from."""
    return {"spec": spec.name, "model": spec.model.source}


def _note_cached(scoring: Scoring) -> None:
    result = scoring.result
    result.cost.score_base_cached = len(scoring.cached)
    if scoring.shared_hits and scoring.spec.run is not None:
        result.notes.append(
            f"The base model was scored once for the whole experiment: {', '.join(scoring.shared_hits)} come from "
            f"the experiment's {scoring.shared.name}/ folder, on the same test rows as every other run."
        )
    elif scoring.shared_hits:
        result.notes.append(
            f"Resumed run: {', '.join(scoring.shared_hits)} of the base model come from this run's "
            f"{scoring.shared.name}/ folder, scored before training started, not scored again."
        )
    from_cache = {unit: key for unit, key in scoring.cached.items() if unit not in scoring.shared_hits}
    if from_cache:
        units = ", ".join(f"{unit} ({key})" for unit, key in from_cache.items())
        result.notes.append(
            f"Base scores reused from cache (fingerprint per unit): {units}. They were scored by an earlier run "
            f"of the same model, rows, settings and code; set evaluation.cache: false or {cache.NO_CACHE_ENV}=1 "
            "to score afresh."
        )


def score_tuned(evaluator: Evaluator, base: Evaluator, scoring: Scoring) -> None:
    """The fine-tuned model: its rung, every probe's 'after', and drift from the base."""
    # Adapters merged into the weights score as fast as the base model; drift switches them
    # off and on, so it runs unmerged.
    with merged_adapters(evaluator.model):
        if "fine_tuned" in scoring.spec.evaluation.baselines:
            score_tasks("fine_tuned", scoring, lambda data: evaluator.evaluate(data, seed=scoring.spec.seed), evaluator)
        for p in scoring.probes:
            if PROBES[p.probe.kind].score is not None:
                with evaluator.describing(f"fine-tuned, probe {p.probe.name}"):
                    before = scoring.probes_before.get(p.probe.name, (None, None))[1]
                    scoring.probes_after[p.probe.name] = run_probe(evaluator, p, before)
    for p in scoring.probes:
        compare = PROBES[p.probe.kind].compare
        if compare is not None:
            with evaluator.describing(f"fine-tuned, probe {p.probe.name}"):
                scoring.compared[p.probe.name] = compare(base, evaluator, p)


def base_evaluator(tuned: Evaluator, base_copy: torch.nn.Module | None) -> Evaluator:
    """An evaluator that scores as the base model: a kept copy, or the peft model with adapters off."""
    if base_copy is not None:
        return dataclasses.replace(tuned, model=base_copy.to(tuned.device))
    if virtual_tokens(tuned.model):  # prompt tuning leaves the base model untouched
        return dataclasses.replace(tuned, model=causal_lm(tuned.model))
    return dataclasses.replace(tuned, adapters_off=True)


def score_tasks(
    rung: str, scoring: Scoring, score, evaluator: Evaluator | None = None, classification_only: bool = False
) -> None:
    """Score every task's test split with one rung (`score(data) -> (metrics, records)`);
    append its predictions to predictions.jsonl."""
    with open(scoring.run_dir / "predictions.jsonl", "a") as f:
        for data in scoring.tasks:
            if classification_only and not data.task.is_classification:
                continue
            started = time.perf_counter()
            with evaluator.describing(f"{rung}, {data.task.name}") if evaluator else contextlib.nullcontext():
                metrics, records = score(data)
            if evaluator is not None and "cached" not in metrics and data.test:
                # Inference cost per test row, batched as evaluation.batch_size says.
                metrics["seconds"] = round(time.perf_counter() - started, 2)
                metrics["ms_per_example"] = round(1000 * metrics["seconds"] / len(data.test), 1)
            entry = scoring.result.tasks[data.task.name]
            for r in records:
                f.write(json.dumps({"task": data.task.name, "rung": rung, **r}) + "\n")
            correct = torch.tensor([r["correct"] for r in records], dtype=torch.float)
            if records and all("label_logprobs" in r for r in records):
                # Label probabilities as `predict` hands them out: the label log-likelihoods
                # normalised over the labels; calibration asks whether they can be thresholded.
                logprobs = torch.tensor([list(r["label_logprobs"].values()) for r in records])
                confidence = torch.softmax(logprobs, dim=1).max(dim=1).values
                metrics["calibration"] = stats.calibration(confidence, correct)
            entry.test[rung] = RungResult.from_json(metrics, strict=True)
            if data.task.is_classification:
                labels = data.task.labels
                items = ItemScores(
                    correct,
                    torch.tensor([labels.index(r["prediction"]) for r in records]),
                    torch.tensor([labels.index(r["gold"]) for r in records]),
                    len(labels),
                )
            else:
                f1 = [r.get("token_f1") for r in records]
                items = ItemScores(correct, token_f1=torch.tensor(f1) if None not in f1 else None)
            scoring.tasks_items.setdefault(data.task.name, {})[rung] = items
            if rung == "fine_tuned":
                n = scoring.spec.evaluation.sample_predictions
                # The input goes with each sample (shortened: report.json stays small whatever
                # the rows hold), so a reader sees what the model was asked, not just its answer.
                inputs = distinct_inputs([r["prompt"] for r in records[:n]], SAMPLE_INPUT_CHARS)
                entry.samples = [
                    {k: r[k] for k in ("row", "id", "gold", "prediction", "correct") if k in r} | {"input": text}
                    for r, text in zip(records[:n], inputs)
                ]


SAMPLE_INPUT_CHARS = 300  # of a sample's prompt kept in report.json


def summarize(scoring: Scoring) -> None:
    """Confidence intervals, deltas, forgetting entries and the one-sentence verdict."""
    spec, result = scoring.spec, scoring.result
    samples = spec.evaluation.bootstrap_samples
    for name, items in scoring.tasks_items.items():
        add_uncertainty(result.tasks[name], items, samples, spec.seed)
    forgetting = {}
    for name, (before, items_before) in scoring.probes_before.items():
        if name not in scoring.probes_after:
            continue
        after, items_after = scoring.probes_after[name]
        kind = kind_of(spec, name)
        probe = PROBES[kind]
        forgetting[name] = forgetting_entry(
            kind,
            probe.headline,
            probe.higher_is_better,
            before,
            after,
            items_before,
            items_after,
            samples,
            spec.seed,
            paired=probe.paired,
            second=probe.second,
        )
    for name, found in scoring.compared.items():
        # A two-model probe's entry: its headline number as `value`, the rest as it came.
        kind = kind_of(spec, name)
        metric = PROBES[kind].headline
        rest = {k: v for k, v in found.items() if k != metric}
        forgetting[name] = ProbeResult(kind, metric, value=round(found[metric], 6), **rest)
    if scoring.probes_after or scoring.compared:
        result.forgetting = forgetting
        result.forgetting_summary = forgetting_sentence(forgetting)
    elif scoring.probes_before:  # base-only evaluation: the 'before' numbers alone
        result.probes_base = {name: before for name, (before, _) in scoring.probes_before.items()}


def test_sample(data: TaskData, rows: int, seed: int) -> list:
    """A seeded sample of `rows` test rows, stratified by label for classification, in split order."""
    labels = [e.label for e in data.test] if data.task.is_classification else None
    return [data.test[i] for i in sample_indices(len(data.test), rows, seed, labels)]


def kind_of(spec: Spec, probe_name: str) -> str:
    """A probe's kind, by its name in the spec."""
    return next(p.kind for p in spec.evaluation.forgetting if p.name == probe_name)


def make_evaluator(model: torch.nn.Module, encoder: Encoder, spec: Spec, fitter: Fitter | None = None) -> Evaluator:
    """An evaluator on the GPU when the spec allows one and it exists, with the run's autocast
    dtype, so scores are taken at the precision training uses."""
    use_gpu = spec.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    precision = resolve_precision(spec.trainer.precision, spec.trainer.accelerator)
    dtype = autocast_dtype(precision)
    return Evaluator(
        model.to(device),
        encoder,
        spec.evaluation.batch_size,
        spec.evaluation.max_new_tokens,
        device,
        dtype,
        fitter=fitter,
    )


def describe_data(result: RunResult, tasks: list[TaskData], findings: list, encoder: Encoder, spec: Spec) -> None:
    """Per task: rows per split and label, rows truncated per split, data checks."""
    for t in tasks:
        result.tasks[t.task.name] = TaskResult(
            kind="classification" if t.task.is_classification else "generation",
            labels=list(t.task.labels) if t.task.is_classification else None,
            data={
                "source": t.task.data.describe(),
                "files": t.files,
                "rows": t.rows_read,
                "train": len(t.train),
                "val": len(t.val),
                "test": len(t.test),
                "label_counts": t.label_counts(),
                "truncated": t.truncated_counts(),
                "label_end_token": t.label_eos,
                "checks": checks.as_report(findings, t.task.name),
            },
        )
    if spec.model.chat_template and not encoder.use_chat:
        result.notes.append("model.chat_template is on but the tokenizer has no chat template: plain prompts used.")


@contextlib.contextmanager
def timed(result: RunResult | None, key: str):
    """Record a phase's wall time as the result's cost `key` (nothing without a result: another rank)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        if result is not None:
            setattr(result.cost, key, round(time.perf_counter() - started, 1))


def needs_base_copy(spec: Spec) -> bool:
    """Drift compares next-token distributions of base and tuned model: an adapter can be
    switched off; a method that trains base weights needs a copy of them."""
    return METHODS[spec.method.kind].trains_base and any(PROBES[p.kind].compare for p in spec.evaluation.forgetting)
