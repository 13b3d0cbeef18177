"""Shards as users run them: `run_pipeline --shards 2 --workers 2` starts the two shards' runs as separate
processes at once over the same lake tables, on a persistent DAGSTER_HOME. Both succeed; every table holds
what one unsharded run writes; the ingestion counts of the shards add up to the day's; and a second sharded
run changes nothing."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor_assets.config import load_config
from monitor_assets.storage.warehouse import connect

from .conftest import persistent_home

REPO = Path(__file__).parents[1]
DAYS = ["--start", "2026-10-05", "--end", "2026-10-07"]  # 10-06 has a corrupted batch (quarantine)
RUNNER = [sys.executable, "-m", "monitor_assets.run_pipeline", *DAYS]
# Per-model tables the shards write, and the columns that say when rather than what.
TABLES = ["raw.predictions", "raw.labels", "raw.quarantine", "monitoring.quality_verdicts",
          "monitoring.reference_profiles", "monitoring.reference_baselines", "monitoring.performance_daily",
          "monitoring.feature_drift", "monitoring.drift_summary", "monitoring.fairness"]
WHEN = ("computed_at", "validated_at", "loaded_at")
# The cross-model state (in the lake too: no DuckDB file), with its own columns that say when.
STATE = {"monitoring.alerts": ("first_seen", "last_seen"), "monitoring.model_versions": (), "raw.interactions": (),
         "monitoring.business_kpis_daily": (), "monitoring.version_daily": ()}


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "DAGSTER_HOME"))}
    return {**env, "DAGSTER_HOME": str(persistent_home(folder / "home")),
            "MONITOR_WAREHOUSE": str(folder / "wh.duckdb"), "MONITOR_REPORTS_DIR": str(folder / "reports"),
            "PYTHONPATH": str(REPO)}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*RUNNER, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _value(v):
    # Sums of the same doubles in another order differ in the last bits.
    return round(v, 9 - int(math.floor(math.log10(abs(v))))) if isinstance(v, float) and v and math.isfinite(v) else v


def snapshot(folder: Path) -> dict:
    """Every row of the per-model tables (times left out), and the day's ingestion counts per source."""
    out = {}
    with connect(None, str(folder / "wh_lake"), models=None) as con:
        for table in [*TABLES, *STATE]:
            columns = [c for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {table})").fetchall()
                       if c not in WHEN + STATE.get(table, ())]
            rows = con.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            out[table] = sorted((tuple(_value(v) for v in r) for r in rows), key=repr)
        out["ingestion"] = con.execute("""SELECT partition_date, source, sum(files), sum(records_read),
                                                 sum(records_loaded), sum(records_quarantined)
                                          FROM raw.ingestion_log WHERE source IN ('predictions', 'labels')
                                          GROUP BY ALL ORDER BY ALL""").fetchall()
        out["shards"] = con.execute("""SELECT shard, source, partition_date, records_read, records_loaded,
                                              records_quarantined FROM raw.ingestion_log
                                       WHERE source IN ('predictions', 'labels') ORDER BY ALL""").fetchall()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    whole, sharded = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("sharded")
    _run(_env(whole))
    first = _run(_env(sharded), "--shards", "2", "--workers", "2")
    after_first = snapshot(sharded)
    second = _run(_env(sharded), "--shards", "2", "--workers", "2")
    return {"whole": snapshot(whole), "first": first, "after_first": after_first, "second": second,
            "after_second": snapshot(sharded), "folder": sharded}


def test_both_shards_run_at_once_in_their_own_processes(runs):
    lines = runs["first"].stdout.splitlines()
    rounds = []
    for job in ("shard_ingest_job", "shard_analysis_job"):
        starts = [i for i, line in enumerate(lines) if f"] {job} over" in line]
        assert sorted(lines[i][:5] for i in starts) == ["[0/2]", "[1/2]"]  # a process per shard, lines prefixed
        rounds.append(starts)
    fleet = next(i for i, line in enumerate(lines) if line.startswith("fleet_job over"))
    for starts, end in ((rounds[0], min(rounds[1])), (rounds[1], fleet)):
        done = [i for i in range(max(starts), end) if lines[i].startswith("[") and ": SUCCESS in" in lines[i]]
        assert len(done) == 2  # both shards succeeded, and the second started before either finished
        assert max(starts) < min(done)
    assert ": SUCCESS in" in lines[-3] and "FAILURE" not in "\n".join(lines)


def test_the_shards_write_what_one_run_writes(runs):
    whole, sharded = runs["whole"], runs["after_first"]
    for table in [*TABLES, *STATE]:
        assert sharded[table] == whole[table], table
        # The three days fill every table, quarantine included; they open no alert (a check failure on the
        # corrupted batch is not a threshold alert), so the alerts are compared empty.
        assert whole[table] or table == "monitoring.alerts", table
    assert not list(runs["folder"].glob("*.duckdb*"))  # the processes shared the lake, no DuckDB file
    assert sharded["ingestion"] == whole["ingestion"]


def test_the_shards_counts_add_up(runs):
    rows = runs["after_first"]["shards"]
    assert {r[0] for r in rows} == {"0/2", "1/2"}
    for shard, _, _, read, loaded, quarantined in rows:
        assert read == loaded + quarantined, shard
    totals = {(d, s): (read, loaded, q) for d, s, _, read, loaded, q in runs["whole"]["ingestion"]}
    for (day, source), (read, loaded, quarantined) in totals.items():
        parts = [r for r in rows if r[1] == source and r[2] == day]
        assert len(parts) == 2
        assert sum(p[3] for p in parts) == read and sum(p[4] for p in parts) == loaded
        assert sum(p[5] for p in parts) == quarantined
    # Each shard loaded its own models' predictions: shard 0 has the first half of the demo's models.
    config = load_config(REPO / "data" / "demo" / "monitor.yaml")
    assert config.for_shard(0, 2).model_ids == config.model_ids[:len(config.model_ids) // 2]
    predictions = runs["after_first"]["raw.predictions"]
    assert {r[1] for r in predictions} == set(config.model_ids)


def test_a_second_sharded_run_changes_nothing(runs):
    for key in [*TABLES, *STATE, "ingestion"]:
        assert runs["after_second"][key] == runs["after_first"][key], key
    assert runs["after_second"]["shards"] == runs["after_first"]["shards"]
