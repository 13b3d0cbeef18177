"""The warehouse resource: the DuckDB file and the Delta lake beside it, short connections."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb

from monitor_assets.storage.lake import Lake
from monitor_assets.storage.warehouse import connect


class WarehouseResource(dg.ConfigurableResource):
    """DuckDB file for small state, the Delta lake (a folder, or a bucket URI such as `s3://bucket/prefix`
    whose credentials come from the environment) for the partitioned tables. Another process holding the
    DuckDB write lock is waited out with backoff."""

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
        """`connect` without the DuckDB file: the lake's tables only, on an in-memory database. For per-model
        steps, which several shard processes run at once (the file admits one writing process)."""
        with connect(None, self.lake_path, models) as con:
            yield con

    @property
    def lake(self) -> Lake:
        return Lake(self.lake_path)
