"""An experiment's comparison: its runs side by side on the primary task, paired against the best
variant, with forgetting, cost, a data-efficiency curve and one sentence that recommends a variant.

Everything is read back from the experiment folder (spec.yaml, experiment.json, each run's
report.json and predictions.jsonl), so `runner compare <experiment folder>` writes it again.

Pairing: every run is scored on the same test rows, so a difference between two variants is
bootstrapped over rows (the same resampled rows for both), which is far tighter than comparing
two separate intervals. With several seeds a row's outcome is its mean over the seeds: the
interval is then over test rows for the seed-averaged model, and the spread over seeds is
reported next to it as mean ± sd.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from runner import plots, stats
from runner import report as reporting
from runner.spec import read_spec_file

RUNG_LINES = (
    "majority",
    "baseline_tfidf",
    "base_zero_shot",
    "base_few_shot",
)  # the reference lines: no model, then the untouched model


@dataclass
class Variant:
    """One variant's runs (one per seed) and what the comparison says about them."""

    name: str
    description: str = ""
    runs: list[str] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)  # complete runs only
    statuses: dict[str, str] = field(default_factory=dict)
    rows: torch.Tensor | None = None  # per test row: correct, averaged over seeds
    train_rows: int | str | None = None

    @property
    def complete(self) -> bool:
        return bool(self.reports)


def write_comparison(parent: Path) -> tuple[Path, Path, str]:
    """comparison.json, comparison.md (+ plots/*.png) and comparison.html in `parent`."""
    result = compare(parent)
    reporting.write_json(parent / "comparison.json", result)
    figures = comparison_figures(result)
    pngs = {key: plots.png_bytes(fig) for key, fig in figures.items()}
    for fig in figures.values():
        plots.close(fig)
    if pngs:
        (parent / "plots").mkdir(exist_ok=True)
        for key, png in pngs.items():
            (parent / "plots" / f"{key}.png").write_bytes(png)
    blocks = document(result, pngs)
    markdown = reporting.to_markdown(blocks, {k: f"plots/{k}.png" for k in pngs})
    md_path, html_path = parent / "comparison.md", parent / "comparison.html"
    md_path.write_text(markdown)
    uris = {key: plots.data_uri(png) for key, png in pngs.items()}
    html_path.write_text(reporting.to_html(blocks, uris, f"{result['name']}: comparison"))
    return md_path, html_path, markdown


def is_experiment(folder: Path) -> bool:
    return (folder / "experiment.json").is_file() and (folder / "variants").is_dir()


# --- reading the runs and pairing them ------------------------------------------------------


def compare(parent: Path) -> dict:
    spec = read_spec_file(parent / "spec.yaml")
    primary, margin = spec["primary_task"], spec["comparison"]["margin"]
    samples, seed = spec["evaluation"]["bootstrap_samples"], spec["seed"]
    states = json.loads((parent / "experiment.json").read_text())["runs"]
    variants = read_variants(parent, states, primary)
    done = [v for v in variants if v.complete]
    metric = reporting.headline(done[0].reports[0]["tasks"][primary]["test"]["fine_tuned"]) if done else "accuracy"
    n_rows = len(done[0].rows) if done else 0
    idx = stats.resample_indices(n_rows, samples, seed) if done and samples > 0 else None
    best = max(done, key=lambda v: float(v.rows.mean())) if done else None
    entries = {v.name: variant_entry(v, best, primary, metric, idx) for v in variants}
    return {
        "name": spec["name"],
        "folder": str(parent),
        "primary_task": primary,
        "metric": metric,
        "test_rows": n_rows,
        "margin": margin,
        "seeds": spec.get("seeds"),
        "best": best.name if best else None,
        "base": base_lines_of(done, primary),
        "variants": entries,
        # Runs without a complete report (pending, running elsewhere, failed): the comparison
        # covers the complete ones only, and says so.
        "incomplete": {name: state for v in variants for name, state in v.statuses.items() if state != "complete"},
        "curve": curve_points(variants, entries, primary),
        "recommendation": recommend(entries, best.name if best else None, margin, n_rows, base_lines_of(done, primary)),
    }


def read_variants(parent: Path, states: dict[str, str], primary: str) -> list[Variant]:
    variants: dict[str, Variant] = {}
    for name in states:
        folder = parent / "variants" / name
        report = _read_json(folder / "report.json")
        run = (report or {}).get("variant") or {"variant": name, "description": ""}
        v = variants.setdefault(run["variant"], Variant(run["variant"], run.get("description", "")))
        v.runs.append(name)
        v.train_rows = run.get("train_rows")
        status = (report or {}).get("status", states[name])
        v.statuses[name] = status
        if status == "complete":
            v.reports.append(report)
    for v in variants.values():
        outcomes = [
            row_outcomes(parent / "variants" / name, primary) for name in v.runs if v.statuses[name] == "complete"
        ]
        if outcomes:
            rows = sorted(outcomes[0])  # test row numbers, the same in every run
            v.rows = torch.tensor([[o[r] for r in rows] for o in outcomes], dtype=torch.float).mean(0)
    return list(variants.values())


def row_outcomes(folder: Path, task: str) -> dict[int, float]:
    """Test row -> 1.0 if the fine-tuned model got it right, from predictions.jsonl."""
    out = {}
    with open(folder / "predictions.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if record["task"] == task and record["rung"] == "fine_tuned":
                out[record["row"]] = float(record["correct"])
    return out


def variant_entry(v: Variant, best: Variant | None, primary: str, metric: str, idx: torch.Tensor | None) -> dict:
    entry = {"description": v.description, "runs": v.statuses, "train_rows": v.train_rows}
    if not v.complete:
        return entry
    tests = [r["tasks"][primary]["test"]["fine_tuned"] for r in v.reports]
    values = [t[metric] for t in tests]
    first = v.reports[0]
    entry.update(
        {
            "method": first["model"]["method"],
            "replay": (first.get("training_data") or {}).get("replay"),
            "seeds_done": len(values),
            metric: round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "per_seed": values,
            "ci95": stats.interval(stats.accuracy_samples(v.rows, idx)) if idx is not None else None,
            "forgetting": forgetting(v.reports),
            "cost": cost(v.reports),
        }
    )
    if "f1_macro" in tests[0]:
        entry["f1_macro"] = round(statistics.fmean(t["f1_macro"] for t in tests), 4)
    others = [name for name in first["tasks"] if name != primary]
    if others:  # a multi-task variant's other tasks: their own test metric (not compared)
        entry["other_tasks"] = {}
        for name in others:
            runs = [r["tasks"][name]["test"]["fine_tuned"] for r in v.reports]
            key = reporting.headline(runs[0])
            entry["other_tasks"][name] = {key: round(statistics.fmean(m[key] for m in runs), 4)}
    if best is not None and best is not v and idx is not None:
        delta = stats.accuracy_samples(v.rows, idx) - stats.accuracy_samples(best.rows, idx)
        entry["delta_to_best"] = round(float(v.rows.mean() - best.rows.mean()), 4)
        entry["delta_ci95"] = stats.interval(delta)
    return entry


def forgetting(reports: list[dict]) -> dict:
    """Per probe: before, after and the change (means over seeds), the paired interval of a
    single seed's change, and whether it shows forgetting (the report's own rule, report.forgot)."""
    out = {}
    for name in reports[0].get("forgetting", {}):
        entries = [r["forgetting"][name] for r in reports if name in r.get("forgetting", {})]
        first = entries[0]
        if first["kind"] == "drift":
            out[name] = {"kind": "drift", "value": round(statistics.fmean(e["value"] for e in entries), 6)}
            continue
        out[name] = {
            "kind": first["kind"],
            "metric": first["metric"],
            "before": first["before"],
            "after": round(statistics.fmean(e["after"] for e in entries), 4),
            "delta": round(statistics.fmean(e["delta"] for e in entries), 4),
            "delta_ci95": first.get("delta_ci95") if len(entries) == 1 else None,
            "forgot": any(reporting.forgot(e) for e in entries),
        }
    return out


def _trainable(cost: dict) -> str:
    """Trainable parameters, and their share of the model's."""
    trainable, total = cost.get("trainable_params"), cost.get("total_params")
    if trainable is None:
        return "—"
    if not total:
        return f"{trainable:,}"
    share = 100 * trainable / total
    return f"{trainable:,} ({share:.3g}%)" if share < 100 else f"{trainable:,} (100%)"


def cost(reports: list[dict]) -> dict:
    costs = [r.get("cost", {}) for r in reports]

    def mean(key: str, digits: int = 1):
        values = [c[key] for c in costs if c.get(key) is not None]
        return round(statistics.fmean(values), digits) if values else None

    latency = [r["tasks"][t]["test"]["fine_tuned"].get("ms_per_example") for r in reports for t in r["tasks"]]
    latency = [x for x in latency if x is not None]
    return {
        "trainable_params": costs[0].get("trainable_params"),
        "total_params": costs[0].get("total_params"),
        "train_seconds": mean("train_seconds"),
        "tokens_per_second": mean("tokens_per_second"),
        "peak_rss_mb": max((c.get("peak_rss_mb") or 0 for c in costs), default=None),
        "checkpoint_mb": mean("checkpoint_mb", 2),
        "ms_per_example": round(statistics.fmean(latency), 1) if latency else None,
        "epochs_run": [r.get("training", {}).get("epochs_run") for r in reports],
    }


def base_lines_of(done: list[Variant], primary: str) -> dict:
    return base_lines(done[0].reports[0], primary) if done else {}


def base_lines(report: dict, primary: str) -> dict:
    """The untouched model's rungs on the primary task (scored once, the same in every run)."""
    tests = report["tasks"][primary]["test"]
    out = {}
    for rung in RUNG_LINES:
        if rung in tests:
            m = tests[rung]
            metric = reporting.headline(m)
            out[rung] = {
                metric: m[metric],
                "ci95": m.get("ci95", {}).get(metric),
                "prompt_tokens_mean": m.get("prompt_tokens_mean"),
            }
    return out


def curve_points(variants: list[Variant], entries: dict, primary: str) -> list[dict]:
    """The data-efficiency curve: curve runs (rows-<n>) by the training rows they had."""
    points = []
    for v in variants:
        e = entries[v.name]
        if v.train_rows is None or not v.complete:
            continue
        per_epoch = v.reports[0].get("training_data", {}).get("per_epoch", {})
        rows = per_epoch.get(primary, {}).get("available")
        points.append({"variant": v.name, "train_rows": rows, "requested": v.train_rows, **_metric_of(e)})
    return sorted(points, key=lambda p: p["train_rows"] or 0)


def _metric_of(entry: dict) -> dict:
    return {k: entry[k] for k in ("accuracy", "exact_match", "ci95", "sd") if k in entry}


# --- the recommendation ---------------------------------------------------------------------


def recommend(entries: dict, best: str | None, margin: float, n_rows: int, base: dict | None = None) -> dict:
    """Which variant to use, and why, in one sentence.

    Against the best variant (highest mean), each other variant's paired 95% interval is:
    above -margin (non-inferior: as good, within the margin), entirely below zero and below
    -margin (worse), or neither (undecided: the test set cannot tell). Any undecided variant
    makes the answer "inconclusive". Otherwise the recommendation is the cheapest non-inferior
    variant: no measurable forgetting first, then fewest trainable parameters, then training time.
    """
    done = {name: e for name, e in entries.items() if "cost" in e}
    points = f"{margin * 100:g} points"
    if not done:
        return {"verdict": "none", "sentence": "No run finished, so there is nothing to recommend yet."}
    if len(done) == 1:
        return {
            "verdict": "single",
            "variant": best,
            "sentence": f"Only {best} finished; rerun the experiment to compare it with the others.",
        }
    verdicts = {}
    for name, e in done.items():
        if name == best:
            continue
        lo, hi = e["delta_ci95"]
        verdicts[name] = "non-inferior" if lo > -margin else "worse" if hi < 0 else "undecided"
    undecided = [n for n, v in verdicts.items() if v == "undecided"]
    if undecided:
        widest = min(undecided, key=lambda n: done[n]["delta_ci95"][0])
        lo, hi = done[widest]["delta_ci95"]
        return {
            "verdict": "inconclusive",
            "verdicts": verdicts,
            "sentence": (
                f"Inconclusive: the test set cannot tell these apart. {best} scored highest, but "
                f"{_names(undecided)} could be as good or more than {points} worse (paired 95% CI of "
                f"{widest} − {best}: {_pts(lo)}..{_pts(hi)} points on {n_rows} test rows); more test rows or seeds "
                "would decide it."
            ),
        }
    candidates = [best, *(n for n, v in verdicts.items() if v == "non-inferior")]
    pick = min(candidates, key=lambda n: _cost_key(done[n]))
    e, b = done[pick], done[best]
    if pick == best:
        others = [n for n in verdicts]
        worse = [n for n, v in verdicts.items() if v == "worse"]
        if len(worse) == len(others):
            why = f"every other variant is measurably worse ({_deltas(done, worse)})"
        else:
            why = f"no cheaper variant is within {points} of it ({_deltas(done, others)})"
        sentence = f"Use {best}: it scored highest ({_score(b)}) and {why}.{_forgetting_words(e, ending=False)}"
    else:
        lo, hi = e["delta_ci95"]
        sentence = (
            f"Use {pick}: it is within {points} of {best} (paired 95% CI {_pts(lo)}..{_pts(hi)} points)"
            f"{_cheaper(e, b)}{_forgetting_words(e, ending=True)}"
        )
    sentence += _above_majority(e, (base or {}).get("majority"))
    return {"verdict": "recommend", "variant": pick, "verdicts": verdicts, "sentence": sentence}


def _above_majority(entry: dict, majority: dict | None) -> str:
    """A caution when the recommended variant does not clearly beat answering the most frequent
    label: its 95% interval reaches down to the majority class's score."""
    metric = "accuracy" if "accuracy" in entry else "exact_match"
    if not majority or metric not in majority or not entry.get("ci95") or entry["ci95"][0] > majority[metric]:
        return ""
    return (
        f" But it does not clearly beat always answering the most frequent label ({metric} "
        f"{majority[metric]:.3f}, inside its 95% CI): more data or training would."
    )


def _cost_key(entry: dict) -> tuple:
    forgets = any(p.get("forgot") for p in entry["forgetting"].values())
    cost = entry["cost"]
    return (forgets, cost.get("trainable_params") or 0, cost.get("train_seconds") or 0)


def _forgetting_words(entry: dict, ending: bool) -> str:
    """The recommended variant's forgetting: the end of the sentence (`ending`), or a sentence."""
    probes = {n: p for n, p in entry["forgetting"].items() if p["kind"] != "drift"}
    lost = [n for n, p in probes.items() if p.get("forgot")]
    if not probes:
        return (
            "; forgetting was not measured (add evaluation.forgetting)." if ending else " Forgetting was not measured."
        )
    if not lost:
        words = "no measurable forgetting on " + ", ".join(probes)
        return f" and with {words}." if ending else f" It shows {words}."
    words = ", ".join(f"{n} ({probes[n]['delta']:+.3f})" for n in lost)
    return f", but it forgot on {words}." if ending else f" It forgot on {words}."


def _cheaper(e: dict, b: dict) -> str:
    parts = []
    mine, theirs = e["cost"].get("trainable_params"), b["cost"].get("trainable_params")
    if mine and theirs and mine < theirs:
        parts.append(f"at 1/{theirs / mine:.0f} of the trainable parameters")
    mine, theirs = e["cost"].get("train_seconds"), b["cost"].get("train_seconds")
    if mine and theirs and mine < theirs:
        parts.append(f"in {mine / theirs:.0%} of the training time")
    return (" " + ", ".join(parts)) if parts else ""


def _deltas(done: dict, names: list[str]) -> str:
    return "; ".join(f"{n}: {_pts(done[n]['delta_ci95'][0])}..{_pts(done[n]['delta_ci95'][1])} points" for n in names)


def _score(entry: dict) -> str:
    metric = "accuracy" if "accuracy" in entry else "exact_match"
    lo, hi = entry["ci95"] or (None, None)
    return f"{metric} {entry[metric]:.3f}" + (f", 95% CI {lo:.2f}..{hi:.2f}" if lo is not None else "")


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# --- the page -------------------------------------------------------------------------------


def document(result: dict, pngs: dict) -> list[tuple]:
    metric, primary = result["metric"], result["primary_task"]
    blocks: list[tuple] = [
        ("h1", f"{result['name']}: which approach?"),
        ("p", f"**Recommendation.** {result['recommendation']['sentence']}"),
        (
            "p",
            f"Primary task `{primary}`, {result['test_rows']} test rows, the same in every run; the base model was "
            f"scored once for all runs. Deltas are paired bootstraps against the best variant "
            f"({result['best']}); non-inferiority margin {result['margin'] * 100:g} points of {metric}.",
        ),
    ]
    if result.get("incomplete"):
        missing = ", ".join(f"{name} ({state})" for name, state in result["incomplete"].items())
        blocks.append(
            (
                "p",
                f"**Not complete:** {missing}. This comparison covers the complete runs only; "
                f"`runner compare {result['folder']}` writes it again once they are.",
            )
        )
    names = list(result["variants"])
    rows = []
    for name in names:
        e = result["variants"][name]
        if "cost" not in e:
            rows.append([name, _status(e), *["—"] * 5])
            continue
        value = f"{e[metric]:.3f}" + (f" ± {e['sd']:.3f}" if e.get("sd") is not None else "")
        ci = f"{e['ci95'][0]:.2f}..{e['ci95'][1]:.2f}" if e.get("ci95") else "—"
        delta = (
            f"{_pts(e['delta_to_best'])} ({_pts(e['delta_ci95'][0])}..{_pts(e['delta_ci95'][1])})"
            if "delta_ci95" in e
            else "best"
        )
        verdict = result["recommendation"].get("verdicts", {}).get(name, "best" if name == result["best"] else "")
        rows.append([name, _status(e), value, ci, f"{e['f1_macro']:.3f}" if "f1_macro" in e else "—", delta, verdict])
    seeds = " (mean ± sd over seeds)" if result.get("seeds") else ""
    blocks += [
        ("h2", f"Task `{primary}`"),
        (
            "table",
            ["variant", "runs", f"{metric}{seeds}", "95% CI", "macro-F1", "Δ to best, points (95% CI)", "verdict"],
            rows,
        ),
    ]
    others = [(n, task, m) for n in names for task, m in result["variants"][n].get("other_tasks", {}).items()]
    if others:
        blocks.append(
            (
                "p",
                "Other tasks trained in a variant (their own test rows; not part of the comparison): "
                + "; ".join(f"{n}: {task} {', '.join(f'{k} {v:.3f}' for k, v in m.items())}" for n, task, m in others)
                + ".",
            )
        )
    base = result["base"]
    if base:
        lines = []
        for rung, m in base.items():
            ci = m.get("ci95")
            lines.append(
                [
                    reporting.RUNG_TITLES[rung],
                    f"{m[metric]:.3f}",
                    f"{ci[0]:.2f}..{ci[1]:.2f}" if ci else "—",
                    f"{m['prompt_tokens_mean']:.0f}" if m.get("prompt_tokens_mean") is not None else "—",
                ]
            )
        blocks.append(("table", ["reference, same test rows", metric, "95% CI", "prompt tokens / row"], lines))
    if "variants" in pngs:
        blocks.append(("img", "variants", f"{metric} per variant"))
    probes = list(dict.fromkeys(p for e in result["variants"].values() for p in e.get("forgetting", {})))
    if probes:
        rows = []
        for name in names:
            f = result["variants"][name].get("forgetting")
            if f is None:
                continue
            rows.append([name, *(_probe_cell(f.get(p)) for p in probes)])
        blocks += [
            ("h2", "Forgetting (before → after, paired 95% CI of the change)"),
            ("table", ["variant", *probes], rows),
        ]
    rows = []
    for name in names:
        e = result["variants"][name]
        if "cost" not in e:
            continue
        c = e["cost"]
        replay = e.get("replay")
        rows.append(
            [
                name,
                e.get("method", "—"),
                f"{replay['share']:g} of {replay['of']}" if replay else "—",
                _trainable(c),
                _fmt(c.get("train_seconds"), "{:.0f}"),
                _fmt(c.get("tokens_per_second"), "{:.0f}"),
                _fmt(c.get("peak_rss_mb"), "{:,.0f}"),
                _fmt(c.get("checkpoint_mb"), "{:.1f}"),
                _fmt(c.get("ms_per_example"), "{:.1f}"),
            ]
        )
    blocks += [
        ("h2", "Cost"),
        (
            "table",
            [
                "variant",
                "method",
                "replay",
                "trainable params",
                "train s",
                "tokens/s",
                "peak memory MB",
                "exported model MB",
                "ms / test row",
            ],
            rows,
        ),
    ]
    if result["curve"]:
        blocks.append(("h2", "How much data: the learning curve"))
        rows = [
            [
                p["variant"],
                p["train_rows"],
                f"{p[metric]:.3f}",
                f"{p['ci95'][0]:.2f}..{p['ci95'][1]:.2f}" if p.get("ci95") else "—",
            ]
            for p in result["curve"]
        ]
        blocks.append(("table", ["run", "training rows", metric, "95% CI"], rows))
        if "curve" in pngs:
            blocks.append(("img", "curve", f"{metric} by training rows"))
    return blocks


def _status(entry: dict) -> str:
    runs = entry["runs"]
    done = sum(s == "complete" for s in runs.values())
    return f"{done}/{len(runs)} complete" if done < len(runs) else f"{done} complete"


def _probe_cell(p: dict | None) -> str:
    if p is None:
        return "—"
    if p["kind"] == "drift":
        return f"KL {p['value']:.4f}"
    ci = p.get("delta_ci95")
    text = f"{p['before']:.3f} → {p['after']:.3f} ({p['delta']:+.3f}"
    text += f", {ci[0]:+.3f}..{ci[1]:+.3f})" if ci else ")"
    return text + (" forgot" if p.get("forgot") else "")


def _fmt(value, fmt: str) -> str:
    return fmt.format(value) if value is not None else "—"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def comparison_figures(result: dict) -> dict:
    figures = {}
    done = {n: e for n, e in result["variants"].items() if "cost" in e}
    if done:
        figures["variants"] = plots.variants_chart(done, result["base"], result["metric"])
    if len(result["curve"]) >= 2:
        figures["curve"] = plots.curve_chart(result["curve"], result["base"], result["metric"])
    return figures
