"""The warehouse resource: one DuckDB file, short connections, the schema ensured on open."""


from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb

from monitor_assets.storage.warehouse import connect


class WarehouseResource(dg.ConfigurableResource):
    """DuckDB warehouse file. Another process holding the write lock is waited out with backoff."""

    path: str

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with connect(self.path) as con:
            yield con
