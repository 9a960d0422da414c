"""Evaluation: the built-in metrics, scoring a slide and summarising folds, statistics."""
