"""Ingestion: each day's prediction logs, labels, interactions and sales into `raw.*` tables.

Every record is loaded or quarantined with a reason; metadata shows read = loaded + quarantined.
"""


import datetime as dt
import time
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import (
    ALL_MODELS,
    DUCKDB_POOL,
    GROUP_INGESTION,
    OWNERS,
    QUALITY_CHECK,
    VOLUME_RANGE_CHECK,
)
from monitor_assets.formatting import fmt_pct
from monitor_assets.ingestion.log import (
    log_ingestion,
    models_without_records,
    quarantine_preview,
    quarantined_shares,
    volumes_with_trailing_mean,
)
from monitor_assets.ingestion.quality import StreamingValidator, stored_verdicts_of, validate_day
from monitor_assets.ingestion.readers import MissingInput, ingest_days
from monitor_assets.storage.lake import PREDICTION_COLUMNS, TABLES
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    daily_partitions,
    day_label,
    fail_fast,
    in_shard,
    markdown_table,
    partition_check_results,
    run_days,
    should_log_progress,
    table_schema,
)

# Sources read per model (a shard reads its models' records); the others concern the whole shop.
PER_MODEL_SOURCES = ("predictions", "labels")
DESCRIPTIONS = {
    "predictions": "Prediction logs (structured JSON lines, CSV or Parquet), one row per served request, with "
                   "one typed column per configured feature (named after its field, e.g. `features.amount`). "
                   "Bad records go to raw.quarantine with file, line and reason.",
    "labels": "Ground-truth labels, partitioned by the day they arrived (usually 1-3 days after the "
              "prediction). Labels for unknown predictions are quarantined.",
    "interactions": "User interactions (views, clicks, add-to-cart, purchases) per day.",
    "sales": "Order lines per day: quantity, unit price and revenue.",
}
SCHEMAS = {
    "predictions": PREDICTION_COLUMNS,  # the columns every model's table shares; its features follow
    "labels": TABLES["raw.labels"][0],
    "interactions": {"partition_date": "DATE", "session_id": "VARCHAR", "user_id": "VARCHAR", "ts": "TIMESTAMPTZ",
                     "event": "VARCHAR", "product_id": "VARCHAR", "from_recommendation": "BOOLEAN"},
    "sales": {"partition_date": "DATE", "order_id": "VARCHAR", "ts": "TIMESTAMPTZ", "user_id": "VARCHAR",
              "product_id": "VARCHAR", "quantity": "DOUBLE", "unit_price": "DOUBLE", "revenue": "DOUBLE"},
}


def _ingestion_asset(config: MonitorConfig, source: str, deps: list) -> dg.AssetsDefinition:
    per_model = source in PER_MODEL_SOURCES

    @dg.asset(
        name=source,
        key_prefix=["raw"],
        description=DESCRIPTIONS[source],
        group_name=GROUP_INGESTION,
        kinds={"duckdb", "python"},
        owners=OWNERS,
        partitions_def=daily_partitions(config),
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY,
        # Predictions and labels live in the lake only: shards (processes on their own models) load them at once.
        pool=None if per_model else DUCKDB_POOL,
        deps=deps,
        metadata={"dagster/table_name": f"raw.{source}",
                  "dagster/column_schema": table_schema(SCHEMAS[source])},
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config) if per_model else config
        days = run_days(context)
        if source == "predictions":
            _preflight_in_step(context, cfg, days)
        run = _IngestRun(source)
        # No model registered up front: ingest_days registers every model's table after writing predictions.
        with fail_fast(), (warehouse.connect_lake() if per_model else warehouse.connect()) as con:
            # The data-quality suite runs on another thread as each model-day lands, so its pandas work
            # overlaps the reading; a failed model-day is held alone.
            validator = StreamingValidator(con, cfg) if source == "predictions" else None
            try:
                _ingest_days(context, con, cfg, source, days, run, validator)
            except BaseException:
                if validator is not None:
                    validator.abandon()
                raise
            log_ingestion(con, cfg, source, run.logged)  # one commit for the run's days, not one a day
            if validator is not None:
                # Only the days stored now: a refused day keeps its earlier verdicts with its rows.
                stored = [d for d, _ in run.logged]
                if stored:
                    run.held = [f"{v.partition_date}: {v.model_id}" for v in validator.finish(stored) if not v.passed]
                else:
                    validator.abandon()
            run.preview = quarantine_preview(con, source, days)
            if source == "predictions" and run.logged:  # no day stored: no model's table is registered
                # A configured model that logged nothing on a day is an incident, not a zero.
                run.silent = models_without_records(con, days, cfg.model_ids)
        assert run.totals["read"] == run.totals["loaded"] + run.totals["quarantined"]  # nothing is lost
        metadata = _run_metadata(cfg, source, days, run)
        _warn(context, source, run)
        # Labels come late: a day whose file is not there yet keeps its rows and warns; a labels path
        # that matches nothing on any day of the run is a typo and fails like any other source.
        if run.refused and (source != "labels" or len(run.refused) == len(days)):
            # After the other days are stored: one line, the first day's reason, and how many more.
            more = f" (and {len(run.refused) - 1} more day(s) without files)" if len(run.refused) > 1 else ""
            raise dg.Failure(description=run.refused[0] + more, allow_retries=False,
                             metadata={"days_refused": dg.MetadataValue.json(run.refused)})
        # Each day's own counts on its partition (the totals above stay on the run's other keys).
        add_partition_metadata(context, {dt.date.fromisoformat(d): {
            "files": files, "records_read": read, "records_loaded": loaded, "records_quarantined": quarantined,
            "dagster/row_count": loaded, "quarantine_share": quarantined / read if read else 0.0,
            "days": d, **({"labels_corrected": corrected} if source == "labels" else {})}
            for d, files, read, loaded, quarantined, corrected in run.per_day})
        return dg.MaterializeResult(metadata=metadata)

    return _asset


@dataclass
class _IngestRun:
    """What one ingestion step saw over its days: counts, reasons, notes, and the days it refused."""

    source: str
    totals: dict = field(default_factory=lambda: {"files": 0, "read": 0, "loaded": 0, "quarantined": 0, "corrected": 0})
    reasons: dict = field(default_factory=dict)
    missing_days: list = field(default_factory=list)
    per_day: list = field(default_factory=list)
    logged: list = field(default_factory=list)
    refused: list = field(default_factory=list)  # source-days whose glob matched nothing: not replaced, the step fails
    notes: list = field(default_factory=list)  # about whole files: refused, too large, unreadable, lacking a column
    held: list = field(default_factory=list)
    silent: list = field(default_factory=list)
    preview: list = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, day: dt.date, result, own_files: bool) -> None:
        self.logged.append((day, result))
        self.notes += [f"{day}: {n}" for n in result.notes if not n.startswith("no_file:")]
        if not result.files and own_files:
            self.missing_days.append(str(day))
        for k, v in (("files", len(result.files)), ("read", result.read), ("loaded", result.loaded),
                     ("quarantined", result.quarantined), ("corrected", result.labels_corrected)):
            self.totals[k] += v
        for reason, n in result.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.per_day.append((str(day), len(result.files), result.read, result.loaded, result.quarantined,
                             result.labels_corrected))


def _preflight_in_step(context, cfg: MonitorConfig, days: list[dt.date]) -> None:
    """The first step: a run launched from the UI checks its predictions source before it writes (run_pipeline
    ran the whole preflight already and says so in a tag)."""
    from monitor_assets.preflight import PREFLIGHT_TAG, require

    if context.run.tags.get(PREFLIGHT_TAG) != "passed":
        with fail_fast():  # a missing file or column is not healed by retrying
            for warning in require(cfg, days, only="sources.predictions"):
                context.log.warning(str(warning))


def _ingest_days(context, con, cfg: MonitorConfig, source: str, days: list[dt.date], run: _IngestRun,
                 validator) -> None:
    """The run's days, read in chunks (`ingest_days`); a day whose input matched nothing keeps its rows and is
    set aside in `run.refused`."""
    counted = 0

    def done(day: dt.date, outcome) -> None:
        nonlocal counted
        counted += 1
        if isinstance(outcome, MissingInput):  # the other days load; this one keeps its rows, and fails the step
            run.refused.append(str(outcome))
            (context.log.warning if source == "labels" else context.log.error)(str(outcome))
            return
        # Shared files are shard 0's to count (and to miss); a model's own files its shard's.
        run.add(day, outcome, cfg.owns_shared or (source == "predictions" and cfg.predictions.per_model))
        if should_log_progress(counted, len(days)):
            rate = run.totals["read"] / max(time.perf_counter() - run.started, 1e-9)
            context.log.info(f"{source}: {counted}/{len(days)} days done ({day}), {rate:,.0f} records/s")

    ingest_days(con, cfg, source, days, validator.add if validator else None, log=False, done=done)


def _run_metadata(cfg: MonitorConfig, source: str, days: list[dt.date], run: _IngestRun) -> dict:
    totals = run.totals
    metadata = {
        "days": day_label(days),
        **({"shard": cfg.shard_label, "models": len(cfg.models)} if cfg.sharded else {}),
        "files": totals["files"],
        "records_read": totals["read"],
        "records_loaded": totals["loaded"],
        "records_quarantined": totals["quarantined"],
        "dagster/row_count": totals["loaded"],
        "quarantine_share": totals["quarantined"] / totals["read"] if totals["read"] else 0.0,
        "quarantine_reasons": dg.MetadataValue.json(run.reasons),
        "days_without_files": dg.MetadataValue.json(run.missing_days),
        "per_day": dg.MetadataValue.md(markdown_table(
            ["day", "files", "read", "loaded", "quarantined", "labels corrected"], run.per_day, limit=40)),
    }
    if run.preview:
        metadata["quarantine_preview"] = dg.MetadataValue.md(markdown_table(
            ["day", "file", "line", "reason", "raw record"], run.preview))
    if source == "labels":
        metadata["labels_corrected"] = totals["corrected"]  # a later file changed an earlier label
    if source == "predictions":
        metadata["models_without_records"] = dg.MetadataValue.json(run.silent)
        metadata["model_days_held"] = dg.MetadataValue.json(run.held)  # failed the data-quality suite
    if run.notes:
        metadata["file_notes"] = dg.MetadataValue.json(run.notes[:100])
    return metadata


def _warn(context, source: str, run: _IngestRun) -> None:
    for item in run.held:
        context.log.warning(f"predictions of {item} failed the data-quality suite: held from metrics, "
                            "drift and fairness")
    for item in run.silent:
        context.log.warning(f"no prediction records for model {item}")
    if run.missing_days:
        context.log.warning(f"{source}: no input file for {', '.join(run.missing_days)}")
    for note in run.notes:
        context.log.warning(f"{source} {note}")


def build_ingestion_assets(config: MonitorConfig) -> list[dg.AssetsDefinition]:
    predictions = _ingestion_asset(config, "predictions", [])
    # Labels are matched to logged predictions, so they load after them.
    labels = _ingestion_asset(config, "labels", [predictions.key])
    assets = [predictions, labels]
    if config.interactions:
        assets.append(_ingestion_asset(config, "interactions", []))
    if config.sales:
        assets.append(_ingestion_asset(config, "sales", []))
    return assets


def build_quality_checks(config: MonitorConfig, predictions: dg.AssetKey) -> list:
    partitions = daily_partitions(config)
    validity = dg.AssetCheckSpec(
        QUALITY_CHECK, asset=predictions, partitions_def=partitions,
        description="Great Expectations on the loaded predictions of each model and day: required fields present, "
                    "prediction ids unique per model, model ids known, classifier scores in [0, 1], latency "
                    "non-negative, timestamps inside the day, known categories. The suite runs when the "
                    "predictions load; a model-day that fails is held out of metrics, drift and fairness (the other "
                    "models go on), and the alert goes to that model's channels.")
    volume = dg.AssetCheckSpec(
        VOLUME_RANGE_CHECK, asset=predictions, partitions_def=partitions,
        description="Each model's daily volume within 50%..200% of its trailing 7-day average, and the share of "
                    "quarantined records under 5%. Warns; does not block.")

    @dg.multi_asset_check(specs=[validity], name=QUALITY_CHECK)
    def predictions_are_complete_and_valid(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
        cfg = in_shard(context, config)
        days = run_days(context)
        failures, checked = [], {}
        with fail_fast(), warehouse.connect_lake() as con:
            stored = stored_verdicts_of(con, cfg, days)
            for day in days:
                verdicts = stored[day]
                if verdicts is None:  # loaded before verdicts were kept: validate now
                    verdicts = validate_day(con, cfg, day)
                checked[day] = len(verdicts)
                failures += [{"partition_date": day, "model_id": v.model_id, "check_name": QUALITY_CHECK,
                              "severity": "ERROR", "value": float(v.unexpected), "threshold": 0.0,
                              "message": f"{v.message} ({v.rows:,} rows held from metrics, drift and fairness)"}
                             for v in verdicts if not v.passed]
                # Nothing loaded is not "all passed": a model without rows warns (a path typo, a silent logger).
                with_rows = {v.model_id for v in verdicts if v.rows}
                failures += [{"partition_date": day, "model_id": m, "check_name": QUALITY_CHECK,
                              "severity": "WARN", "value": 0.0, "threshold": 1.0,
                              "message": "no rows: no prediction of this model loaded for the day (see "
                                         "raw.quarantine and raw.ingestion_log)"}
                             for m in cfg.model_ids if m not in with_rows]
        yield from partition_check_results(context, validity, days, failures, checked)

    @dg.multi_asset_check(specs=[volume], name=VOLUME_RANGE_CHECK)
    def prediction_volume_within_expected_range(context: dg.AssetCheckExecutionContext,
                                                warehouse: WarehouseResource):
        cfg = in_shard(context, config)
        days = run_days(context)
        with warehouse.connect_lake(models=cfg.model_ids) as con:
            table = volumes_with_trailing_mean(con, days, cfg.model_ids)
            # The whole day's share (every shard's rows), judged once: by shard 0, or the unsharded run.
            quarantine = quarantined_shares(con, days) if cfg.owns_shared else []
        table["ratio"] = table.n / table.trailing
        odd = table[table.trailing.notna() & ((table.ratio < 0.5) | (table.ratio > 2.0))]
        failures = [{"partition_date": r.day, "model_id": r.model_id, "check_name": VOLUME_RANGE_CHECK,
                     "severity": "WARN", "value": float(r.ratio), "threshold": 0.5 if r.ratio < 0.5 else 2.0,
                     "message": f"{r.n:,} predictions, {fmt_pct(r.ratio)} of the trailing 7-day mean "
                                f"{r.trailing:,.0f}"}
                    for r in odd.itertuples()]
        failures += [{"partition_date": d, "model_id": ALL_MODELS, "check_name": VOLUME_RANGE_CHECK,
                      "severity": "WARN", "value": float(share), "threshold": 0.05,
                      "message": f"{fmt_pct(share)} of the day's prediction records were quarantined"}
                     for d, share in quarantine if share is not None and share > 0.05]
        evaluated = {pd.Timestamp(d).date(): n for d, n in table.groupby("day").size().items()}
        yield from partition_check_results(context, volume, days, failures, evaluated)

    return [predictions_are_complete_and_valid, prediction_volume_within_expected_range]
