"""Names shared by the Dagster wiring: groups, owners, the DuckDB pool, tags."""

GROUP_INGESTION = "ingestion"
GROUP_METRICS = "metrics"
GROUP_DRIFT = "drift"
GROUP_BIAS = "bias"
GROUP_ALERTING = "alerting"
GROUP_REPORTING = "reporting"

# Every step that writes the warehouse is in this pool; dagster.yaml gives each pool one slot.
DUCKDB_POOL = "duckdb"
OWNERS = ["team:mlops"]
