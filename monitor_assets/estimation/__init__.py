"""Performance estimated before the labels arrive (see `stats.estimation`)."""
