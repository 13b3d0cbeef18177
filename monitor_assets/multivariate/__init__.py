"""Multivariate drift per model and day: the reads and writes around `stats.multivariate`, and its asset."""
