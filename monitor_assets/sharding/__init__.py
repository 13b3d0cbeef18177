"""Shards as Dagster runs: the plan job, its schedule and the shard sensor."""
