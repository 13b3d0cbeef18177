"""Dagster wiring of the closed loop: the daily assets (model versions, retraining trigger, version
comparison), their checks (which the alert sensor delivers like every other check), the decision jobs
launched from the Launchpad, and the auto-approval sensor. The logic is in `retraining.logic`."""

import datetime as dt

import dagster as dg
import pandas as pd
from pydantic import Field

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import CANARY_CHECK, DUCKDB_POOL, OWNERS, RETRAINING_CHECK
from monitor_assets.formatting import fmt_cell
from monitor_assets.retraining import logic as L
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.storage.warehouse import connect
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    by_day,
    daily_partitions,
    day_label,
    days_with_label_refresh,
    frame_markdown,
    partition_check_results,
    run_days,
    table_schema,
)

GROUP_RETRAINING = "retraining"
APPROVE_JOB = "approve_retraining_job"
REJECT_JOB = "reject_retraining_job"
OPEN_JOB = "open_retraining_request_job"
REANCHOR_JOB = "reanchor_reference_job"
AUTO_APPROVAL_SENSOR = "retraining_auto_approval_sensor"
NO_RUN_RETRY = {"dagster/max_retries": "0"}

TRIGGER_COLUMNS = {
    "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR (the champion tested)",
    "loss": "VARCHAR", "n_day": "BIGINT", "mean_loss_day": "DOUBLE", "band_low": "DOUBLE", "band_high": "DOUBLE",
    "window_start": "DATE", "n_current": "BIGINT", "mean_current": "DOUBLE", "reference_anchor": "DATE",
    "n_reference": "BIGINT", "mean_reference": "DOUBLE", "statistic": "DOUBLE (CUSUM, log-likelihood ratio)",
    "p_value": "DOUBLE (sequential: a stable model's chance of such a CUSUM within 90 days)",
    "p_adjusted": "DOUBLE (Bonferroni across the day's models beyond 40)", "flagged": "BOOLEAN", "note": "VARCHAR",
    "computed_at": "TIMESTAMP"}
VERSION_COLUMNS = {"model_id": "VARCHAR", "model_version": "VARCHAR", "first_seen": "DATE", "last_seen": "DATE",
                   "traffic_share": "DOUBLE (on the model's last day)", "role": "VARCHAR (champion, challenger, retired)",
                   "champion_since": "DATE", "computed_at": "TIMESTAMP"}
COMPARISON_COLUMNS = {
    "partition_date": "DATE", "model_id": "VARCHAR", "champion_version": "VARCHAR", "challenger_version": "VARCHAR",
    "metric": "VARCHAR", "champion_value": "DOUBLE", "challenger_value": "DOUBLE", "difference": "DOUBLE",
    "p_value": "DOUBLE (one-sided: challenger worse)", "gate": "VARCHAR (pass, fail, wait)",
    "verdict": "VARCHAR (promote, hold, rollback)", "reason": "VARCHAR", "computed_at": "TIMESTAMP"}


def build_retraining_definitions(config: MonitorConfig) -> dg.Definitions:
    """The closed loop: its daily assets and checks, the decision jobs and the auto-approval sensor."""
    jobs, sensors = build_retraining_jobs(config)
    return dg.Definitions(assets=build_retraining_assets(config), asset_checks=[_retraining_checks(config)],
                          jobs=jobs, sensors=sensors)


def build_retraining_assets(config: MonitorConfig) -> list[dg.AssetsDefinition]:
    """Model versions from the logs, then the trigger and the champion/challenger comparison on them."""
    common = {"group_name": GROUP_RETRAINING, "owners": OWNERS, "partitions_def": daily_partitions(config),
              "backfill_policy": dg.BackfillPolicy.single_run(), "retry_policy": IO_RETRY, "pool": DUCKDB_POOL}
    return [_model_versions_asset(config, common), _trigger_asset(config, common), _comparison_asset(config, common)]


def _ranker_deps(config: MonitorConfig, *more: dg.AssetKey) -> list[dg.AssetKey]:
    """Rankers' impressions and interactions (one asset loads both) feed their versions and comparisons, their
    daily figures (`more`: the per-request loss's daily sums) their trigger."""
    return [keys.RANKING_IMPRESSIONS, *more] if config.rankers else []


def _model_versions_asset(config: MonitorConfig, common: dict) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.MODEL_VERSIONS,
        description="Model versions from the logs' version field: per model and version first and last day seen, "
                    "share of the traffic on the model's last day, role (champion serves most, challengers serve "
                    "too, retired ones no longer serve) and the day it became champion. Daily volume, errors and "
                    "latency p95 per version go to `monitoring.version_daily`.",
        kinds={"duckdb", "python"}, deps=[keys.PREDICTIONS, *_ranker_deps(config)],
        metadata={"dagster/table_name": "monitoring.model_versions",
                  "dagster/column_schema": table_schema(VERSION_COLUMNS)}, **common)
    def model_versions(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = run_days(context)
        with warehouse.connect() as con:
            versions = L.refresh_versions(con, config, days)
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "versions": len(versions),
            "challengers": int((versions.role == "challenger").sum()) if len(versions) else 0,
            "dagster/row_count": len(versions),
            "versions_table": dg.MetadataValue.md(frame_markdown(versions) if len(versions) else "none")})

    return model_versions


def _trigger_day_metadata(part: pd.DataFrame, opened: list[dict], day) -> dict:
    """One day's trigger figures for its partition from its rows (`wiring.by_day`): models tested and flagged,
    requests opened."""
    return {
        "models_tested": int(part.p_value.notna().sum()) if len(part) else 0,
        "models_flagged": int(part.flagged.sum()) if len(part) else 0,
        "requests_opened": len([r for r in opened if r["opened_on"] == day]),
        "smallest_adjusted_p": float(part.p_adjusted.min()) if len(part) and part.p_adjusted.notna().any()
        else None,
        "flagged": dg.MetadataValue.md(frame_markdown(part[part.flagged][[
            "model_id", "model_version", "mean_current", "mean_reference", "p_adjusted"]])
            if len(part) and part.flagged.any() else "none")}


def _trigger_asset(config: MonitorConfig, common: dict) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.RETRAINING_TRIGGER,
        description="The retraining trigger, per model and day: per-prediction losses (log loss for classifiers, "
                    "squared or absolute error for regressors; a ranker's 1 - NDCG@k per request whose interactions "
                    "are all read, its reference batch from its reference file) of the champion since its reference loss batch (its "
                    "first labelled production days; `monitoring.reference_losses`): a one-sided CUSUM of the daily "
                    "losses against the batch, its sequential p-value per 90 days, a correction across the day's "
                    "models, and persistence "
                    "(k of the last n days) before a request opens in `monitoring.retraining_requests`. Each run "
                    "also refreshes the `label_delay_days` before it. Until a classifier's labels land, its "
                    "unlabelled rows count with their expected log loss from the estimator's calibrated scores "
                    "(`monitoring.estimators`).",
        kinds={"duckdb", "python"},
        deps=[keys.MODEL_VERSIONS, keys.LABELS, keys.ESTIMATED_PERFORMANCE,
              *_ranker_deps(config, keys.RANKING_PERFORMANCE)],
        metadata={"dagster/table_name": "monitoring.retraining_trigger",
                  "dagster/column_schema": table_schema(TRIGGER_COLUMNS)}, **common)
    def retraining_trigger(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = days_with_label_refresh(run_days(context), config)
        with warehouse.connect() as con:
            result = L.run_trigger(con, config, days)
            open_requests = L.open_requests(con)
        rows = result.rows
        of_day = by_day(rows, run_days(context))
        add_partition_metadata(context, {day: _trigger_day_metadata(part, result.opened, day)
                                         for day, part in of_day.items()})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "requests_opened": len(result.opened), "requests_superseded": result.superseded,
            "open_requests": len(open_requests), "dagster/row_count": len(rows),
            "open_requests_table": dg.MetadataValue.md(frame_markdown(open_requests) if len(open_requests) else "none"),
        })

    return retraining_trigger


def _comparison_day_metadata(part: pd.DataFrame) -> dict:
    """One day's comparison figures for its partition from its rows (`wiring.by_day`): challengers, rollbacks and
    promotions."""
    verdicts = part.drop_duplicates(["model_id", "challenger_version"]) if len(part) else part
    return {"challengers": len(verdicts),
            "rollbacks": int((verdicts.verdict == "rollback").sum()) if len(verdicts) else 0,
            "promotions": int((verdicts.verdict == "promote").sum()) if len(verdicts) else 0}


def _comparison_asset(config: MonitorConfig, common: dict) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.VERSION_COMPARISON,
        description="Champion vs challenger, per model and day a challenger serves: over the days both served "
                    "since the challenger appeared, latency p95, error rate (two-proportion z-test), loss "
                    "(Mann-Whitney U) and accuracy; canary gates recommend promote, hold or rollback.",
        kinds={"duckdb", "python"}, deps=[keys.MODEL_VERSIONS, keys.LABELS, *_ranker_deps(config)],
        metadata={"dagster/table_name": "monitoring.version_comparison",
                  "dagster/column_schema": table_schema(COMPARISON_COLUMNS)}, **common)
    def version_comparison(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = days_with_label_refresh(run_days(context), config)
        with warehouse.connect() as con:
            frame = L.run_comparison(con, config, days)
        of_day = by_day(frame, run_days(context))
        add_partition_metadata(context, {day: _comparison_day_metadata(part) for day, part in of_day.items()})
        latest = frame[frame.partition_date == frame.partition_date.max()] if len(frame) else frame
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(frame),
            "latest": dg.MetadataValue.md(frame_markdown(latest[["model_id", "challenger_version", "metric",
                                                                 "champion_value", "challenger_value", "p_value",
                                                                 "gate", "verdict"]]) if len(latest) else "none")})

    return version_comparison


def _retraining_checks(config: MonitorConfig) -> dg.AssetChecksDefinition:
    partitions = daily_partitions(config)
    trigger_spec = dg.AssetCheckSpec(
        RETRAINING_CHECK, asset=keys.RETRAINING_TRIGGER, partitions_def=partitions,
        description="Fails on the day a retraining request opens for a model (losses persistently above its "
                    "reference batch); the alert sensor sends it to the model's channels.")
    canary_spec = dg.AssetCheckSpec(
        CANARY_CHECK, asset=keys.VERSION_COMPARISON, partitions_def=partitions,
        description="Fails (ERROR) when a challenger version fails its canary gates: roll it back.")

    # Subsettable: an asset-graph backfill may run version_comparison and retraining_trigger in different runs.
    @dg.multi_asset_check(name="retraining_checks", specs=[trigger_spec, canary_spec], retry_policy=IO_RETRY,
                          pool=DUCKDB_POOL, can_subset=True)
    def retraining_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
        selected = context.selected_asset_check_keys
        days = days_with_label_refresh(run_days(context), config)
        with warehouse.connect() as con:
            requests = L.trigger_failures(con, config, days, RETRAINING_CHECK)
            tested = L.models_tested(con, days)
            comparison = L.comparisons(con, days)
        compared = (comparison.drop_duplicates(["partition_date", "model_id", "challenger_version"])
                    .groupby(pd.to_datetime(comparison.partition_date).dt.date).size().to_dict() if len(comparison) else {})
        if trigger_spec.key in selected:
            yield from partition_check_results(context, trigger_spec, days, requests, tested)
        if canary_spec.key in selected:
            yield from partition_check_results(context, canary_spec, days,
                                               L.rollback_failures(comparison, CANARY_CHECK), compared)

    return retraining_checks


# -- decisions: jobs launched from the Launchpad (typed config), the CLI runs the same jobs ---------------


class DecisionConfig(dg.Config):
    """Approve or reject a retraining request."""

    request_id: int = Field(description="the request's number (monitoring.retraining_requests.request_id)")
    by: str = Field(description="who decides (recorded)")
    note: str = Field(default="", description="why (recorded)")


class OpenRequestConfig(dg.Config):
    """Open a retraining request by hand (it starts as proposed)."""

    model_id: str = Field(description="the model")
    by: str = Field(description="who opens it (recorded)")
    reason: str = Field(description="why (recorded)")
    model_version: str | None = Field(default=None, description="the version (default: the current champion)")


class ReanchorConfig(dg.Config):
    """Re-anchor a model version's reference loss batch on a day."""

    model_id: str = Field(description="the model")
    model_version: str = Field(description="the version whose reference batch moves")
    day: str = Field(description="first day of the new reference batch, YYYY-MM-DD")
    by: str = Field(description="who decides (recorded)")
    reason: str = Field(description="why (recorded)")


def build_retraining_jobs(monitor: MonitorConfig) -> tuple[list[dg.JobDefinition], list]:
    def con():
        return connect(monitor.warehouse_path, monitor.lake_path, models=[])

    def decided(context, action) -> dict:
        try:
            with con() as c:
                result = action(c)
        except ValueError as exc:  # a wrong id, model or state: say so, do not retry
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        # Read by a person in the run's log: dates as ISO text, missing as '-', not Timestamp(...)/NaT reprs.
        context.log.info(", ".join(f"{k}={fmt_cell(v, k)}" for k, v in result.items()) if isinstance(result, dict)
                         else str(result))
        return result

    @dg.op(name="approve_retraining_request", tags={"kind": "retraining"}, pool=DUCKDB_POOL, retry_policy=IO_RETRY)
    def approve_op(context: dg.OpExecutionContext, config: DecisionConfig) -> dict:
        request = decided(context, lambda c: L.decide(c, config.request_id, "approved", config.by, config.note))
        return {k: (str(v) if isinstance(v, pd.Timestamp | dt.date) else v) for k, v in request.items()
                if k in ("request_id", "model_id", "model_version", "opened_on")}

    @dg.op(name="run_retraining_entry_point", tags={"kind": "retraining"})
    def train_op(context: dg.OpExecutionContext, request: dict) -> dict:
        """Runs the model's configured entry point; the outcome is recorded on the request either way."""
        try:
            result = L.run_entry_point(monitor, request, context.log.info)
        except Exception as exc:
            with con() as c:
                L.record_outcome(c, request["request_id"], False, f"{type(exc).__name__}: {exc}", context.run_id)
            raise dg.Failure(description=f"retraining of {request['model_id']} failed: {exc}",
                             allow_retries=False) from exc
        summary = ", ".join(f"{k}={v}" for k, v in result.items()) or "no details returned"
        with con() as c:
            L.record_outcome(c, request["request_id"], True, summary, context.run_id)
        context.add_output_metadata({"outcome": summary, "request_id": request["request_id"]})
        return result

    @dg.op(name="reject_retraining_request", tags={"kind": "retraining"}, pool=DUCKDB_POOL, retry_policy=IO_RETRY)
    def reject_op(context: dg.OpExecutionContext, config: DecisionConfig) -> None:
        decided(context, lambda c: L.decide(c, config.request_id, "rejected", config.by, config.note))

    @dg.op(name="open_retraining_request", tags={"kind": "retraining"}, pool=DUCKDB_POOL, retry_policy=IO_RETRY)
    def open_op(context: dg.OpExecutionContext, config: OpenRequestConfig) -> None:
        decided(context, lambda c: L.open_by_hand(c, monitor, config.model_id, config.by, config.reason,
                                                  config.model_version))

    @dg.op(name="reanchor_reference", tags={"kind": "retraining"}, pool=DUCKDB_POOL, retry_policy=IO_RETRY)
    def reanchor_op(context: dg.OpExecutionContext, config: ReanchorConfig) -> None:
        decided(context, lambda c: L.reanchor(c, monitor, config.model_id, config.model_version, config.day,
                                              config.by, config.reason))

    @dg.job(name=APPROVE_JOB, tags=NO_RUN_RETRY,
            description="Approve a retraining request and run the model's retraining entry point "
                        "(Launchpad: request_id, by, note). The outcome is recorded on the request.")
    def approve_job():
        train_op(approve_op())

    @dg.job(name=REJECT_JOB, tags=NO_RUN_RETRY, description="Reject a retraining request (request_id, by, note).")
    def reject_job():
        reject_op()

    @dg.job(name=OPEN_JOB, tags=NO_RUN_RETRY, description="Open a retraining request by hand (model_id, by, reason).")
    def open_job():
        open_op()

    @dg.job(name=REANCHOR_JOB, tags=NO_RUN_RETRY,
            description="Re-anchor a model version's reference loss batch on a day (model_id, model_version, day).")
    def reanchor_job():
        reanchor_op()

    return [approve_job, reject_job, open_job, reanchor_job], [_auto_approval_sensor(monitor, approve_job)]


def _auto_approval_sensor(monitor: MonitorConfig, approve_job: dg.JobDefinition) -> dg.SensorDefinition:
    auto = [m.id for m in L.subjects(monitor) if m.retraining.auto_approve]

    @dg.sensor(name=AUTO_APPROVAL_SENSOR, job=approve_job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Approves and runs proposed retraining requests of models with "
                           "retraining.auto_approve: true (off by default); one run per request.")
    def auto_approval_sensor(context: dg.SensorEvaluationContext):
        if not auto:
            return dg.SkipReason("no model has retraining.auto_approve: true")
        import duckdb

        try:
            with connect(monitor.warehouse_path, monitor.lake_path, models=[]) as c:
                rows = L.proposed_requests(c, auto)
        except duckdb.IOException as exc:  # a run holds the warehouse: next tick
            return dg.SkipReason(f"warehouse busy: {exc}")
        if not rows:
            return dg.SkipReason(f"no proposed request for {', '.join(auto)}")
        return [dg.RunRequest(run_key=f"auto-approve-{rid}", run_config={"ops": {"approve_retraining_request": {
            "config": {"request_id": int(rid), "by": "auto-approval", "note": "retraining.auto_approve is on"}}}})
            for rid in rows]

    return auto_approval_sensor
