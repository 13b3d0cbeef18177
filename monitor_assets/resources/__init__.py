"""Resources: the DuckDB warehouse and the alert notifiers."""
