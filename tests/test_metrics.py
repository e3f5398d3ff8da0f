"""Metric maths against hand-computed values, and scoring against a direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runner.data.encode import Encoder, collate
from runner.data.examples import Example
from runner.evaluation.evaluator import Evaluator
from runner.evaluation.metrics import classification_metrics, normalize_answer
from runner.model.forward import completion_logprobs, generate
from runner.model.tiny import random_tiny


def test_classification_metrics_match_hand_computation():
    labels = ("a", "b", "c")
    gold = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    m = classification_metrics(pred, gold, labels)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P=2/2 R=2/3 F1=0.8; b: P=1/2 R=1/2 F1=0.5; c: P=1/2 R=1/1 F1=2/3
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["recall"] == pytest.approx(1.0)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"]["support"] == 3 and m["n"] == 6


def test_macro_f1_ignores_classes_absent_from_gold_and_predictions():
    # As scikit-learn's f1_score(average="macro"): labels = those seen in gold or predictions.
    m = classification_metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), ("a", "b", "c"))
    # a: P=1 R=1/2 F1=2/3; b: P=1/2 R=1 F1=2/3; c never seen
    assert m["f1_macro"] == pytest.approx(2 / 3)


def test_normalize_answer_for_exact_match():
    assert normalize_answer("  Paris. ") == normalize_answer("paris")
    assert normalize_answer("New   York") == "new york"
    assert normalize_answer("Paris, France") != normalize_answer("Paris")


def direct_completion_logprob(model, row) -> float:
    """Log-probability of a row's completion from the model's full logits, one row at a time.
    Logits are taken from the end, so virtual tokens a peft method prepends are skipped."""
    ids = torch.tensor([row["input_ids"]])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -ids.shape[1] : -1]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    targets = ids[0, 1:]
    keep = torch.tensor(row["labels"][1:]) != -100
    return float(logprobs[torch.arange(len(targets)), targets][keep].sum())


def test_completion_logprobs_match_a_direct_computation():
    model, tokenizer = random_tiny(seed=3)
    model.eval()
    encoder = Encoder(tokenizer, max_length=64, chat_template=False)
    rows = [
        encoder.encode(Example("t", 1, "Is it blue?", "yes"), add_eos=False),
        encoder.encode(Example("t", 2, "2+2=", "four"), add_eos=True),
    ]
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        fast = completion_logprobs(model, batch)
        for i, row in enumerate(rows):
            assert fast[i] == pytest.approx(direct_completion_logprob(model, row), abs=1e-4)


def test_label_scoring_picks_the_most_likely_label():
    model, tokenizer = random_tiny(seed=5)
    encoder = Encoder(tokenizer, max_length=64, chat_template=True)
    evaluator = Evaluator(model, encoder, batch_size=3, max_new_tokens=4, device=torch.device("cpu"))
    examples = [Example("t", i, "question " + "x" * (3 * i), "x") for i in range(4)]  # ragged: left padding
    scores = evaluator.label_scores([encoder.prompt_ids(e.prompt) for e in examples], ("yes", "no", "maybe"))
    assert scores.shape == (4, 3)
    # Same numbers one sequence at a time, unbatched: batching and padding change nothing.
    for i, e in enumerate(examples):
        for j, label in enumerate(("yes", "no", "maybe")):
            row = encoder.join(encoder.prompt_ids(e.prompt), encoder.completion_ids(label, add_eos=False))
            single = evaluator.sequence_logprobs([row])[0]
            assert scores[i, j] == pytest.approx(float(single), abs=1e-4)
    assert model.training  # evaluation restores the train/eval mode it found


def varied_tiny(seed: int):
    """random-tiny with larger random weights: its greedy answers vary token to token (the
    plain one repeats one token), so answers of different lengths can be made."""
    model, tokenizer = random_tiny(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 2 / p.shape[1] ** 0.5)
    return model, tokenizer


@pytest.mark.parametrize("kind", ["plain", "prompt_tuning", "repetition_penalty"])
def test_generate_gives_the_answers_of_hf_generate(kind):
    """Evaluator.generate (batches of ragged prompts, ended rows dropped) gives the answers Hugging
    Face's generate gives one prompt at a time, in the order of the prompts; with an end token
    that some answers reach early and some never do. A generation config that `greedy` does not
    apply (a repetition penalty) keeps generate's own loop."""
    model, tokenizer = varied_tiny(seed=0)
    if kind == "prompt_tuning":
        from peft import PromptTuningConfig, get_peft_model

        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    if kind == "repetition_penalty":
        model.generation_config.repetition_penalty = 1.5
    model.eval()
    encoder = Encoder(tokenizer, max_length=128, chat_template=False)  # no prompt is cut
    prompts = [encoder.prompt_ids(f"question {k}: " + "why is the sky blue? " * (k * 7 % 5)) for k in range(7)]
    steps = 8

    def hf_answers() -> list[list[int]]:
        # forward.generate: model.generate, from embeddings with the virtual tokens in front for
        # prompt tuning (peft's own generate continues those inconsistently with its forward).
        answers = []
        for p in prompts:
            ids = torch.tensor([p])
            settings = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
            with torch.no_grad():
                out = generate(model, ids, torch.ones_like(ids), max_new_tokens=steps, do_sample=False, **settings)
            answers.append(out[0].tolist())
        return answers

    # The end token: one that some answers give before their last step and some never give.
    first = hf_answers()
    end = next(t for t in (a[1] for a in first) if 0 < sum(t in a[:-1] for a in first) < len(first))
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end)
    expected = hf_answers()
    assert any(len(a) < steps for a in expected) and any(len(a) == steps and end not in a for a in expected)
    evaluator = Evaluator(model, encoder, batch_size=3, max_new_tokens=steps, device=torch.device("cpu"))
    answers = evaluator.generate(prompts)
    assert answers == [tokenizer.decode(a, skip_special_tokens=True).strip() for a in expected]
    assert len(set(answers)) > 1


def test_scores_go_through_the_models_own_forward():
    """What a model does in its forward (here: its logits halved, as a temperature or softcap
    would) is part of the loss and of label scores, not skipped by calling its layers directly."""
    model, tokenizer = random_tiny(seed=3)
    model.eval()
    encoder = Encoder(tokenizer, max_length=64, chat_template=False)
    rows = [encoder.encode(Example("t", i, "q" * (5 + 7 * i), "yes"), add_eos=False) for i in range(3)]
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        plain = completion_logprobs(model, batch)
        model.register_forward_hook(lambda module, args, output: output.__setitem__("logits", output.logits * 0.5))
        scaled = completion_logprobs(model, batch)
        for i, row in enumerate(rows):
            assert scaled[i] == pytest.approx(direct_completion_logprob(model, row), abs=1e-4)
    assert not torch.allclose(plain, scaled)
    evaluator = Evaluator(model, encoder, batch_size=2, max_new_tokens=4, device=torch.device("cpu"))
    prompts = [encoder.prompt_ids("q" * (5 + 7 * i)) for i in range(3)]
    scores = evaluator.label_scores(prompts, ("yes",))
    assert scores[:, 0].tolist() == pytest.approx(scaled.tolist(), abs=1e-4)


def test_prompt_tuning_virtual_tokens_are_part_of_the_loss():
    """A peft method that prepends virtual tokens in its forward: the completion window counted
    from the end still lands on the completion tokens. (peft places prompt-learning positions
    itself: left padding moves the padded rows' positions relative to the virtual tokens, so
    only the longest row, unpadded, matches to float precision.)"""
    from peft import PromptTuningConfig, get_peft_model

    model, tokenizer = random_tiny(seed=4)
    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    peft_model.eval()
    encoder = Encoder(tokenizer, max_length=64, chat_template=False)
    rows = [encoder.encode(Example("t", i, "p" * (3 + 5 * i), "no"), add_eos=True) for i in range(3)]
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        batched = completion_logprobs(peft_model, batch)
        for i, row in enumerate(rows):
            direct = direct_completion_logprob(peft_model, row)
            assert batched[i] == pytest.approx(direct, abs=1e-4 if i == 2 else 1e-2)


def test_tfidf_baseline_learns_a_word_level_task_and_gives_probabilities(workdir):
    from runner.data.prepare import prepare_data
    from runner.evaluation.rungs import tfidf_baseline
    from runner.spec.load import load_spec

    data = prepare_data(load_spec(workdir / "spec.yaml"))[0]  # sentiment decided by one word
    metrics, records = tfidf_baseline(data)
    assert metrics["accuracy"] == 1.0 and metrics["n"] == len(data.test)
    assert [r["gold"] for r in records] == [e.completion for e in data.test]
    for r in records:
        assert set(r["probabilities"]) == {"positive", "negative"}
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-3
        assert max(r["probabilities"], key=r["probabilities"].get) == r["prediction"]


def test_per_class_recall_interval_is_wide_for_a_small_class():
    from runner.report import uncertainty as stats

    gold = torch.tensor([0] * 90 + [1] * 10)
    preds = gold.clone()
    preds[90:95] = 0  # class 1: recall 0.5 on 10 rows; class 0: recall 1.0 on 90
    idx = stats.resample_indices(100, 2000, 0)
    small = stats.interval(stats.recall_samples(preds, gold, 1, idx))
    large = stats.interval(stats.recall_samples(preds, gold, 0, idx))
    assert small[0] < 0.5 < small[1] and small[1] - small[0] > 0.4
    assert large == [1.0, 1.0]
    # Direct computation on one resample.
    row = idx[0]
    g, p = gold[row], preds[row]
    expected = float(((g == 1) & (p == 1)).sum() / (g == 1).sum())
    assert stats.recall_samples(preds, gold, 1, idx[:1]).item() == pytest.approx(expected)


def test_calibration_error_by_direct_computation():
    from runner.report import uncertainty as stats

    confidence = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([1, 1, 1, 0, 1, 0])
    result = stats.calibration(confidence, correct)
    # Bin 0.9-1.0: confidence 0.95, accuracy 0.75 (4 rows); bin 0.5-0.6: 0.55 vs 0.5 (2 rows).
    assert result["ece"] == pytest.approx(4 / 6 * 0.20 + 2 / 6 * 0.05, abs=1e-4)
    assert [(b["low"], b["count"]) for b in result["bins"]] == [(0.5, 2), (0.9, 4)]
    assert stats.calibration(torch.tensor([0.8, 0.8]), torch.tensor([1, 0]))["ece"] == pytest.approx(0.3)


def test_token_f1_is_squads_partial_credit():
    from runner.evaluation.metrics import token_f1

    assert token_f1("in 1905", "1905") == pytest.approx(2 / 3)
    assert token_f1("The Eiffel Tower.", "eiffel tower") == 1.0  # case, articles, punctuation
    assert token_f1("Paris", "London") == 0.0
    assert token_f1("the", "a") == 1.0  # both normalise to nothing: SQuAD counts that as a match
    assert token_f1("red red blue", "red blue blue") == pytest.approx(2 / 3)  # bags, not sets
