"""The comparison's text: tables, recommendation and figures."""

from __future__ import annotations

from runner.report import document as reporting
from runner.report import figures as plots
from runner.report.recommend import points_text


def _trainable(cost: dict) -> str:
    """Trainable parameters, and their share of the model's."""
    trainable, total = cost.get("trainable_params"), cost.get("total_params")
    if trainable is None:
        return "—"
    if not total:
        return f"{trainable:,}"
    share = 100 * trainable / total
    return f"{trainable:,} ({share:.3g}%)" if share < 100 else f"{trainable:,} (100%)"


def document(result: dict, pngs: dict) -> list[tuple]:
    """comparison.md/html as blocks (see report.document) from comparison.json's content and the
    keys of the figures drawn (`pngs`)."""
    return (
        _intro_blocks(result)
        + _primary_task_blocks(result)
        + _reference_blocks(result, pngs)
        + _forgetting_blocks(result)
        + _cost_blocks(result)
        + _curve_blocks(result, pngs)
    )


def _intro_blocks(result: dict) -> list[tuple]:
    """Title, the recommendation, how the runs were compared, and which runs are not complete."""
    blocks: list[tuple] = [
        ("h1", f"{result['name']}: which approach?"),
        ("p", f"**Recommendation.** {result['recommendation']['sentence']}"),
        (
            "p",
            f"Primary task `{result['primary_task']}`, {result['test_rows']} test rows, the same in every run; the "
            f"base model was scored once for all runs. Deltas are paired bootstraps against the best variant "
            f"({result['best']}); non-inferiority margin {result['margin'] * 100:g} points of {result['metric']}.",
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
    return blocks


def _primary_task_blocks(result: dict) -> list[tuple]:
    """The primary task's table, one row per variant, and the other tasks a variant trained."""
    metric, variants = result["metric"], result["variants"]
    rows = [_variant_row(name, e, result) for name, e in variants.items()]
    seeds = " (mean ± sd over seeds)" if result.get("seeds") else ""
    blocks: list[tuple] = [
        ("h2", f"Task `{result['primary_task']}`"),
        (
            "table",
            ["variant", "runs", f"{metric}{seeds}", "95% CI", "macro-F1", "Δ to best, points (95% CI)", "verdict"],
            rows,
        ),
    ]
    others = [(n, task, m) for n, e in variants.items() for task, m in e.get("other_tasks", {}).items()]
    if others:
        blocks.append(
            (
                "p",
                "Other tasks trained in a variant (their own test rows; not part of the comparison): "
                + "; ".join(f"{n}: {task} {', '.join(f'{k} {v:.3f}' for k, v in m.items())}" for n, task, m in others)
                + ".",
            )
        )
    return blocks


def _variant_row(name: str, e: dict, result: dict) -> list[str]:
    """One variant's row of the task table; dashes for a variant with no complete run."""
    if "cost" not in e:
        return [name, _status(e), *["—"] * 5]
    value = f"{e[result['metric']]:.3f}" + (f" ± {e['sd']:.3f}" if e.get("sd") is not None else "")
    ci = f"{e['ci95'][0]:.2f}..{e['ci95'][1]:.2f}" if e.get("ci95") else "—"
    delta = (
        f"{points_text(e['delta_to_best'])} ({points_text(e['delta_ci95'][0])}..{points_text(e['delta_ci95'][1])})"
        if "delta_ci95" in e
        else "best"
    )
    verdict = result["recommendation"].get("verdicts", {}).get(name, "best" if name == result["best"] else "")
    return [name, _status(e), value, ci, f"{e['f1_macro']:.3f}" if "f1_macro" in e else "—", delta, verdict]


def _reference_blocks(result: dict, pngs: dict) -> list[tuple]:
    """The untouched model's rungs on the same test rows, then the chart of every variant."""
    metric, blocks = result["metric"], []
    if result["base"]:
        lines = []
        for rung, m in result["base"].items():
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
    return blocks


def _forgetting_blocks(result: dict) -> list[tuple]:
    """Each probe's before → after per variant; nothing when no variant measured forgetting."""
    variants = result["variants"]
    probes = list(dict.fromkeys(p for e in variants.values() for p in e.get("forgetting", {})))
    if not probes:
        return []
    rows = [
        [name, *(_probe_cell(e["forgetting"].get(p)) for p in probes)]
        for name, e in variants.items()
        if e.get("forgetting") is not None
    ]
    return [
        ("h2", "Forgetting (before → after, paired 95% CI of the change)"),
        ("table", ["variant", *probes], rows),
    ]


COST_COLUMNS = [
    "variant",
    "method",
    "replay",
    "trainable params",
    "train s",
    "tokens/s",
    "peak memory MB",
    "exported model MB",
    "ms / test row",
]


def _cost_blocks(result: dict) -> list[tuple]:
    """What each complete variant cost: method, replay, parameters, time, speed, memory, size, latency."""
    rows = []
    for name, e in result["variants"].items():
        if "cost" not in e:
            continue
        c, replay = e["cost"], e.get("replay")
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
    return [("h2", "Cost"), ("table", COST_COLUMNS, rows)]


def _curve_blocks(result: dict, pngs: dict) -> list[tuple]:
    """The learning curve's table and chart; nothing when the experiment has no curve."""
    if not result["curve"]:
        return []
    metric = result["metric"]
    rows = [
        [
            p["variant"],
            p["train_rows"],
            f"{p[metric]:.3f}",
            f"{p['ci95'][0]:.2f}..{p['ci95'][1]:.2f}" if p.get("ci95") else "—",
        ]
        for p in result["curve"]
    ]
    blocks = [("h2", "How much data: the learning curve"), ("table", ["run", "training rows", metric, "95% CI"], rows)]
    if "curve" in pngs:
        blocks.append(("img", "curve", f"{metric} by training rows"))
    return blocks


def _status(entry: dict) -> str:
    """How many of a variant's runs are complete, of how many."""
    runs = entry["runs"]
    done = sum(s == "complete" for s in runs.values())
    return f"{done}/{len(runs)} complete" if done < len(runs) else f"{done} complete"


def _probe_cell(p: dict | None) -> str:
    """A probe's cell: one number for a two-model probe, else before → after (change, interval)."""
    if p is None:
        return "—"
    if "value" in p:  # a two-model probe: one number, no before/after
        return f"KL {p['value']:.4f}" if p["kind"] == "drift" else f"{p['value']:.4f}"
    ci = p.get("delta_ci95")
    text = f"{p['before']:.3f} → {p['after']:.3f} ({p['delta']:+.3f}"
    text += f", {ci[0]:+.3f}..{ci[1]:+.3f})" if ci else ")"
    second = p.get("second")
    if second:  # the text kind's drift beside its perplexity
        text += f"; {'KL' if second['metric'] == 'kl_per_token' else second['metric']} {second['value']:.4f}"
    return text + (" forgot" if p.get("forgot") else "")


def _fmt(value, fmt: str) -> str:
    """`value` formatted, or a dash when it was not measured."""
    return fmt.format(value) if value is not None else "—"


def comparison_figures(result: dict) -> dict:
    """The charts comparison.md shows: every variant's score, and the learning curve (2+ points)."""
    figures = {}
    done = {n: e for n, e in result["variants"].items() if "cost" in e}
    if done:
        figures["variants"] = plots.variants_chart(done, result["base"], result["metric"])
    if len(result["curve"]) >= 2:
        figures["curve"] = plots.curve_chart(result["curve"], result["base"], result["metric"])
    return figures
