"""The recommendation across an experiment's runs: non-inferior, worse or inconclusive, and
the cheapest non-inferior run."""

from __future__ import annotations


def recommend(
    entries: dict, best: str | None, margin: float, n_rows: int, base: dict | None = None, noun: str = "variant"
) -> dict:
    """Which variant to use, and why, in one sentence that calls the entries `noun` (compare: "run").

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
                f"{widest} − {best}: {points_text(lo)}..{points_text(hi)} points on {n_rows} test rows); more test rows or seeds "
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
            why = f"every other {noun} is measurably worse ({_deltas(done, worse)})"
        else:
            why = f"no cheaper {noun} is within {points} of it ({_deltas(done, others)})"
        sentence = f"Use {best}: it scored highest ({_score(b)}) and {why}.{_forgetting_words(e, ending=False)}"
    else:
        lo, hi = e["delta_ci95"]
        sentence = (
            f"Use {pick}: it is within {points} of {best} (paired 95% CI {points_text(lo)}..{points_text(hi)} points)"
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
    """What "cheapest" orders by: no forgetting first, then trainable parameters, then training time."""
    forgets = any(p.get("forgot") for p in entry["forgetting"].values())
    cost = entry["cost"]
    return (forgets, cost.get("trainable_params") or 0, cost.get("train_seconds") or 0)


def _forgetting_words(entry: dict, ending: bool) -> str:
    """The recommended variant's forgetting: the end of the sentence (`ending`), or a sentence."""
    probes = {n: p for n, p in entry["forgetting"].items() if "value" not in p}
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
    """How the picked variant is cheaper than the best one: parameters, training time; "" when not."""
    parts = []
    mine, theirs = e["cost"].get("trainable_params"), b["cost"].get("trainable_params")
    if mine and theirs and mine < theirs:
        parts.append(f"at 1/{theirs / mine:.0f} of the trainable parameters")
    mine, theirs = e["cost"].get("train_seconds"), b["cost"].get("train_seconds")
    if mine and theirs and mine < theirs:
        parts.append(f"in {mine / theirs:.0%} of the training time")
    return (" " + ", ".join(parts)) if parts else ""


def _deltas(done: dict, names: list[str]) -> str:
    """Each named variant's paired interval to the best, in points."""
    return "; ".join(
        f"{n}: {points_text(done[n]['delta_ci95'][0])}..{points_text(done[n]['delta_ci95'][1])} points" for n in names
    )


def _score(entry: dict) -> str:
    """A variant's headline score with its 95% interval over test rows."""
    metric = "accuracy" if "accuracy" in entry else "exact_match"
    lo, hi = entry["ci95"] or (None, None)
    return f"{metric} {entry[metric]:.3f}" + (f", 95% CI {lo:.2f}..{hi:.2f}" if lo is not None else "")


def points_text(x: float) -> str:
    """A difference in accuracy (0..1) as signed percentage points, as every comparison table shows it."""
    return f"{x * 100:+.1f}"


def _names(names: list[str]) -> str:
    """Names as English: "a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
