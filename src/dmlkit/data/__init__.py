"""Data: readers, splits, samplers, views."""
