"""The pure statistics core: no Dagster, no file I/O. Functions take arrays, frames or DuckDB SQL
relations and return small frames or dataclasses."""
