"""Drift a person can see: reference against current distributions of the drifted feature-days."""
