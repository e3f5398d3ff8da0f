"""Forgetting probes: the same general-ability measurements before and after fine-tuning.

Kinds (see the schema's `$defs.probe`):
- multiple_choice: log-likelihood of each choice after the prompt; `acc` takes the most
  likely choice, `acc_norm` divides each log-likelihood by the choice's length in characters
  first (the lm-evaluation-harness conventions).
- generation: greedy answer to an instruction, checked by exact match or containment.
- perplexity: exp(token-weighted mean negative log-likelihood) over non-overlapping windows of
  model.max_length tokens.
- drift: mean per-token KL(base || fine-tuned) of the next-token distributions on text, in
  nats; far finer than accuracy on a few hundred items.
- text: perplexity, next-token top-1 and drift from one pass per model over the same windows
  (the built-in suite's text probe). The base model's pass keeps what drift needs, a few of its
  next tokens at each position (see `text`), so the tuned model's pass alone gives the drift:
  no second base pass after training, no full-vocabulary copy kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from runner.data.examples import render_example
from runner.data.read import read_rows, read_text
from runner.data.sandbox import TemplateProblem
from runner.data.templates import compile_expression, load_template
from runner.errors import DataError
from runner.evaluation.evaluator import TEXT_WINDOWS, Evaluator
from runner.evaluation.metrics import kl_divergence, normalize_answer
from runner.limits import DEFAULT_LIMITS, Limits
from runner.spec.types import ProbeSpec


@dataclass
class ProbeData:
    """A probe's items, read and templated once, scored by any model."""

    probe: ProbeSpec
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    choices: list[list[str]] = field(default_factory=list)
    gold: list[int] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    text: str = ""


def load_probe(probe: ProbeSpec, limits: Limits = DEFAULT_LIMITS) -> ProbeData:
    """Read and template a probe's data; bad rows are reported all at once."""
    data = ProbeData(probe)
    if PROBES[probe.kind].reads_text:
        data.text = read_text(probe.data.path, limits)
        return data
    rows = read_rows(probe.data, limits)[: probe.max_items]
    template = load_template(probe.template, limits)
    where = f"{probe.data.describe()} (probe {probe.name!r})"
    try:
        choices_of = compile_expression(probe.choices, limits) if probe.choices else None
    except TemplateProblem as exc:
        raise DataError(where, [f"choices {probe.choices!r}: {exc}"]) from None
    problems = []
    for number, row in enumerate(rows, 1):
        try:
            prompt, answer = render_example(template, row, limits)
            if choices_of is not None:
                found = choices_of(**row)
                if not isinstance(found, (list, tuple)):
                    raise TemplateProblem(f"choices {probe.choices!r} gave {type(found).__name__}, expected a list.")
                choices = [str(c).strip() for c in found]
                if answer not in choices:
                    raise TemplateProblem(f"the answer {answer!r} is not among the choices {choices}.")
                data.choices.append(choices)
                data.gold.append(choices.index(answer))
        except TemplateProblem as exc:
            problems.append(f"row {number}: {exc}")
            if exc.fatal:
                break
            continue
        data.prompts.append(prompt)
        data.answers.append(answer)
        data.checks.append(row.get("check") if row.get("check") in ("exact", "contains") else probe.match)
    if problems:
        raise DataError(where, problems[:20], total=len(problems))
    return data


def run_probe(evaluator: Evaluator, data: ProbeData, before: Items = None) -> tuple[dict, Items]:
    """Metrics of a one-model probe with one model, and the per-item scores for paired bootstraps
    (`before`: the base model's items, for a kind that measures the tuned model against them)."""
    return PROBES[data.probe.kind].score(evaluator, data, before)


# A probe's per-item outcome: a tensor (one score per item), a dict of tensors (the text kind:
# per-window sums and the base's kept next tokens), or None (nothing to pair).
Items = torch.Tensor | dict[str, torch.Tensor] | None


def multiple_choice(evaluator: Evaluator, data: ProbeData, before: Items = None) -> tuple[dict, torch.Tensor]:
    """acc (the most likely choice) and acc_norm (log-likelihood per character), with chance."""
    encoder = evaluator.encoder
    prompts = [encoder.prompt_ids(p) for p in data.prompts]
    candidates = [[encoder.completion_ids(c, add_eos=False) for c in cs] for cs in data.choices]
    scores = evaluator.candidate_scores(prompts, candidates)
    gold = torch.tensor(data.gold)
    raw = torch.tensor([int(s.argmax()) for s in scores])
    lengths = [torch.tensor([max(len(c), 1) for c in cs], dtype=torch.float) for cs in data.choices]
    norm = torch.tensor([int((s / n).argmax()) for s, n in zip(scores, lengths)])
    correct = (raw == gold).float()
    metrics = {"acc": float(correct.mean()), "acc_norm": float((norm == gold).float().mean()), "n": len(gold)}
    metrics["chance"] = round(sum(1 / len(cs) for cs in data.choices) / len(data.choices), 4)
    return metrics, correct


def generation(evaluator: Evaluator, data: ProbeData, before: Items = None) -> tuple[dict, torch.Tensor]:
    """Greedy answers checked by exact match or containment (a row's own `check` wins)."""
    outputs = evaluator.generate([evaluator.encoder.prompt_ids(p) for p in data.prompts])
    hits = torch.tensor(
        [answer_matches(o, a, c) for o, a, c in zip(outputs, data.answers, data.checks)], dtype=torch.float
    )
    return {"accuracy": float(hits.mean()), "n": len(hits)}, hits


def perplexity(evaluator: Evaluator, data: ProbeData, before: Items = None) -> tuple[dict, None]:
    """exp(token-weighted mean negative log-likelihood) over the text's windows."""
    windows = evaluator.text_windows(data.text, data.probe.max_tokens)
    nll, tokens = evaluator.token_nll(windows)
    return {"perplexity": math.exp(nll / tokens), "nll_per_token": nll / tokens, "tokens": tokens}, None


def next_token(evaluator: Evaluator, data: ProbeData, before: Items = None) -> tuple[dict, torch.Tensor]:
    """Top-1 next-token accuracy on the text: how often the model's most likely next token is the
    one that follows. Averaged over windows; the per-window scores pair before with after."""
    windows = evaluator.text_windows(data.text, data.probe.max_tokens)
    per_window = []
    for start in range(0, len(windows), TEXT_WINDOWS):  # full-vocabulary rows: a few windows at a time
        chunk = windows[start : start + TEXT_WINDOWS]
        hits = (
            evaluator.next_token_logprobs(chunk).argmax(dim=-1).cpu()
            == torch.tensor([token for window in chunk for token in window[1:]])
        ).float()
        # The positions come window by window, each window's predicted tokens in order.
        per_window += [part.mean() for part in hits.split([len(window) - 1 for window in chunk])]
    scores = torch.stack(per_window)
    return {"top1": float(scores.mean()), "windows": len(scores), "tokens": sum(len(w) - 1 for w in windows)}, scores


def drift(base: Evaluator, tuned: Evaluator, data: ProbeData) -> dict:
    """Mean per-token KL(base || tuned) on the probe's text, both models on the same windows."""
    windows = base.text_windows(data.text, data.probe.max_tokens)
    total, tokens = 0.0, 0
    # Full-vocabulary log-probabilities of two models at once are large (a 384-token window
    # of a 49k vocabulary is 75 MB per model in fp32): a few windows at a time.
    with tuned.progress(len(windows), unit="window") as bar:
        for start in range(0, len(windows), TEXT_WINDOWS):
            chunk = windows[start : start + TEXT_WINDOWS]
            kl = kl_divergence(base.next_token_logprobs(chunk), tuned.next_token_logprobs(chunk))
            total += float(kl.sum())
            tokens += kl.numel()
            bar.update(len(chunk))
    return {"kl_per_token": total / tokens, "tokens": tokens}


TOP_K = 32  # the base model's most likely next tokens kept per position, for the text kind's drift
TAIL_SAMPLES = 16  # and tokens drawn from the rest of its distribution, for the rest of the drift


def text(evaluator: Evaluator, data: ProbeData, before: Items = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Perplexity, next-token top-1 and, given the base model's items (`before`), drift: all from
    one pass over the text's windows.

    Drift is KL(base || tuned) per token. Its full-vocabulary terms would need the base's whole
    distribution at every position (800 MB for 8k tokens); the base pass keeps its TOP_K most
    likely tokens, whose terms are summed exactly, and TAIL_SAMPLES tokens drawn from the rest of
    its distribution, whose terms' mean times the rest's mass estimates the remainder without bias
    (seeded: the same draws every time). tests/benchmarks/README.md has it against the exact KL.
    """
    windows = evaluator.text_windows(data.text, data.probe.max_tokens)
    reference = before if isinstance(before, dict) and "kept_ids" in before else None
    sums: dict[str, list[torch.Tensor]] = {"nll": [], "hits": [], "kl": [], "kept_ids": [], "kept_logprobs": []}
    generator = torch.Generator().manual_seed(0)
    done = 0  # predicted positions so far: where this chunk's rows of the base's kept tokens start
    with evaluator.progress(len(windows), unit="window") as bar:
        for start in range(0, len(windows), TEXT_WINDOWS):  # full-vocabulary rows: a few windows at a time
            chunk = windows[start : start + TEXT_WINDOWS]
            sizes = sizes_of(chunk)
            logprobs = evaluator.next_token_logprobs(chunk).cpu()
            targets = torch.tensor([token for window in chunk for token in window[1:]])
            nll = -logprobs.gather(-1, targets[:, None]).squeeze(-1)
            sums["nll"] += [part.sum() for part in nll.double().split(sizes)]
            kept = kept_tokens(logprobs, generator)  # the most likely first: kept[:, 0] is the argmax
            sums["hits"] += [part.sum() for part in (kept[:, 0] == targets).float().split(sizes)]
            sums["kept_ids"].append(kept.int())
            sums["kept_logprobs"].append(logprobs.gather(-1, kept))
            if reference is not None:
                rows = slice(done, done + len(targets))
                kl = estimated_kl(reference["kept_logprobs"][rows], reference["kept_ids"][rows].long(), logprobs)
                sums["kl"] += [part.sum() for part in kl.double().split(sizes)]
            done += len(targets)
            bar.update(len(chunk))
    items = {
        "nll": torch.stack(sums["nll"]),
        "tokens": torch.tensor(sizes_of(windows), dtype=torch.float64),
        "top1": torch.stack(sums["hits"]),
        "kept_ids": torch.cat(sums["kept_ids"]),
        "kept_logprobs": torch.cat(sums["kept_logprobs"]),  # float32: in half precision the KL was 1% off
    }
    tokens = float(items["tokens"].sum())
    nll = float(items["nll"].sum()) / tokens
    metrics = {"perplexity": math.exp(nll), "nll_per_token": nll, "top1": float(items["top1"].sum()) / tokens}
    metrics |= {"tokens": int(tokens), "windows": len(windows)}
    if reference is not None:
        items["kl"] = torch.stack(sums["kl"])
        metrics |= {
            "kl_per_token": float(items["kl"].sum()) / tokens,
            "kl_top_k": TOP_K,
            "kl_tail_samples": TAIL_SAMPLES,
        }
    return metrics, items


def sizes_of(windows: list[list[int]]) -> list[int]:
    """Predicted tokens per window (its first token is context only)."""
    return [len(w) - 1 for w in windows]


def kept_tokens(logprobs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[positions, TOP_K + TAIL_SAMPLES] token ids: the most likely, then draws (with replacement)
    from the rest of each position's distribution; no draws when the top tokens are the whole
    vocabulary."""
    top = logprobs.topk(min(TOP_K, logprobs.shape[-1]), dim=-1).indices
    if logprobs.shape[-1] <= TOP_K or TAIL_SAMPLES == 0:
        return top
    rest = logprobs.exp().scatter_(-1, top, 0.0)
    empty = rest.sum(-1) == 0  # the rest's mass underflowed: any draw will do, its terms weigh ~0
    if empty.any():
        rest[empty] = 1.0
        rest.scatter_(-1, top, 0.0)
    return torch.cat([top, torch.multinomial(rest, TAIL_SAMPLES, replacement=True, generator=generator)], dim=-1)


def estimated_kl(base_kept: torch.Tensor, kept_ids: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """Per-position KL(base || tuned): exact over the base's top tokens (the first TOP_K of
    `kept_ids`), plus the rest's mass times the mean log-ratio of the tokens drawn from it
    (`base_kept`: the base's log-probs of `kept_ids`; `tuned`: the tuned model's full log-probs)."""
    k = min(TOP_K, kept_ids.shape[-1])
    ratio = base_kept - tuned.gather(-1, kept_ids)
    top = base_kept[:, :k].exp()
    kl = (top * ratio[:, :k]).sum(-1)
    if kept_ids.shape[-1] > k:
        kl = kl + (1 - top.sum(-1)).clamp_min(0) * ratio[:, k:].mean(-1)
    return kl


def perplexity_difference(before: dict, after: dict, idx: torch.Tensor) -> torch.Tensor:
    """after - before of the token-weighted perplexity, for every resample of windows: both models
    on the same resampled windows, so the interval is the change's, not each value's."""
    tokens = before["tokens"][idx].sum(dim=1)
    return (after["nll"][idx].sum(dim=1) / tokens).exp() - (before["nll"][idx].sum(dim=1) / tokens).exp()


def answer_matches(output: str, answer: str, check: str) -> bool:
    """A generated answer against the expected one, both normalised (case, punctuation, articles)."""
    if check == "contains":
        return normalize_answer(answer) in normalize_answer(output)
    return normalize_answer(output) == normalize_answer(answer)


@dataclass(frozen=True)
class Probe:
    """One kind of forgetting probe: what it reads, how it scores, and which number leads.

    A one-model probe (`score`) runs on the base model before training (its result can come
    from the score cache) and on the tuned model after, and the report pairs the two. A
    two-model probe (`compare`) runs once, after training, with base and tuned model on the same
    items: a measurement of the difference itself, or several numbers from one pass over both.
    A one-model probe's tuned pass is handed the base pass's items, so a kind can also measure
    the tuned model against what the base pass kept (the text kind's drift, `second`)."""

    reads_text: bool  # a .txt file cut into windows of tokens; else rows through a template
    headline: str  # the metric the report leads with
    higher_is_better: bool
    score: Callable[[Evaluator, ProbeData, Items], tuple[dict, Items]] | None = None
    compare: Callable[[Evaluator, Evaluator, ProbeData], dict] | None = None
    # The paired change of the headline for resampled items, (before, after, idx) -> [resamples];
    # None: the change of the items' mean (accuracy, a window's top-1).
    paired: Callable[[Items, Items, torch.Tensor], torch.Tensor] | None = None
    second: str | None = None  # a metric of the tuned pass reported beside the headline (drift)


# The probe kinds (the schema's `$defs.probe.kind` names the same; a test keeps them in step).
PROBES = {
    "multiple_choice": Probe(reads_text=False, headline="acc", higher_is_better=True, score=multiple_choice),
    "generation": Probe(reads_text=False, headline="accuracy", higher_is_better=True, score=generation),
    "perplexity": Probe(reads_text=True, headline="perplexity", higher_is_better=False, score=perplexity),
    "drift": Probe(reads_text=True, headline="kl_per_token", higher_is_better=False, compare=drift),
    "next_token": Probe(reads_text=True, headline="top1", higher_is_better=True, score=next_token),
    "text": Probe(
        reads_text=True,
        headline="perplexity",
        higher_is_better=False,
        score=text,
        paired=perplexity_difference,
        second="kl_per_token",
    ),
}
