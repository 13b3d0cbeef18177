"""Thin Dagster wiring over the core, one module per stage."""
