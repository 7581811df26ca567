"""Evaluation: one kNN search, every metric."""
