"""The heavy, partitioned tables in Delta Lake (delta-rs), read by DuckDB's Parquet reader.

Layout under the lake root (a folder; `MONITOR_LAKE`, default beside the warehouse file):
    raw/predictions/model_id=<model>/   one Delta table per model, its own typed feature columns,
                                         partitioned by partition_date
    raw/labels/, raw/quarantine/          partitioned by partition_date (quarantine: source, partition_date)
    monitoring/<table>/                   the daily monitoring facts, partitioned by partition_date
No table's width grows with the number of models. Replacing a partition is one Delta commit (an
overwrite with a predicate on the partition, and on the models written): readers see the old rows or
the new ones, never half, and a process killed mid-write leaves only unreferenced files behind, which
`maintain` removes. Writers on distinct partitions do not conflict.

DuckDB sees every table under its documented name (`raw.predictions`, `monitoring.performance_daily`,
...) through views over each table's current files, set up on each connection (`attach`); `raw.predictions` is the
union of the models' tables over the columns they share, `raw.predictions__<model>` one model's table
with its features. Plain Python: no Dagster here.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from monitor_assets.storage.sql import quote_ident, sql_str

PREDICTIONS = "raw.predictions"
# Columns every model's predictions table has, in order; its features follow.
PREDICTION_COLUMNS = {
    "partition_date": "DATE", "model_id": "VARCHAR", "prediction_id": "VARCHAR", "ts": "TIMESTAMPTZ",
    "model_version": "VARCHAR", "latency_ms": "DOUBLE", "status": "VARCHAR", "is_ok": "BOOLEAN", "score": "DOUBLE",
    "source_file": "VARCHAR", "line_no": "BIGINT", "decision": "VARCHAR",
}
# The other lake tables: columns (DuckDB types) and Delta partition columns.
TABLES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "raw.labels": ({"partition_date": "DATE", "model_id": "VARCHAR", "prediction_id": "VARCHAR",
                    "prediction_date": "DATE", "label": "DOUBLE", "source_file": "VARCHAR", "line_no": "BIGINT"},
                   ("partition_date",)),
    "raw.quarantine": ({"partition_date": "DATE", "source": "VARCHAR", "model_id": "VARCHAR",
                        "source_file": "VARCHAR", "line_no": "BIGINT", "reason": "VARCHAR", "raw_record": "VARCHAR"},
                       ("source", "partition_date")),
    "monitoring.performance_daily": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "task": "VARCHAR", "model_versions": "VARCHAR",
        "volume": "BIGINT", "n_ok": "BIGINT", "n_errors": "BIGINT", "error_rate": "DOUBLE",
        "latency_p50_ms": "DOUBLE", "latency_p95_ms": "DOUBLE", "latency_p99_ms": "DOUBLE",
        "n_labelled": "BIGINT", "label_coverage": "DOUBLE", "accuracy": "DOUBLE", "precision": "DOUBLE",
        "recall": "DOUBLE", "f1": "DOUBLE", "roc_auc": "DOUBLE", "log_loss": "DOUBLE", "brier_score": "DOUBLE",
        "positive_rate": "DOUBLE", "predicted_positive_rate": "DOUBLE", "mae": "DOUBLE", "rmse": "DOUBLE",
        "mape": "DOUBLE", "r2": "DOUBLE", "mean_error": "DOUBLE", "mean_score": "DOUBLE",
        "computed_at": "TIMESTAMPTZ", "mape_zero_labels": "BIGINT", "n_decision_missing": "BIGINT",
        "main_metric_value": "DOUBLE"}, ("partition_date",)),
    "monitoring.feature_drift": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "feature": "VARCHAR", "role": "VARCHAR", "kind": "VARCHAR",
        "method": "VARCHAR", "statistic": "DOUBLE", "p_value": "DOUBLE", "threshold": "DOUBLE", "drifted": "BOOLEAN",
        "n_current": "BIGINT", "n_reference": "BIGINT", "current_summary": "VARCHAR", "reference_summary": "VARCHAR",
        "current_mean": "DOUBLE", "reference_mean": "DOUBLE", "missing_share": "DOUBLE", "unseen_share": "DOUBLE",
        "computed_at": "TIMESTAMPTZ", "p_value_adjusted": "DOUBLE", "reference_missing_share": "DOUBLE",
        "missing_p_value": "DOUBLE", "missing_drift": "BOOLEAN", "expected_unseen_share": "DOUBLE",
        "unseen_p_value": "DOUBLE", "unseen_drift": "BOOLEAN", "all_unseen": "BOOLEAN", "all_missing": "BOOLEAN",
        "unseen_summary": "VARCHAR", "message": "VARCHAR"}, ("partition_date",)),
    "monitoring.drift_summary": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "n_features": "BIGINT", "n_drifted": "BIGINT",
        "drift_share": "DOUBLE", "dataset_drift": "BOOLEAN", "prediction_drift": "BOOLEAN", "label_drift": "BOOLEAN",
        "computed_at": "TIMESTAMPTZ", "n_missing_drift": "BIGINT", "n_unseen_drift": "BIGINT",
        "n_all_missing": "BIGINT", "n_all_unseen": "BIGINT"}, ("partition_date",)),
    "monitoring.fairness": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "attribute": "VARCHAR", "grp": "VARCHAR", "n": "BIGINT",
        "n_labelled": "BIGINT", "selection_rate": "DOUBLE", "true_positive_rate": "DOUBLE",
        "false_positive_rate": "DOUBLE", "accuracy": "DOUBLE", "mae": "DOUBLE", "below_min_size": "BOOLEAN",
        "demographic_parity_difference": "DOUBLE", "demographic_parity_ratio": "DOUBLE",
        "equalized_odds_difference": "DOUBLE", "passes_four_fifths": "BOOLEAN", "disparity_p_value": "DOUBLE",
        "computed_at": "TIMESTAMPTZ", "n_eligible_groups": "BIGINT", "demographic_parity_p_value": "DOUBLE",
        "most_favoured_group": "VARCHAR", "most_favoured_n": "BIGINT", "most_favoured_selection_rate": "DOUBLE",
        "least_favoured_group": "VARCHAR", "least_favoured_n": "BIGINT", "least_favoured_selection_rate": "DOUBLE",
        "true_positive_rate_difference": "DOUBLE", "true_positive_rate_p_value": "DOUBLE",
        "false_positive_rate_difference": "DOUBLE", "false_positive_rate_p_value": "DOUBLE",
        "equalized_odds_rate": "VARCHAR", "equalized_odds_p_value": "DOUBLE", "equalized_odds_max_group": "VARCHAR",
        "equalized_odds_max_n": "BIGINT", "equalized_odds_min_group": "VARCHAR", "equalized_odds_min_n": "BIGINT"},
        ("partition_date",)),
    "monitoring.history": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "metric": "VARCHAR", "segment": "VARCHAR",
        "value": "DOUBLE", "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
}
MODEL_DIR = "model_id="


def registered(table: str) -> str:
    """The name a lake table's dataset is registered under on a connection (its view points there)."""
    return "__lake_" + table.replace(".", "__")


def model_table(model_id: str) -> str:
    """The documented name of one model's predictions table."""
    return f"raw.{quote_ident('predictions__' + model_id)}"


def _model_registered(model_id: str) -> str:
    return registered("raw.predictions__" + model_id)


def _days_predicate(days: Iterable[dt.date]) -> str:
    return "partition_date IN (" + ", ".join(sql_str(d.isoformat()) for d in sorted(set(days))) + ")"


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN (" + ", ".join(sql_str(v) for v in sorted(set(values))) + ")"


def _empty_select(columns: dict[str, str]) -> str:
    return "SELECT " + ", ".join(f"NULL::{t} AS {quote_ident(c)}" for c, t in columns.items()) + " WHERE false"


class Lake:
    """One lake root: table paths, partition replacement, datasets for DuckDB, maintenance."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ---- where things are

    def path(self, table: str) -> Path:
        schema, name = table.split(".", 1)
        return self.root / schema / name

    def model_path(self, model_id: str) -> Path:
        return self.path(PREDICTIONS) / (MODEL_DIR + urllib.parse.quote(model_id, safe=""))

    def models(self) -> list[str]:
        """Models that have a predictions table."""
        folder = self.path(PREDICTIONS)
        if not folder.is_dir():
            return []
        return sorted(urllib.parse.unquote(p.name[len(MODEL_DIR):]) for p in folder.iterdir()
                      if p.name.startswith(MODEL_DIR) and (p / "_delta_log").is_dir())

    def all_tables(self) -> list[Path]:
        return [p for p in [*(self.path(t) for t in TABLES), *(self.model_path(m) for m in self.models())]
                if (p / "_delta_log").is_dir()]

    # ---- writing

    def _write(self, path: Path, data: pa.Table, predicate: str, partition_by: Sequence[str]) -> None:
        from deltalake import DeltaTable, write_deltalake

        if not (path / "_delta_log").is_dir():
            if data.num_rows == 0:
                return  # nothing to replace, nothing to add
            path.mkdir(parents=True, exist_ok=True)
            write_deltalake(str(path), data, partition_by=list(partition_by), mode="append")
            return
        if data.num_rows == 0:
            DeltaTable(str(path)).delete(predicate)
            return
        # schema_mode merge: a model that gains a feature gains a column.
        write_deltalake(str(path), data, partition_by=list(partition_by), mode="overwrite", predicate=predicate,
                        schema_mode="merge")

    def replace(self, table: str, data: pa.Table, days: Iterable[dt.date], models: Iterable[str] | None = None,
                source: str | None = None) -> None:
        """Replace the rows of `days` (of those models, of that quarantine source) with `data`, in one commit."""
        columns, partition_by = TABLES[table]
        predicate = _days_predicate(days)
        if source is not None:
            predicate = f"source = {sql_str(source)} AND {predicate}"
        if models is not None:
            predicate += f" AND {_in('model_id', models)}"
        self._write(self.path(table), _conform(data, columns), predicate, partition_by)

    def replace_model_day(self, model_id: str, data: pa.Table, day: dt.date) -> None:
        """Replace one model's predictions of one day (an empty table deletes them)."""
        self._write(self.model_path(model_id), data, _days_predicate([day]), ["partition_date"])

    def delete(self, table: str, predicate: str) -> None:
        """Delete the rows matching a SQL predicate (one commit); for repairs and tests."""
        from deltalake import DeltaTable

        if (self.path(table) / "_delta_log").is_dir():
            DeltaTable(str(self.path(table))).delete(predicate)

    # ---- reading through DuckDB

    def scan(self, path: Path, columns: dict[str, str], partition_by: Sequence[str], extra: bool = False) -> str:
        """SQL reading the current version of a Delta table: DuckDB's own Parquet reader over the files the
        Delta log lists, partition values from the paths; `columns` first, in order, then (`extra`) the
        table's other columns. Nothing calls back into Python while it runs (a registered pyarrow dataset
        did, and a `.df()` of it could deadlock on the GIL)."""
        files, stored = _current_files(path)
        if not files:
            return _empty_select(columns)
        listed = "[" + ", ".join(sql_str(f) for f in files) + "]"
        types = "{" + ", ".join(f"{sql_str(c)}: {sql_str(columns[c])}" for c in partition_by) + "}"
        # A column added since the table was written (an optional field) reads as NULL.
        known = ", ".join(quote_ident(c) if c in stored else f"NULL::{t} AS {quote_ident(c)}"
                          for c, t in columns.items())
        present = ", ".join(quote_ident(c) for c in columns if c in stored)
        picks = f"{known}, * EXCLUDE ({present})" if extra else known
        return (f"SELECT {picks} FROM read_parquet({listed}, hive_partitioning = true, hive_types = {types}, "
                "union_by_name = true)")

    def attach(self, con: duckdb.DuckDBPyConnection, models: Iterable[str] | None = (), create_views: bool = True) -> None:
        """Register the lake's tables on `con` and (re)create the views with their documented names.

        `models`: whose predictions tables to register (None: every model; the union view
        `raw.predictions` then covers them all). Registering is cheap (about 2 ms a table)."""
        if create_views:
            con.execute("CREATE SCHEMA IF NOT EXISTS raw; CREATE SCHEMA IF NOT EXISTS monitoring")
        for table in TABLES:
            self.refresh(con, table)
            if create_views:
                con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {registered(table)}")
        self.attach_models(con, self.models() if models is None else models, create_views)

    def refresh(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        """Point the registered dataset of `table` at its newest version (after a write)."""
        path, name = self.path(table), registered(table)
        con.execute(f"DROP VIEW IF EXISTS {name}")
        con.execute(f"DROP TABLE IF EXISTS {name}")
        columns, partition_by = TABLES[table]
        scan = self.scan(path, columns, partition_by) if (path / "_delta_log").is_dir() else _empty_select(columns)
        con.execute(f"CREATE TEMP VIEW {name} AS {scan}")

    def attach_models(self, con: duckdb.DuckDBPyConnection, models: Iterable[str], create_views: bool = True) -> list[str]:
        """Register these models' predictions tables; `raw.predictions` becomes their union over the shared
        columns. Returns the relation names (quoted for SQL), in order."""
        names = []
        for model_id in models:
            name = self.model_relation(con, model_id)
            names.append(name)
            if create_views:
                con.execute(f"CREATE OR REPLACE VIEW {model_table(model_id)} AS SELECT * FROM {name}")
        shared = ", ".join(quote_ident(c) for c in PREDICTION_COLUMNS)
        union = " UNION ALL ".join(f"SELECT {shared} FROM {n}" for n in names) or _empty_select(PREDICTION_COLUMNS)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {registered(PREDICTIONS)} AS {union}")
        if create_views:
            con.execute(f"CREATE OR REPLACE VIEW {PREDICTIONS} AS SELECT * FROM {registered(PREDICTIONS)}")
        return names

    def model_relation(self, con: duckdb.DuckDBPyConnection, model_id: str) -> str:
        """A relation (its name quoted for SQL) for one model's predictions, registered now, with its features
        as columns."""
        name = _model_registered(model_id)
        con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
        path = self.model_path(model_id)
        scan = (self.scan(path, PREDICTION_COLUMNS, ["partition_date"], extra=True) if (path / "_delta_log").is_dir()
                else _empty_select(PREDICTION_COLUMNS))
        con.execute(f"CREATE TEMP VIEW {quote_ident(name)} AS {scan}")
        return quote_ident(name)

    # ---- maintenance

    def maintain(self, retention_hours: float = 168.0) -> list[dict]:
        """Compact each table's small files and delete files no version younger than `retention_hours` uses."""
        from deltalake import DeltaTable

        out = []
        for path in self.all_tables():
            start = time.perf_counter()
            table = DeltaTable(str(path))
            before = len(table.file_uris())
            compacted = table.optimize.compact()
            removed = table.vacuum(retention_hours=int(retention_hours), enforce_retention_duration=False,
                                   dry_run=False)
            out.append({"table": str(path.relative_to(self.root)), "files_before": before,
                        "files_after": len(DeltaTable(str(path)).file_uris()),
                        "files_compacted": int(compacted.get("numFilesRemoved", 0)), "files_vacuumed": len(removed),
                        "version": DeltaTable(str(path)).version(), "seconds": round(time.perf_counter() - start, 3)})
        return out


def _conform(data: pa.Table, columns: dict[str, str]) -> pa.Table:
    """`data` with exactly the table's columns, in order and type (missing ones NULL), so every write of a
    table has one schema whatever the producer (a DataFrame, a DuckDB query)."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("_data", data)
        have = set(data.column_names)
        picks = ", ".join((f"CAST({quote_ident(c)} AS {t})" if c in have else f"NULL::{t}") + f" AS {quote_ident(c)}"
                          for c, t in columns.items())
        return con.sql(f"SELECT {picks} FROM _data").to_arrow_table()
    finally:
        con.close()


_FILES: dict[str, tuple[tuple, tuple[list[str], set[str]]]] = {}


def _current_files(path: Path) -> tuple[list[str], set[str]]:
    """The data files and column names of a Delta table's newest version. Loading a table reads its log (a
    few ms); every connection registers every model's table, so they are kept until the log gains a
    version."""
    from deltalake import DeltaTable

    log = path / "_delta_log"
    with os.scandir(log) as entries:
        commits = [e for e in entries if e.name.endswith(".json")]
    newest = max(commits, key=lambda e: e.name, default=None)
    key = (newest.name, newest.stat().st_mtime_ns) if newest else None
    cached = _FILES.get(str(path))
    if cached is None or cached[0] != key or key is None:
        table = DeltaTable(str(path))
        cached = _FILES[str(path)] = (key, (table.file_uris(), {f.name for f in table.schema().fields}))
    return list(cached[1][0]), cached[1][1]
