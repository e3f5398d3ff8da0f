"""Model-free rungs of the ladder: the majority label and TF-IDF + logistic regression."""

from __future__ import annotations

import os
import sys
from collections import Counter

import torch

from runner.data.examples import TaskData
from runner.evaluation.evaluator import generation_results, row_identity
from runner.evaluation.metrics import classification_metrics


def majority_baseline(data: TaskData) -> tuple[dict, list[dict]]:
    """The most frequent train completion for every test row: the score to beat without a model."""
    answer = Counter(e.completion for e in data.train).most_common(1)[0][0]  # ties: the first seen
    examples = data.test
    if data.task.is_classification:
        labels = data.task.labels
        preds = torch.full((len(examples),), labels.index(answer))
        metrics = classification_metrics(preds, torch.tensor([e.label for e in examples]), labels)
        hits = [e.completion == answer for e in examples]
        records = [{**row_identity(e), "prediction": answer, "correct": h} for e, h in zip(examples, hits)]
    else:
        metrics, records = generation_results(examples, [answer] * len(examples))
    metrics.update(prompt_tokens_mean=0.0, prompts_truncated=0, answer=answer)
    return metrics, records


TFIDF_NOTICE_ROWS = 2000  # past this many train rows the fit takes long enough to say so


def tfidf_baseline(data: TaskData) -> tuple[dict, list[dict]]:
    """A classical classifier on the same train split: TF-IDF of the rendered prompt (word 1-2
    grams) and logistic regression, in seconds on a CPU. It answers "is a language model even
    needed here?" on the same test rows. Classification tasks only."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    labels = data.task.labels
    if len(data.train) > TFIDF_NOTICE_ROWS and not os.environ.get("RUNNER_QUIET"):  # seconds to a minute
        print(f"TF-IDF baseline, {data.task.name}: fitting on {len(data.train):,} train rows…", file=sys.stderr)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    train = vectorizer.fit_transform([e.prompt for e in data.train])
    seen = sorted({e.label for e in data.train})
    if len(seen) < 2:  # one label in train: logistic regression has nothing to separate
        preds = torch.full((len(data.test),), seen[0])
        probs = None
    else:
        model = LogisticRegression(max_iter=2000, C=10.0).fit(train, [e.label for e in data.train])
        test = vectorizer.transform([e.prompt for e in data.test])
        preds = torch.tensor(model.predict(test))
        probs = model.predict_proba(test)
    gold = torch.tensor([e.label for e in data.test])
    metrics = classification_metrics(preds, gold, labels)
    metrics.update(prompt_tokens_mean=0.0, prompts_truncated=0)
    records = []
    for i, (e, p) in enumerate(zip(data.test, preds.tolist())):
        record = {**row_identity(e), "prediction": labels[p], "correct": p == e.label}
        if probs is not None:
            record["probabilities"] = {labels[c]: round(float(probs[i][j]), 4) for j, c in enumerate(seen)}
        records.append(record)
    return metrics, records
