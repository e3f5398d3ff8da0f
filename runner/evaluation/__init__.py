"""Scoring: the evaluator, the model-free rungs, the forgetting probes table, metrics and the
score cache."""
