"""The warehouse resource: the Delta lake (every table), short in-memory DuckDB connections over it."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb

from monitor_assets.storage.lake import Lake
from monitor_assets.storage.warehouse import connect


class WarehouseResource(dg.ConfigurableResource):
    """The Delta lake (a folder, or a bucket URI such as `s3://bucket/prefix` whose credentials come from the
    environment) holds every table, the small mutable state too (`storage.warehouse.edit`): runs on several
    machines share the lake and nothing else. `path`: where an earlier release kept its DuckDB file, whose
    tables move to the lake on the first connection (`storage.warehouse.migrate_file`); it need not exist."""

    path: str
    lake_path: str

    @contextmanager
    def connect(self, models: Iterable[str] | None = ()) -> Iterator[duckdb.DuckDBPyConnection]:
        """`models`: whose predictions tables to register; None: all, for `raw.predictions` over every model.
        By default none (a step at 500 models would spend a second or more registering them): per-model
        SQL reads `Lake.predictions_union` of its models, and `raw.predictions` fails rather than read empty."""
        with connect(self.path, self.lake_path, models) as con:
            yield con

    @contextmanager
    def connect_lake(self, models: Iterable[str] | None = ()) -> Iterator[duckdb.DuckDBPyConnection]:
        """`connect` without looking for an earlier release's file (per-model steps, which run most often)."""
        with connect(None, self.lake_path, models) as con:
            yield con

    @property
    def lake(self) -> Lake:
        return Lake(self.lake_path)
