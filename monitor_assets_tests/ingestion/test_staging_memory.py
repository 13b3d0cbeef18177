"""The staging database's memory while a staged table streams into a Delta commit: delta-rs holds what it is fed
outside DuckDB's limit, so DuckDB keeps a share of the staging memory for the length of the write, and gets the
whole of it back afterwards, also when the write fails."""

import duckdb
import pytest

from monitor_assets.ingestion import readers


@pytest.mark.parametrize(("text", "expected"), [("768MB", 768_000_000), ("1.5 GiB", 1_610_612_736),
                                                ("512mb", 512_000_000), ("100 MB", 100_000_000),
                                                ("1024KiB", 1_048_576), ("2GB", 2_000_000_000)])
def test_sizes_in_duckdbs_syntax_are_read_as_bytes(text, expected):
    assert readers.memory_bytes(text) == expected


@pytest.mark.parametrize("text", ["80%", "lots", "", "12 parsecs"])
def test_a_size_that_is_not_one_is_none(text):
    assert readers.memory_bytes(text) is None


def _limit(con) -> int:
    return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_the_write_gets_a_share_and_the_limit_comes_back(monkeypatch):
    monkeypatch.setattr(readers, "STAGING_MEMORY", "600MB")
    con = readers._staging_database()
    before = _limit(con)
    with readers._writing_share(con):
        during = _limit(con)
    assert _limit(con) == before
    share = duckdb.connect(config={"memory_limit": f"{int(600_000_000 * readers.WRITE_SHARE)}B"})
    assert during == _limit(share) != before
    with pytest.raises(RuntimeError), readers._writing_share(con):
        raise RuntimeError("the commit failed")
    assert _limit(con) == before


def test_a_limit_it_cannot_read_is_left_as_it_is(monkeypatch):
    monkeypatch.setattr(readers, "STAGING_MEMORY", "50%")
    con = readers._staging_database()
    before = _limit(con)
    with readers._writing_share(con):
        assert _limit(con) == before
