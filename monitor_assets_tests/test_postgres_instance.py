"""Dagster on a real PostgreSQL server: a persistent DAGSTER_HOME with dagster-postgres storage, and how
Dagster 1.13 records per-partition results of a single-run backfill there.

What this documents (checked against the installed dagster source):
- In a run over a partition range, the step has a partition key *range*, not a partition key, so an
  `AssetCheckResult` is stored with `partition=None` (AssetCheckResult.to_asset_check_evaluation sets
  a partition only when `step_context.has_partition_key`). Yield one `dg.AssetCheckEvaluation(...,
  partition=day)` per day instead; the ASSET_CHECK_EVALUATION_PLANNED event of the run already made
  one PLANNED row per partition of the range, and each evaluation updates the row of its partition.
- An `AssetCheckEvaluation` yielded directly does not produce the check's step output: also yield
  `dg.Output(None, output_name=...)`. For `@dg.multi_asset_check` the output name is
  `spec.get_python_identifier()` (`<asset key python identifier>_<check name>`, here
  "daily_scores_score_in_range"); for `@dg.asset_check` it is "result" (dagster's DEFAULT_OUTPUT); for
  a check spec on the asset's own op (`check_specs=[...]`) it is also `spec.get_python_identifier()`.
  Without it the step fails (DagsterStepOutputNotFoundError: did not return an output for non-optional
  output ...), after the evaluations were stored.
- `context.add_asset_metadata({...}, partition_key=day)` gives each partition's materialization its
  own metadata (a `MaterializeResult(metadata=...)` is copied onto every partition of the range).
- A range run of an asset returning a value through the default IO manager fails ("does not support
  persisting an output associated with multiple partitions"): annotate the asset `-> None`.
- Days a check does not evaluate keep their PLANNED row; Dagster shows them as SKIPPED once the run has
  succeeded (EXECUTION_FAILED if it failed). Yielding a second `AssetCheckResult` for the same check in
  one step fails the step ("returned an output ... multiple times").
"""

import os
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from monitor_assets_tests.postgres import (  # noqa: F401  (postgres_server is a pytest fixture)
    PASSWORD_ENV_VAR,
    PostgresServer,
    postgres_server,
    write_postgres_instance,
)

DAYS = ["2026-10-01", "2026-10-02", "2026-10-03"]
FAILING_DAY = "2026-10-02"
DAILY = dg.DailyPartitionsDefinition(start_date="2026-09-01", end_date="2026-11-01")
SCORES = {"2026-10-01": 0.91, "2026-10-02": 0.42, "2026-10-03": 0.88}
CHECK_SPEC = dg.AssetCheckSpec("score_in_range", asset="daily_scores", partitions_def=DAILY)
# The output an @multi_asset_check op gives each of its specs.
CHECK_OUTPUT = CHECK_SPEC.get_python_identifier()


@dg.asset(partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run())
def daily_scores(context: dg.AssetExecutionContext) -> None:
    for day in context.partition_keys:
        context.add_asset_metadata({"score": SCORES[day], "day": day}, partition_key=day)


@dg.multi_asset_check(specs=[CHECK_SPEC])
def score_checks(context: dg.AssetCheckExecutionContext):
    for day in context.partition_keys:
        yield dg.AssetCheckEvaluation(
            asset_key=CHECK_SPEC.asset_key,
            check_name=CHECK_SPEC.name,
            passed=SCORES[day] >= 0.5,
            partition=day,
            metadata={"score": SCORES[day]},
        )
    yield dg.Output(None, output_name=CHECK_OUTPUT)


# The usual way, for contrast: one AssetCheckResult for the step (a second one for the same check fails).
PLAIN_SPEC = dg.AssetCheckSpec("plain_check", asset="plain_scores", partitions_def=DAILY)


@dg.asset(partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run())
def plain_scores(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"days": len(context.partition_keys)})


@dg.multi_asset_check(specs=[PLAIN_SPEC])
def plain_checks(context: dg.AssetCheckExecutionContext):
    yield dg.AssetCheckResult(asset_key=PLAIN_SPEC.asset_key, check_name=PLAIN_SPEC.name, passed=True)


def _run_range(instance, asset):
    defs = dg.Definitions(
        assets=[daily_scores, plain_scores],
        asset_checks=[score_checks, plain_checks],
        jobs=[dg.define_asset_job("range_job", selection=dg.AssetSelection.assets(asset))],
    )
    return defs.resolve_job_def("range_job").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
    )


@pytest.fixture
def postgres_home(tmp_path, postgres_server: PostgresServer, monkeypatch) -> Path:  # noqa: F811
    """A DAGSTER_HOME on the session's Postgres server, in a fresh schema state (tables wiped)."""
    home = tmp_path / "dagster_home"
    write_postgres_instance(home, postgres_server)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(PASSWORD_ENV_VAR, postgres_server.password)
    with dg.DagsterInstance.get() as instance:
        instance.wipe()  # the server is shared by the session: start from empty tables
    return home


def test_instance_yaml_reads_password_from_env(postgres_home, postgres_server):  # noqa: F811
    config = yaml.safe_load((postgres_home / "dagster.yaml").read_text())
    assert postgres_server.password not in (postgres_home / "dagster.yaml").read_text()
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {"env": PASSWORD_ENV_VAR}
    assert config["telemetry"] == {"enabled": False}


def test_single_run_backfill_records_each_partition_on_postgres(postgres_home):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert os.environ["DAGSTER_HOME"] == str(postgres_home)

        result = _run_range(instance, daily_scores)
        assert result.success
        # One run, one step per node: the asset and its check each ran once over the whole range.
        step_keys = {
            e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS
        }
        assert step_keys == {"daily_scores", "score_checks"}

        # Check results: one record per day, with its partition and status.
        records = instance.event_log_storage.get_asset_check_execution_history(CHECK_SPEC.key, limit=100)
        by_day = {r.partition: r for r in records}
        assert sorted(by_day) == DAYS, [(r.partition, r.status) for r in records]
        assert len(records) == len(DAYS)
        for day, record in by_day.items():
            assert record.run_id == result.run_id
            expected = (
                AssetCheckExecutionRecordStatus.FAILED
                if day == FAILING_DAY
                else AssetCheckExecutionRecordStatus.SUCCEEDED
            )
            assert record.status == expected, (day, record.status)
            evaluation = record.event.dagster_event.asset_check_evaluation_data
            assert evaluation.partition == day
            assert evaluation.metadata["score"].value == SCORES[day]

        # Materializations: one per day, each with its own metadata (the latest one of each partition).
        for day in DAYS:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=daily_scores.key, asset_partitions=[day]), limit=1
            ).records
            assert len(records) == 1, day
            materialization = records[0].asset_materialization
            assert materialization.partition == day
            assert materialization.metadata["score"].value == SCORES[day]
            assert materialization.metadata["day"].value == day
        fetched = instance.fetch_materializations(daily_scores.key, limit=100).records
        assert sorted(r.partition_key for r in fetched) == DAYS
        assert {r.partition_key: r.asset_materialization.metadata["score"].value for r in fetched} == SCORES
    print(f"postgres run + checks: {time.monotonic() - started:.2f}s")


def test_check_result_in_a_range_run_has_no_partition(postgres_home):
    """Documents the pitfall the test above avoids: a plain AssetCheckResult in a single-run backfill is
    stored once, without a partition, and every day of the range keeps its PLANNED row (the UI shows
    them as skipped); the MaterializeResult's metadata is copied onto every day."""
    with dg.DagsterInstance.get() as instance:
        result = _run_range(instance, plain_scores)
        assert result.success
        records = instance.event_log_storage.get_asset_check_execution_history(PLAIN_SPEC.key, limit=100)
        assert sorted((r.partition or "", r.status.value) for r in records) == [
            ("", "SUCCEEDED"),
            *((day, "PLANNED") for day in DAYS),
        ]
        fetched = instance.fetch_materializations(plain_scores.key, limit=100).records
        assert {
            r.partition_key: r.asset_materialization.metadata["days"].value for r in fetched
        } == dict.fromkeys(DAYS, len(DAYS))
