"""Forgetting probes and bootstrap maths: against plain references and hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import base_spec, write_jsonl, write_spec

from runner.cli import main
from runner.data.encode import Encoder
from runner.evaluation.evaluator import Evaluator
from runner.evaluation.metrics import classification_metrics, kl_divergence
from runner.evaluation.probes import answer_matches, drift, load_probe, run_probe
from runner.model.tiny import random_tiny
from runner.report import uncertainty as stats
from runner.spec.load import load_spec


def tiny_evaluator(seed: int = 0, max_length: int = 64, batch_size: int = 3) -> Evaluator:
    model, tokenizer = random_tiny(seed)
    encoder = Encoder(tokenizer, max_length=max_length, chat_template=True)
    return Evaluator(model, encoder, batch_size=batch_size, max_new_tokens=4, device=torch.device("cpu"))


def probe_workdir(workdir):
    write_jsonl(
        workdir / "data" / "mc.jsonl",
        [
            {"q": "Which is a colour?", "options": ["red", "seven", "run"], "key": 0},
            {"q": "Which is a number?", "options": ["blue", "seven"], "key": 1},
            {"q": "Which one flies?", "options": ["stone", "fish", "bird", "table"], "key": 2},
            {"q": "Which is hot?", "options": ["ice", "fire"], "key": 1},
        ],
    )
    (workdir / "templates" / "mc.jinja").write_text("Q: {{ q }}\nA: ||| {{ options[key] }}")
    write_jsonl(
        workdir / "data" / "gen.jsonl",
        [{"ask": "Say yes.", "answer": "yes"}, {"ask": "Say no.", "answer": "no", "check": "contains"}],
    )
    (workdir / "templates" / "gen.jinja").write_text("{{ ask }} ||| {{ answer }}")
    (workdir / "data" / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 12)
    probes = [
        {
            "name": "mc",
            "kind": "multiple_choice",
            "data": "data/mc.jsonl",
            "template": "mc.jinja",
            "choices": "options",
        },
        {"name": "gen", "kind": "generation", "data": "data/gen.jsonl", "template": "gen.jinja"},
        {"name": "ppl", "kind": "perplexity", "data": "data/prose.txt", "max_tokens": 400},
        {"name": "drift", "kind": "drift", "data": "data/prose.txt", "max_tokens": 200},
        {"name": "text", "kind": "text", "data": "data/prose.txt", "max_tokens": 400},
    ]
    raw = base_spec()
    raw["evaluation"]["forgetting"] = probes
    return load_spec(write_spec(workdir / "probes.yaml", raw))


def test_multiple_choice_matches_a_plain_per_choice_reference(workdir):
    spec = probe_workdir(workdir)
    data = load_probe(spec.evaluation.forgetting[0])
    assert data.gold == [0, 1, 2, 1] and data.choices[2] == ["stone", "fish", "bird", "table"]
    evaluator = tiny_evaluator()
    metrics, correct = run_probe(evaluator, data)
    enc = evaluator.encoder
    raw_hits, norm_hits = [], []
    for prompt, choices, gold in zip(data.prompts, data.choices, data.gold):
        rows = [enc.join(enc.prompt_ids(prompt), enc.completion_ids(c, add_eos=False)) for c in choices]
        loglik = evaluator.sequence_logprobs(rows)  # one full sequence per choice, no cache
        raw_hits.append(int(loglik.argmax()) == gold)
        norm_hits.append(int((loglik / torch.tensor([len(c) for c in choices])).argmax()) == gold)
    assert correct.tolist() == [float(h) for h in raw_hits]
    assert metrics["acc"] == pytest.approx(sum(raw_hits) / 4)
    assert metrics["acc_norm"] == pytest.approx(sum(norm_hits) / 4)
    assert metrics["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4 + 1 / 2) / 4, abs=1e-4)


def test_perplexity_matches_a_direct_computation(workdir):
    spec = probe_workdir(workdir)
    data = load_probe(spec.evaluation.forgetting[2])
    evaluator = tiny_evaluator(max_length=64)
    metrics, _ = run_probe(evaluator, data)
    ids = evaluator.encoder.tokenizer(data.text, add_special_tokens=False)["input_ids"][:400]
    nll, count = 0.0, 0
    with torch.no_grad():
        evaluator.model.eval()
        for start in range(0, len(ids), 64):
            window = torch.tensor([ids[start : start + 64]])
            logits = evaluator.model(window).logits[0, :-1]
            nll += float(F.cross_entropy(logits, window[0, 1:], reduction="sum"))
            count += window.shape[1] - 1
    assert metrics["tokens"] == count == 400 - math.ceil(400 / 64)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_drift_is_zero_for_the_same_model_and_positive_for_another(workdir):
    spec = probe_workdir(workdir)
    data = load_probe(spec.evaluation.forgetting[3])
    a, b = tiny_evaluator(seed=0), tiny_evaluator(seed=1)
    assert drift(a, a, data)["kl_per_token"] == pytest.approx(0.0, abs=1e-6)
    moved = drift(a, b, data)
    assert moved["kl_per_token"] > 0.001 and moved["tokens"] == 200 - math.ceil(200 / 64)
    p = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0]]), -1)
    q = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0]]), -1)
    assert float(kl_divergence(p, q)) == pytest.approx(float((p.exp() * (p - q)).sum()))


def test_generation_checks_and_row_overrides(workdir):
    spec = probe_workdir(workdir)
    data = load_probe(spec.evaluation.forgetting[1])
    assert data.checks == ["exact", "contains"]
    assert answer_matches("Yes.", "yes", "exact") and not answer_matches("Yes, sure", "yes", "exact")
    assert answer_matches("I say no thanks", "no", "contains")


def test_bad_probe_rows_are_named(workdir):
    write_jsonl(workdir / "data" / "mc.jsonl", [{"q": "x", "options": ["a", "b"], "key": 5}])
    (workdir / "templates" / "mc.jinja").write_text("Q: {{ q }} ||| {{ options[key] | default('zzz') }}")
    raw = base_spec()
    raw["evaluation"]["forgetting"] = [
        {"name": "mc", "kind": "multiple_choice", "data": "data/mc.jsonl", "template": "mc.jinja", "choices": "options"}
    ]
    spec = load_spec(write_spec(workdir / "p.yaml", raw))
    from runner.errors import DataError

    with pytest.raises(DataError) as info:
        load_probe(spec.evaluation.forgetting[0])
    assert info.value.problems == ["row 1: the answer 'zzz' is not among the choices ['a', 'b']."]


def test_probe_spec_problems(workdir):
    raw = base_spec()
    raw["evaluation"]["forgetting"] = [
        {"name": "a", "kind": "multiple_choice", "data": "data/sentiment.jsonl", "template": "sentiment.jinja"},
        {"name": "b", "kind": "perplexity", "data": "data/sentiment.jsonl"},
        {"name": "c", "kind": "drift", "data": "../nowhere/wiki.txt"},
    ]
    from runner.errors import SpecError

    with pytest.raises(SpecError) as info:
        load_spec(write_spec(workdir / "p.yaml", raw))
    assert info.value.problems == [
        "$.evaluation.forgetting[0]: a multiple_choice probe needs 'choices', a Jinja expression giving the list of choice texts.",
        "$.evaluation.forgetting[1].data: a perplexity probe reads a .txt file.",
        f"$.evaluation.forgetting[2].data: file '../nowhere/wiki.txt' not found (relative to {workdir.name}/); check the path.",
    ]


def test_builtin_general_suite_is_complete(workdir):
    raw = base_spec()
    raw["evaluation"]["forgetting"] = ["general"]
    spec = load_spec(write_spec(workdir / "g.yaml", raw))
    probes = {p.name: load_probe(p) for p in spec.evaluation.forgetting}
    assert {p.probe.kind for p in probes.values()} == {"multiple_choice", "generation", "text"}
    mc = probes["general_mc"]
    assert len(mc.prompts) >= 200 and all(len(c) == 4 for c in mc.choices)
    assert sorted(set(mc.gold)) == [0, 1, 2, 3]
    assert len(probes["general_instructions"].prompts) >= 50
    assert len(probes["general_text"].text.split()) >= 15000  # > 20,000 tokens with a subword tokenizer


def test_forgetting_section_end_to_end(workdir):
    probe_workdir(workdir)
    assert main(["run", str(workdir / "probes.yaml"), "--set", "training.epochs=1"]) == 0
    run_dir = next((workdir / "runs" / "tiny").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    forgetting = report["forgetting"]
    assert set(forgetting) == {"mc", "gen", "ppl", "drift", "text"}
    mc = forgetting["mc"]
    assert mc["metric"] == "acc" and mc["delta"] == pytest.approx(mc["after"] - mc["before"], abs=1e-4)
    assert len(mc["delta_ci95"]) == 2 and "acc_norm" in mc["details_after"]
    ppl = forgetting["ppl"]
    assert ppl["retention"] == pytest.approx(ppl["before"] / ppl["after"], rel=1e-3)
    assert forgetting["drift"]["value"] > 0 and forgetting["drift"]["kind"] == "drift"
    # The text kind: the perplexity probe's numbers on the same text, with a paired interval on
    # the change, and the drift from the base measured on its tuned pass.
    text = forgetting["text"]
    assert text["before"] == pytest.approx(ppl["before"], rel=1e-3) and text["after"] == pytest.approx(
        ppl["after"], rel=1e-3
    )
    low, high = text["delta_ci95"]
    assert low <= text["delta"] <= high
    assert text["second"]["metric"] == "kl_per_token" and text["second"]["value"] > 0
    assert "next-token drift" in report["forgetting_summary"]
    assert report["forgetting_summary"].endswith(".")
    assert 'alt="retention per forgetting probe"' in (run_dir / "report.html").read_text()


def test_bootstrap_f1_and_accuracy_agree_with_the_point_metrics():
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    gold = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    identity = torch.arange(7).unsqueeze(0)
    point = classification_metrics(preds, gold, ("a", "b", "c"))
    assert float(stats.f1_macro_samples(preds, gold, 3, identity)[0]) == pytest.approx(point["f1_macro"])
    assert float(stats.accuracy_samples(preds == gold, identity)[0]) == pytest.approx(point["accuracy"])
    idx = stats.resample_indices(7, 500, seed=1)
    assert torch.equal(idx, stats.resample_indices(7, 500, seed=1))
    low, high = stats.interval(stats.accuracy_samples(preds == gold, idx))
    assert 0 <= low < point["accuracy"] < high <= 1
    assert stats.excludes_zero([0.01, 0.2]) and not stats.excludes_zero([-0.1, 0.2])


# A multiple-choice probe that did not move, and a small drift: report.json's probe entries.
MC_PROBE = {
    "kind": "multiple_choice",
    "metric": "acc",
    "before": 0.6,
    "after": 0.6,
    "delta": 0.0,
    "retention": 1.0,
    "delta_ci95": [-0.03, 0.03],
    "excludes_zero": False,
}
DRIFT_PROBE = {"kind": "drift", "metric": "kl_per_token", "value": 0.005}


def test_forgetting_sentence_tells_forgetting_shift_and_none_apart():
    from runner.report.sentences import forgetting_sentence as sentence
    from runner.results import ProbeResult

    def forgetting_sentence(entries: dict) -> str:
        return sentence({name: ProbeResult.from_json(e) for name, e in entries.items()})

    mc = MC_PROBE
    ppl = {
        "kind": "perplexity",
        "metric": "perplexity",
        "before": 20.0,
        "after": 20.1,
        "delta": 0.1,
        "retention": 0.995,
    }
    drift = DRIFT_PROBE
    assert forgetting_sentence({"mc": mc, "ppl": ppl, "drift": drift}).startswith(
        "No measurable forgetting: mc acc moved +0.000"
    )
    shifted = forgetting_sentence({"mc": mc, "ppl": {**ppl, "after": 21.2}, "drift": {**drift, "value": 0.07}})
    assert shifted.startswith(
        "No accuracy probe dropped measurably, but the model's general text behaviour shifted (ppl, drift)"
    )
    dropped = {**mc, "after": 0.5, "delta": -0.1, "delta_ci95": [-0.15, -0.05], "excludes_zero": True}
    assert forgetting_sentence({"mc": dropped, "ppl": ppl}).startswith("Forgetting detected on mc: mc acc moved -0.100")
    assert "Forgetting detected on ppl" in forgetting_sentence({"ppl": {**ppl, "after": 23.0}})


def test_resolution_sentence_states_what_each_probe_can_see_at_its_size():
    from runner.report.sentences import resolution_sentence
    from runner.results import ProbeResult

    mc = ProbeResult.from_json({**MC_PROBE, "details_before": {"n": 240}, "delta_ci95": [-0.04, 0.05]})
    text = {
        "kind": "text",
        "metric": "perplexity",
        "before": 20.0,
        "after": 20.4,
        "delta": 0.4,
        "details_before": {"windows": 16, "tokens": 8192},
        "delta_ci95": [0.2, 0.5],
    }
    drift = ProbeResult.from_json(DRIFT_PROBE)
    fine = resolution_sentence({"mc": mc, "text": ProbeResult.from_json(text), "drift": drift})
    assert fine == (
        "What each probe can see at its size (half its paired 95% interval; a smaller change does not show): "
        "mc ±0.045 acc over 240 items; text ±0.8% of its perplexity over 16 windows "
        "(finer than the 2% shift rule)."
    )
    coarse = resolution_sentence({"text": ProbeResult.from_json({**text, "delta_ci95": [-0.5, 0.5]})})
    assert (
        "±2.5% of its perplexity over 16 windows (too coarse for the 2% shift rule: give the probe more text" in coarse
    )
    assert resolution_sentence({"drift": drift}) == ""  # nothing paired, nothing to state


def test_the_probes_table_and_the_schema_name_the_same_kinds_and_the_same_text_readers():
    from runner.evaluation.probes import PROBES
    from runner.spec.types import schema

    kind = schema()["$defs"]["probe"]["properties"]["kind"]
    assert set(kind["enum"]) == set(PROBES)
    assert set(kind["x-reads-text"]) == {name for name, probe in PROBES.items() if probe.reads_text}
    for name, probe in PROBES.items():
        assert (probe.score is None) != (probe.compare is None), name  # one model or two, not both
        assert probe.headline


def test_next_token_top1_matches_a_per_window_reference_without_padding(workdir):
    """Windows are scored a few at a time, left-padded: each window's accuracy must equal the one
    from its own unpadded forward pass (a misaligned position would change it)."""
    from runner.evaluation.probes import next_token

    (workdir / "data" / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 12)
    raw = base_spec()
    raw["evaluation"]["forgetting"] = [{"name": "top", "kind": "next_token", "data": "data/prose.txt"}]
    spec = load_spec(write_spec(workdir / "top.yaml", raw))
    data = load_probe(spec.evaluation.forgetting[0])
    evaluator = tiny_evaluator(max_length=50)
    metrics, per_window = next_token(evaluator, data)
    windows = evaluator.text_windows(data.text, None)
    assert len(windows) > 3 and len(windows[-1]) != len(windows[0])  # a short last window: padding happens
    reference = []
    for window in windows:
        with torch.no_grad():
            logits = evaluator.model(input_ids=torch.tensor([window])).logits[0, :-1]
        reference.append(float((logits.argmax(-1) == torch.tensor(window[1:])).float().mean()))
    assert per_window.tolist() == pytest.approx(reference)
    assert metrics["top1"] == pytest.approx(sum(reference) / len(reference))
    assert metrics["tokens"] == sum(len(w) - 1 for w in windows) and metrics["windows"] == len(windows)


def test_next_token_probe_is_paired_before_and_after_in_a_run(workdir):
    (workdir / "data" / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 12)
    raw = base_spec()
    raw["evaluation"]["forgetting"] = [{"name": "top", "kind": "next_token", "data": "data/prose.txt"}]
    assert main(["run", str(write_spec(workdir / "top.yaml", raw))]) == 0
    (report_path,) = (workdir / "runs").rglob("report.json")
    entry = json.loads(report_path.read_text())["forgetting"]["top"]
    assert entry["kind"] == "next_token" and entry["metric"] == "top1" and entry["higher_is_better"] is True
    assert 0 <= entry["before"] <= 1 and 0 <= entry["after"] <= 1 and len(entry["delta_ci95"]) == 2


def test_text_probe_gives_perplexity_top1_and_the_drift_from_one_pass_per_model(workdir):
    """One pass per model: the base pass's perplexity and top-1 equal the perplexity and
    next_token kinds' on the same windows; the tuned pass's drift (top tokens exact, the rest
    estimated from seeded draws) is near the full-vocabulary KL, exact when the top tokens are
    the whole vocabulary, zero for the base against itself, and the same on a second pass."""
    from runner.evaluation import probes as probes_module
    from runner.evaluation.probes import next_token, perplexity, text

    (workdir / "data" / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 12)
    raw = base_spec()
    raw["evaluation"]["forgetting"] = [{"name": "t", "kind": "text", "data": "data/prose.txt"}]
    data = load_probe(load_spec(write_spec(workdir / "t.yaml", raw)).evaluation.forgetting[0])
    base, tuned = tiny_evaluator(seed=0, max_length=40), tiny_evaluator(seed=1, max_length=40)
    metrics, items = text(base, data)
    assert metrics["perplexity"] == pytest.approx(perplexity(base, data)[0]["perplexity"], rel=1e-4)
    assert metrics["top1"] == pytest.approx(
        float((next_token(base, data)[1] * items["tokens"]).sum() / items["tokens"].sum()), abs=1e-6
    )
    assert "kl_per_token" not in metrics  # no base items: nothing to measure drift against
    assert text(base, data, items)[0]["kl_per_token"] == pytest.approx(0.0, abs=1e-4)
    exact = drift(base, tuned, data)["kl_per_token"]
    estimate = text(tuned, data, items)[0]["kl_per_token"]
    assert estimate == pytest.approx(exact, rel=0.1)
    assert torch.equal(text(base, data)[1]["kept_ids"], items["kept_ids"])  # seeded draws
    vocab = len(base.encoder.tokenizer)
    original = probes_module.TOP_K
    try:
        probes_module.TOP_K = vocab  # every token kept: nothing drawn, the KL exact
        full_items = text(base, data)[1]
        assert full_items["kept_ids"].shape[-1] == vocab
        assert text(tuned, data, full_items)[0]["kl_per_token"] == pytest.approx(exact, rel=2e-3)
    finally:
        probes_module.TOP_K = original


def test_scoring_batches_are_bounded_by_rows_and_by_padded_tokens():
    from runner.evaluation.evaluator import token_batches

    lengths = [10, 10, 10, 10, 300, 300, 5000]
    batches = token_batches(list(range(7)), lengths, rows=3, tokens=700)
    # Three rows at most; 2 x 300 padded tokens fit in 700, 3 x 300 do not; a longer row goes alone.
    assert batches == [[0, 1, 2], [3, 4], [5], [6]]
    assert sorted(i for b in batches for i in b) == list(range(7))


@pytest.mark.parametrize("attention", ["sdpa", "eager", "copies"])
def test_candidates_sharing_prefixes_score_as_their_own_full_sequences(attention, monkeypatch):
    """Labels that share leading tokens go through one pass as a prefix tree (a custom 4-D mask:
    boolean for SDPA, additive for eager attention) or, where attention takes no such mask, on
    copies of the prompt's keys/values: every way gives each label the log-likelihood of its own
    full sequence, prompts of different lengths batched together."""
    from runner.evaluation import evaluator as evaluator_module

    evaluator = tiny_evaluator(max_length=400, batch_size=3)  # byte tokens: no prompt is cut
    if attention == "copies":
        monkeypatch.setattr(evaluator_module, "tree_attention", lambda model: None)
    else:
        evaluator.model.config._attn_implementation = attention
    enc = evaluator.encoder
    labels = ("card arrival", "card linking", "card", "cash withdrawal charge", "cash", "top up")
    prompts = [enc.prompt_ids(p) for p in ("Where is my card?", "Hi", "I was charged for taking out cash at an ATM.")]
    scores = evaluator.label_scores(prompts, labels, add_eos=True)
    for prompt, row in zip(prompts, scores):
        rows = [enc.join(prompt, enc.completion_ids(label, add_eos=True)) for label in labels]
        assert torch.allclose(row, evaluator.sequence_logprobs(rows), atol=1e-4), attention
