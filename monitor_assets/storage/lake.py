"""Every table in Delta Lake (delta-rs), read by DuckDB's Parquet reader: the heavy partitioned ones and the
small state, which `edit` changes in place by read-modify-write (one commit, applied again on a conflict).

Layout under the lake root (`MONITOR_LAKE`: a folder, by default beside the warehouse file, or a bucket URI
such as `s3://bucket/prefix`):
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

On object storage the root URI alone decides: delta-rs writes and reads the tables with storage options
taken from the environment (`AWS_*` for `s3://`), and DuckDB reads the same Parquet files through an fsspec
filesystem (s3fs) registered on each connection that scans the lake. Commits use the store's conditional
put (`If-None-Match: *`), so concurrent writers need no lock table. A local root keeps plain os calls.

A damaged data file (missing, cut short, unreadable footer) harms only its table's partition: the view leaves it
out and a read of that partition fails naming the file, while other partitions and tables read; a write replacing
that partition takes the file out of the log first (`heal`), so re-running the day repairs it. `check` lists them
all (`python -m monitor_assets.storage.maintenance check`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import random
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from monitor_assets.storage.sql import quote_ident, sql_str

log = logging.getLogger(__name__)
T = TypeVar("T")

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
                        "source_file": "VARCHAR", "line_no": "BIGINT", "reason": "VARCHAR", "raw_record": "VARCHAR",
                        "detail": "VARCHAR"},
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
        "main_metric_value": "DOUBLE", "f1_macro": "DOUBLE", "f1_weighted": "DOUBLE"}, ("partition_date",)),
    "monitoring.estimated_performance": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "metric": "VARCHAR",
        "estimate": "DOUBLE", "lower": "DOUBLE", "upper": "DOUBLE", "n_rows": "BIGINT", "method": "VARCHAR",
        "realized": "DOUBLE", "n_labelled": "BIGINT", "within_band": "BOOLEAN", "computed_at": "TIMESTAMPTZ"},
        ("partition_date",)),
    # The same per model, day and segment of at least segments.min_rows rows (estimation.logic); the main metric
    # tested against the segment's floor (segments.logic's rule), Benjamini-Hochberg across the model-day's segments.
    "monitoring.segment_estimated_performance": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "segment_by": "VARCHAR",
        "segment": "VARCHAR", "metric": "VARCHAR", "estimate": "DOUBLE", "lower": "DOUBLE", "upper": "DOUBLE",
        "n_rows": "BIGINT", "method": "VARCHAR", "realized": "DOUBLE", "n_labelled": "BIGINT",
        "within_band": "BOOLEAN", "reference_value": "DOUBLE", "reference_source": "VARCHAR", "floor": "DOUBLE",
        "p_value": "DOUBLE", "p_adjusted": "DOUBLE", "below_floor": "BOOLEAN", "computed_at": "TIMESTAMPTZ"},
        ("partition_date",)),
    # Per model, day and segment (segments.logic): the performance figures and the main metric's test.
    "monitoring.segment_performance": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "segment_by": "VARCHAR", "segment": "VARCHAR",
        "volume": "BIGINT", "n_labelled": "BIGINT", "label_coverage": "DOUBLE", "error_rate": "DOUBLE",
        "accuracy": "DOUBLE", "precision": "DOUBLE", "recall": "DOUBLE", "f1": "DOUBLE", "roc_auc": "DOUBLE",
        "log_loss": "DOUBLE", "brier_score": "DOUBLE", "mae": "DOUBLE", "rmse": "DOUBLE", "mape": "DOUBLE",
        "r2": "DOUBLE", "metric": "VARCHAR", "value": "DOUBLE", "reference_value": "DOUBLE",
        "reference_source": "VARCHAR", "floor": "DOUBLE", "standard_error": "DOUBLE", "p_value": "DOUBLE",
        "p_adjusted": "DOUBLE", "below_floor": "BOOLEAN", "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
    # Per model, day, segment and feature (evaluation.segment_drift): the segment's drift verdict from the daily profiles,
    # adjusted across the model-day's segments and features; a segment under min_rows is one row, judged false.
    "monitoring.segment_drift": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "segment_by": "VARCHAR", "segment": "VARCHAR",
        "feature": "VARCHAR", "kind": "VARCHAR", "method": "VARCHAR", "statistic": "DOUBLE", "threshold": "DOUBLE",
        "evidence": "DOUBLE", "test": "VARCHAR", "p_value": "DOUBLE", "p_adjusted": "DOUBLE", "drifted": "BOOLEAN",
        "judged": "BOOLEAN", "n_rows": "BIGINT", "n_reference": "BIGINT", "reference_source": "VARCHAR",
        "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
    # Per model, day and method (multivariate.logic): the joint-drift statistic against its threshold.
    "monitoring.multivariate_drift": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "method": "VARCHAR", "statistic": "DOUBLE",
        "threshold": "DOUBLE", "drifted": "BOOLEAN", "n_current": "BIGINT", "n_reference": "BIGINT",
        "top_features": "VARCHAR", "analysis_error": "VARCHAR", "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
    # Per model and day (multivariate.logic): a seeded sample of the day's feature rows, long (one row per sampled
    # row and feature), in shuffled order (`sample_rank`); the evaluation windows' multivariate drift draws from it.
    "monitoring.multivariate_samples": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "n_day_rows": "BIGINT",
        "sample_rank": "BIGINT", "feature": "VARCHAR", "number": "DOUBLE", "category": "VARCHAR",
        "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
    # Fitted multivariate references (stats.multivariate), one per model and reference version: fitted once.
    "monitoring.multivariate_references": ({"model_id": "VARCHAR", "fit_key": "VARCHAR", "reference": "VARCHAR",
                                            "reference_rows": "BIGINT", "n_features": "BIGINT",
                                            "fit_seconds": "DOUBLE", "computed_at": "TIMESTAMP"}, ()),
    # Fitted estimators (stats.estimation), one per model and reference version: fitted once, reused daily.
    "monitoring.estimators": ({"model_id": "VARCHAR", "fit_key": "VARCHAR", "method": "VARCHAR",
                               "estimator": "VARCHAR", "reference_rows": "BIGINT", "fit_seconds": "DOUBLE",
                               "computed_at": "TIMESTAMP"}, ()),
    "monitoring.feature_drift": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "feature": "VARCHAR", "role": "VARCHAR", "kind": "VARCHAR",
        "method": "VARCHAR", "statistic": "DOUBLE", "p_value": "DOUBLE", "threshold": "DOUBLE", "drifted": "BOOLEAN",
        "n_current": "BIGINT", "n_reference": "BIGINT", "current_summary": "VARCHAR", "reference_summary": "VARCHAR",
        "current_mean": "DOUBLE", "reference_mean": "DOUBLE", "missing_share": "DOUBLE", "unseen_share": "DOUBLE",
        "computed_at": "TIMESTAMPTZ", "p_value_adjusted": "DOUBLE", "reference_missing_share": "DOUBLE",
        "missing_p_value": "DOUBLE", "missing_drift": "BOOLEAN", "expected_unseen_share": "DOUBLE",
        "unseen_p_value": "DOUBLE", "unseen_drift": "BOOLEAN", "all_unseen": "BOOLEAN", "all_missing": "BOOLEAN",
        "unseen_summary": "VARCHAR", "message": "VARCHAR", "importance": "DOUBLE", "key_feature": "BOOLEAN",
        "strong_drift": "BOOLEAN"}, ("partition_date",)),
    # Per drifted feature-day (pictures.logic): reference and current distributions on shared bins, as JSON.
    "monitoring.drift_distributions": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "feature": "VARCHAR", "role": "VARCHAR", "kind": "VARCHAR",
        "method": "VARCHAR", "statistic": "DOUBLE", "p_value": "DOUBLE", "threshold": "DOUBLE", "evidence": "DOUBLE",
        "bins": "VARCHAR", "n_current": "BIGINT", "n_reference": "BIGINT", "computed_at": "TIMESTAMPTZ"},
        ("partition_date",)),
    "monitoring.drift_summary": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "n_features": "BIGINT", "n_drifted": "BIGINT",
        "drift_share": "DOUBLE", "dataset_drift": "BOOLEAN", "prediction_drift": "BOOLEAN", "label_drift": "BOOLEAN",
        "computed_at": "TIMESTAMPTZ", "n_missing_drift": "BIGINT", "n_unseen_drift": "BIGINT",
        "n_all_missing": "BIGINT", "n_all_unseen": "BIGINT", "analysis_error": "VARCHAR"}, ("partition_date",)),
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
        "equalized_odds_max_n": "BIGINT", "equalized_odds_min_group": "VARCHAR", "equalized_odds_min_n": "BIGINT",
        "fairness_baseline": "VARCHAR", "reference_demographic_parity_ratio": "DOUBLE",
        "reference_equalized_odds_difference": "DOUBLE", "baseline_note": "VARCHAR", "analysis_error": "VARCHAR"},
        ("partition_date",)),
    # Small per-model state, in the lake so that shards (processes on their own
    # models) write it at once. The ingestion log has a row per day, source and shard ("i/N"; "0/1": no shards).
    "raw.ingestion_log": ({"partition_date": "DATE", "source": "VARCHAR", "files": "BIGINT", "records_read": "BIGINT",
                           "records_loaded": "BIGINT", "records_quarantined": "BIGINT", "loaded_at": "TIMESTAMP",
                           "shard": "VARCHAR"}, ("partition_date",)),
    "monitoring.quality_verdicts": ({"partition_date": "DATE", "model_id": "VARCHAR", "rows": "BIGINT",
                                     "passed": "BOOLEAN", "unexpected": "BIGINT", "message": "VARCHAR",
                                     "validated_at": "TIMESTAMP"}, ("partition_date",)),
    "monitoring.reference_profiles": ({"model_id": "VARCHAR", "feature": "VARCHAR", "role": "VARCHAR",
                                       "kind": "VARCHAR", "reference_version": "VARCHAR", "n": "BIGINT",
                                       "profile": "VARCHAR", "computed_at": "TIMESTAMP", "importance": "DOUBLE"}, ()),
    "monitoring.reference_baselines": ({"model_id": "VARCHAR", "reference_version": "VARCHAR", "metric": "VARCHAR",
                                        "value": "DOUBLE"}, ()),
    "monitoring.history": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "metric": "VARCHAR", "segment": "VARCHAR",
        "value": "DOUBLE", "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
    # The evaluation store (evaluation.logic): a mergeable profile per model, day and version (JSON); per model
    # and reference version the profile layout and the reference's profile; per model, version, window, metric
    # the window's value beside the reference's and the previous window's.
    "monitoring.daily_profiles": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "layout": "VARCHAR",
        "n_rows": "BIGINT", "n_labelled": "BIGINT", "bytes": "BIGINT", "profile": "VARCHAR", "error": "VARCHAR",
        "computed_at": "TIMESTAMPTZ", "segment": "VARCHAR"}, ("partition_date",)),
    "monitoring.evaluation_references": ({"model_id": "VARCHAR", "fit_key": "VARCHAR", "reference": "VARCHAR",
                                          "reference_rows": "BIGINT", "layout": "VARCHAR", "fit_seconds": "DOUBLE",
                                          "computed_at": "TIMESTAMP"}, ()),
    "monitoring.evaluation_store": ({
        "window_id": "VARCHAR", "window_name": "VARCHAR", "window_kind": "VARCHAR", "window_start": "DATE",
        "window_end": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "metric": "VARCHAR",
        "value": "DOUBLE", "reference_value": "DOUBLE", "previous_value": "DOUBLE", "n_rows": "BIGINT",
        "n_labelled": "BIGINT", "days_profiled": "BIGINT", "complete": "BOOLEAN", "computed_at": "TIMESTAMPTZ",
        "segment": "VARCHAR", "reference_source": "VARCHAR"}, ("window_name",)),
    # The reference against a closed window for each feature the window's drift verdict flagged.
    "monitoring.window_distributions": ({
        "window_id": "VARCHAR", "window_name": "VARCHAR", "window_start": "DATE", "window_end": "DATE",
        "model_id": "VARCHAR", "feature": "VARCHAR", "kind": "VARCHAR", "method": "VARCHAR", "statistic": "DOUBLE",
        "p_value": "DOUBLE", "threshold": "DOUBLE", "evidence": "DOUBLE", "bins": "VARCHAR", "n_current": "BIGINT",
        "n_reference": "BIGINT", "computed_at": "TIMESTAMPTZ"}, ("window_name",)),
    # Business data and the cross-model steps' daily facts: here rather than in the DuckDB file, so that no run
    # needs a file shared between machines (the file is only the source of a one-time move, warehouse.MOVED_TO_LAKE).
    "raw.interactions": ({"partition_date": "DATE", "session_id": "VARCHAR", "user_id": "VARCHAR",
                          "ts": "TIMESTAMPTZ", "event": "VARCHAR", "product_id": "VARCHAR",
                          "from_recommendation": "BOOLEAN"}, ("partition_date",)),
    "raw.sales": ({"partition_date": "DATE", "order_id": "VARCHAR", "ts": "TIMESTAMPTZ", "user_id": "VARCHAR",
                   "product_id": "VARCHAR", "quantity": "DOUBLE", "unit_price": "DOUBLE", "revenue": "DOUBLE"},
                  ("partition_date",)),
    "monitoring.business_kpis_daily": ({
        "partition_date": "DATE", "sessions": "BIGINT", "sessions_with_purchase": "BIGINT",
        "conversion_rate": "DOUBLE", "recommendation_impressions": "BIGINT", "recommendation_ctr": "DOUBLE",
        "orders": "BIGINT", "units_sold": "DOUBLE", "revenue": "DOUBLE", "average_order_value": "DOUBLE",
        "computed_at": "TIMESTAMP"}, ("partition_date",)),
    "monitoring.anomalies": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "metric": "VARCHAR", "segment": "VARCHAR",
        "value": "DOUBLE", "expected": "DOUBLE", "robust_z": "DOUBLE", "direction": "VARCHAR",
        "computed_at": "TIMESTAMP"}, ("partition_date",)),
    "monitoring.version_daily": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "volume": "BIGINT",
        "n_errors": "BIGINT", "latency_p95_ms": "DOUBLE", "computed_at": "TIMESTAMP"}, ("partition_date",)),
    "monitoring.version_comparison": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "champion_version": "VARCHAR",
        "challenger_version": "VARCHAR", "metric": "VARCHAR", "champion_value": "DOUBLE",
        "challenger_value": "DOUBLE", "difference": "DOUBLE", "p_value": "DOUBLE", "gate": "VARCHAR",
        "verdict": "VARCHAR", "reason": "VARCHAR", "computed_at": "TIMESTAMP"}, ("partition_date",)),
    "monitoring.retraining_trigger": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "loss": "VARCHAR",
        "n_day": "BIGINT", "mean_loss_day": "DOUBLE", "band_low": "DOUBLE", "band_high": "DOUBLE",
        "window_start": "DATE", "n_current": "BIGINT", "mean_current": "DOUBLE", "reference_anchor": "DATE",
        "n_reference": "BIGINT", "mean_reference": "DOUBLE", "statistic": "DOUBLE", "p_value": "DOUBLE",
        "p_adjusted": "DOUBLE", "flagged": "BOOLEAN", "note": "VARCHAR", "computed_at": "TIMESTAMP"},
        ("partition_date",)),
    # The mutable state, edited in place by read-modify-write (`Lake.edit`): the alert lifecycle, retraining
    # requests and their decisions, the versions seen and the reference batches of the retraining trigger.
    "monitoring.alerts": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "check_name": "VARCHAR", "severity": "VARCHAR",
        "value": "DOUBLE", "threshold": "DOUBLE", "message": "VARCHAR", "status": "VARCHAR",
        "first_seen": "TIMESTAMP", "last_seen": "TIMESTAMP"}, ("partition_date",)),
    "monitoring.retraining_requests": ({
        "request_id": "BIGINT", "model_id": "VARCHAR", "model_version": "VARCHAR", "opened_on": "DATE",
        "reason": "VARCHAR", "statistic": "DOUBLE", "p_value": "DOUBLE", "window": "VARCHAR", "status": "VARCHAR",
        "opened_by": "VARCHAR", "decided_by": "VARCHAR", "decided_at": "TIMESTAMP", "note": "VARCHAR",
        "outcome": "VARCHAR", "run_id": "VARCHAR", "finished_at": "TIMESTAMP", "created_at": "TIMESTAMP"}, ()),
    "monitoring.model_versions": ({
        "model_id": "VARCHAR", "model_version": "VARCHAR", "first_seen": "DATE", "last_seen": "DATE",
        "traffic_share": "DOUBLE", "role": "VARCHAR", "champion_since": "DATE", "computed_at": "TIMESTAMP"}, ()),
    "monitoring.reference_anchors": ({
        "model_id": "VARCHAR", "model_version": "VARCHAR", "anchor_day": "DATE", "set_by": "VARCHAR",
        "set_at": "TIMESTAMP", "reason": "VARCHAR"}, ()),
    "monitoring.reference_losses": ({
        "model_id": "VARCHAR", "model_version": "VARCHAR", "anchor_day": "DATE", "prediction_id": "VARCHAR",
        "partition_date": "DATE", "loss": "DOUBLE", "complete": "BOOLEAN", "computed_at": "TIMESTAMP"}, ()),
    # The ranking task (ranking.logic): impressions and interactions as logged, and ranking quality per model,
    # day, version and metric (long: one row per metric, so a ranker's k list does not change the columns).
    "raw.ranking_impressions": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "request_id": "VARCHAR",
        "item_id": "VARCHAR", "rank": "BIGINT", "score": "DOUBLE", "source_file": "VARCHAR", "line_no": "BIGINT",
        "segments": "VARCHAR"}, ("partition_date",)),
    "raw.ranking_interactions": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "request_id": "VARCHAR", "item_id": "VARCHAR",
        "event": "VARCHAR", "grade": "DOUBLE", "source_file": "VARCHAR", "line_no": "BIGINT"}, ("partition_date",)),
    "monitoring.ranking_performance": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "metric": "VARCHAR",
        "value": "DOUBLE", "standard_error": "DOUBLE", "n_requests": "BIGINT", "n_labelled_requests": "BIGINT",
        "label_coverage": "DOUBLE", "unmatched_interactions": "BIGINT", "labels_complete": "BOOLEAN",
        "reference_value": "DOUBLE", "floor": "DOUBLE", "p_value": "DOUBLE", "below_baseline": "BOOLEAN",
        "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
    # A ranker-day's impressions per item and version (ranking.logic), which its windows' catalogue figures merge.
    "monitoring.ranking_item_counts": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "model_version": "VARCHAR", "item_id": "VARCHAR",
        "impressions": "BIGINT", "first_seen": "BIGINT", "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
    # Per ranker, day, segmentation, segment and metric (ranking.logic, rankers with `segments:`): the whole day's
    # figures on the segment's requests, the main metric's row judged against its floor.
    "monitoring.ranking_segment_performance": ({
        "partition_date": "DATE", "model_id": "VARCHAR", "segment_by": "VARCHAR", "segment": "VARCHAR",
        "metric": "VARCHAR", "value": "DOUBLE", "standard_error": "DOUBLE", "n_requests": "BIGINT",
        "n_labelled_requests": "BIGINT", "reference_value": "DOUBLE", "reference_source": "VARCHAR",
        "floor": "DOUBLE", "p_value": "DOUBLE", "p_adjusted": "DOUBLE", "below_floor": "BOOLEAN",
        "computed_at": "TIMESTAMPTZ"}, ("partition_date",)),
}
MODEL_DIR = "model_id="
# Lake roots with one of these schemes are on object storage (anything else is a local folder).
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
# Environment variables passed to delta-rs and s3fs for an s3:// lake (delta-rs storage option names).
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL",
          "AWS_ALLOW_HTTP", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_CONDITIONAL_PUT")
# fsspec packages DuckDB reads each scheme through.
FSSPEC_PACKAGE = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                  "abfss": "adlfs"}


def is_remote(root: str | os.PathLike) -> bool:
    """Whether a lake root is an object-storage URI (`s3://bucket/prefix`) rather than a folder."""
    return urllib.parse.urlsplit(os.fspath(root)).scheme.lower() in REMOTE_SCHEMES


def s3_storage_options(environ: dict[str, str] | None = None) -> dict[str, str]:
    """delta-rs storage options for an s3:// lake, from the usual AWS variables (`AWS_DEFAULT_REGION` when
    `AWS_REGION` is not set). Keys left out fall back to delta-rs' own chain (instance profile, web identity).
    A plain-HTTP endpoint (an S3-compatible server inside the network) is allowed without `AWS_ALLOW_HTTP`;
    commits are pinned to conditional puts (`If-None-Match`), which AWS S3, MinIO and R2 honour."""
    env = os.environ if environ is None else environ
    options = {key: env[key] for key in S3_ENV if env.get(key)}
    if "AWS_REGION" not in options and env.get("AWS_DEFAULT_REGION"):
        options["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
    if options.get("AWS_ENDPOINT_URL", "").lower().startswith("http://"):
        options.setdefault("AWS_ALLOW_HTTP", "true")
    if "AWS_CONDITIONAL_PUT" not in options and "AWS_S3_ALLOW_UNSAFE_RENAME" not in options:
        options["aws_conditional_put"] = "etag"
    return options


def registered(table: str) -> str:
    """The name a lake table's dataset is registered under on a connection (its view points there)."""
    return "__lake_" + table.replace(".", "__")


def model_table(model_id: str) -> str:
    """The documented name of one model's predictions table."""
    return f"raw.{quote_ident('predictions__' + model_id)}"


def _model_registered(model_id: str) -> str:
    return registered("raw.predictions__" + model_id)


# Per-model work that runs as SQL takes this many models per query: memory holds their rows, not a day of
# every model (performance_daily at 100 models x 50k rows: 1.6 GB at once, 0.6 GB ten at a time, same time).
MODELS_PER_QUERY = 10
# Tries of a partition replace whose commit lost to another writer's (shards share the daily tables).
COMMIT_ATTEMPTS = 12
# Tries of a read-modify-write (`Lake.edit`) whose table another writer committed to meanwhile.
EDIT_ATTEMPTS = 10


def days_predicate(days: Iterable[dt.date]) -> str:
    # Typed literals: some delta-rs releases (1.6.3) cannot compare a DATE column with a text literal.
    return "partition_date IN (" + ", ".join(f"CAST({sql_str(d.isoformat())} AS DATE)" for d in sorted(set(days))) + ")"


def _in(column: str, values: Iterable[str]) -> str:
    listed = sorted(set(values))
    return f"{column} IN (" + ", ".join(sql_str(v) for v in listed) + ")" if listed else "false"


# Per connection: the scan SQL of each temporary view it holds (`Lake._create_view`); gone with the connection.
_MADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget_views(con: duckdb.DuckDBPyConnection, names: Iterable[str]) -> None:
    """After these names were dropped other than through `_create_view`: made again when next asked for."""
    for name in names:
        _MADE.get(con, {}).pop(name, None)


def _ensure_views(con: duckdb.DuckDBPyConnection, views: dict[str, str]) -> None:
    """Documented name ("schema.name", unquoted) -> registered temporary view: create the file's views that
    are missing. Their text never changes (the temporary views behind them do), and writing the catalog
    each time a connection opens cost about 1 ms a view, 0.6 s a step at 500 models.

    Called before the temporary views are made: a missing one gets an empty stand-in first, so creating the
    documented view binds nothing (over the real scan, DuckDB read a Parquet footer again: half of every
    connection's set-up). DuckDB binds a view again at each query, so it reads what the temporary view is
    then."""
    present = {f"{s}.{v}" for s, v in
               con.execute("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT temporary").fetchall()}
    missing = {name: target for name, target in views.items() if name not in present}
    if not missing:
        return
    made = {v for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()}
    con.execute("".join(f"CREATE TEMP VIEW {quote_ident(t)} AS SELECT NULL AS stand_in WHERE false;"
                        for t in set(missing.values()) - made)
                + "".join(f"CREATE OR REPLACE VIEW {name.split('.', 1)[0]}.{quote_ident(name.split('.', 1)[1])} "
                          f"AS SELECT * FROM {quote_ident(target)};" for name, target in missing.items()))


def _empty_select(columns: dict[str, str]) -> str:
    return "SELECT " + ", ".join(f"NULL::{t} AS {quote_ident(c)}" for c, t in columns.items()) + " WHERE false"


# Where a damaged data file is moved (inside its table: `_` folders are not data to Delta, nor to vacuum).
DAMAGED_DIR = "_damaged"
MISSING = "missing: listed in the Delta log, not on storage"


@dataclass(frozen=True)
class FileProblem:
    """A data file the Delta log lists that cannot be read: missing, of another size than the log says (cut
    short), or without a readable Parquet footer."""

    table: str       # documented name (`raw.predictions__fraud`, `monitoring.feature_drift`)
    partition: str   # `partition_date=2026-10-01` ("" for a table without partitions)
    path: str        # the file's full path or URI
    problem: str
    rows: int | None  # rows the log says the file held
    values: tuple[tuple[str, str], ...] = ()  # (partition column, value) pairs
    size: int | None = None  # bytes the log says

    def line(self) -> str:
        where = f" {self.partition}" if self.partition else ""
        held = f" ({self.rows} rows)" if self.rows is not None else ""
        return f"{self.table}{where}: {self.path}{held}: {self.problem}"


def _failing_select(columns: dict[str, str], values: Iterable[tuple[str, str]], message: str) -> str:
    """One row that raises `message` when read. Carrying the partition's values, a filter on another
    partition skips it (DuckDB folds the constants first), so the table's other days still read."""
    values = dict(values)
    picks = ", ".join((f"CAST({sql_str(values[c])} AS {t})" if c in values else f"NULL::{t}") + f" AS {quote_ident(c)}"
                      for c, t in columns.items())
    return f"SELECT {picks} WHERE error({sql_str(message)}) IS NULL"


def _in_scope(problem: FileProblem, scope: dict[str, set[str]] | None) -> bool:
    return scope is None or all(v in scope[c] for c, v in problem.values if c in scope)


class Lake:
    """One lake root (a folder, or an object-storage URI): table paths, partition replacement, datasets for
    DuckDB, maintenance. A table's location is a `Path` under a folder, a URI string under a bucket."""

    def __init__(self, root: str | os.PathLike):
        text = os.fspath(root)
        self.remote = is_remote(text)
        if self.remote:
            parts = urllib.parse.urlsplit(text)
            if "@" in parts.netloc or parts.query:
                # Never echo the URI: it may hold a key.
                raise ValueError("MONITOR_LAKE: credentials in the lake URI are not accepted; set them in the "
                                 "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...)")
            self.scheme = parts.scheme.lower()
            self.root: Path | str = text.rstrip("/")
        else:
            self.scheme = "file"
            self.root = Path(text)

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    @cached_property
    def storage_options(self) -> dict[str, str] | None:
        """delta-rs storage options (from the environment; None for a folder). Never logged."""
        if not self.remote:
            return None
        return s3_storage_options() if self.scheme in ("s3", "s3a") else {}

    @cached_property
    def filesystem(self) -> Any:
        """The fsspec filesystem of a remote root (DuckDB reads the tables' files through it), listings
        uncached so other writers' commits show."""
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - fsspec comes with s3fs
            raise RuntimeError("a lake on object storage needs the fsspec package") from exc
        if self.scheme in ("s3", "s3a"):
            options = self.storage_options or {}
            client: dict[str, Any] = {}
            if options.get("AWS_REGION"):
                client["region_name"] = options["AWS_REGION"]
            kwargs: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True,
                                      "client_kwargs": client}
            if options.get("AWS_ACCESS_KEY_ID"):
                kwargs.update(key=options["AWS_ACCESS_KEY_ID"], secret=options.get("AWS_SECRET_ACCESS_KEY"),
                              token=options.get("AWS_SESSION_TOKEN"))
            if options.get("AWS_ENDPOINT_URL"):
                kwargs["endpoint_url"] = options["AWS_ENDPOINT_URL"]
        else:
            kwargs = {"use_listings_cache": False, "skip_instance_cache": True}
        try:
            cls = fsspec.get_filesystem_class(self.scheme)
        except ImportError as exc:
            raise RuntimeError(f"a lake on {self.scheme}:// needs the {FSSPEC_PACKAGE[self.scheme]} package") from exc
        return _with_data_file_info_cache(cls)(**kwargs)

    # ---- where things are

    def path(self, table: str) -> Path | str:
        schema, name = table.split(".", 1)
        return self._join(self.root, schema, name)

    def model_path(self, model_id: str) -> Path | str:
        return self._join(self.path(PREDICTIONS), MODEL_DIR + urllib.parse.quote(model_id, safe=""))

    def _join(self, base: Path | str, *names: str) -> Path | str:
        return "/".join([str(base), *names]) if self.remote else Path(base).joinpath(*names)

    def _fs_path(self, location: Path | str) -> str:
        """A remote location as fsspec names it (no scheme)."""
        return str(location).split("://", 1)[1]

    def has_table(self, location: Path | str) -> bool:
        """Whether a Delta table (its log) exists at `location`."""
        if not self.remote:
            return (Path(location) / "_delta_log").is_dir()
        return self.filesystem.isdir(self._fs_path(location) + "/_delta_log")

    def models(self) -> list[str]:
        """Models that have a predictions table."""
        folder = self.path(PREDICTIONS)
        if not self.remote:
            folder = Path(folder)
            if not folder.is_dir():
                return []
            return sorted(urllib.parse.unquote(p.name[len(MODEL_DIR):]) for p in folder.iterdir()
                          if p.name.startswith(MODEL_DIR) and (p / "_delta_log").is_dir())
        # One listing: a model folder exists on object storage only once a write put files under it, and
        # one whose first commit never landed reads as empty (`model_relation`).
        try:
            names = [n.rstrip("/").rsplit("/", 1)[-1]
                     for n in self.filesystem.ls(self._fs_path(folder), detail=False)]
        except FileNotFoundError:
            return []
        return sorted(urllib.parse.unquote(n[len(MODEL_DIR):]) for n in names if n.startswith(MODEL_DIR))

    def all_tables(self) -> list[Path | str]:
        return [p for p in [*(self.path(t) for t in TABLES), *(self.model_path(m) for m in self.models())]
                if self.has_table(p)]

    def table(self, location: Path | str):
        """The `deltalake.DeltaTable` at `location`, with the lake's storage options."""
        from deltalake import DeltaTable

        return DeltaTable(str(location), storage_options=self.storage_options)

    def relative(self, location: Path | str) -> str:
        """A table's location relative to the root (`raw/labels`), for reports."""
        return str(location)[len(str(self.root)):].strip("/").replace(os.sep, "/")

    def table_name(self, location: Path | str) -> str:
        """A table's documented name from its location (`raw.predictions__fraud`, `monitoring.feature_drift`)."""
        relative = self.relative(location)
        model_dir = PREDICTIONS.replace(".", "/") + "/" + MODEL_DIR
        if relative.startswith(model_dir):
            return f"{PREDICTIONS}__{urllib.parse.unquote(relative[len(model_dir):])}"
        return relative.replace("/", ".", 1)

    # ---- writing

    def _write(self, path: Path | str, data: pa.Table | pa.RecordBatchReader | Callable[[], Any], predicate: str,
               partition_by: Sequence[str], scope: dict[str, set[str]] | None = None) -> None:
        """`data`: a table, a stream that is not empty, or a function giving either (called again when the
        commit lost a race: a stream cannot be read twice).

        Another writer's commit on the same partition (a shard writing its models' rows of the same day) makes
        delta-rs refuse ours ("a concurrent transaction added new data"): the overwrite is idempotent, so it
        is redone on the new version, after a short random wait.

        A write that fails because a file of the partitions it replaces (`scope`: partition column -> values;
        None: the whole table) is missing or damaged heals them (`heal`) and is done again: re-running the day
        repairs it."""
        from deltalake.exceptions import CommitFailedError

        healed = False
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                self._write_once(path, data() if callable(data) else data, predicate, partition_by)
                return
            except CommitFailedError:
                if attempt == COMMIT_ATTEMPTS - 1 or not (callable(data) or isinstance(data, pa.Table)):
                    raise
                time.sleep(random.uniform(0.05, 0.2) * 2 ** min(attempt, 4))
            except Exception:
                # Healed once already, or nothing of these partitions is damaged: the error is another one.
                if healed or not self.has_table(path) or not self.heal(path, scope):
                    raise
                healed = True
                if not (callable(data) or isinstance(data, pa.Table)):
                    raise  # a stream half read cannot be written again; the next try finds the partition healed

    def _write_once(self, path: Path | str, data: pa.Table | pa.RecordBatchReader, predicate: str,
                    partition_by: Sequence[str]) -> None:
        from deltalake import write_deltalake

        empty = isinstance(data, pa.Table) and data.num_rows == 0
        if not self.has_table(path):
            if empty:
                return  # nothing to replace, nothing to add
            if not self.remote:
                Path(path).mkdir(parents=True, exist_ok=True)
            write_deltalake(str(path), data, partition_by=list(partition_by) or None, mode="append",
                            storage_options=self.storage_options)
            return
        if empty:
            self.table(path).delete(predicate)
            return
        # schema_mode merge: a model that gains a feature gains a column.
        write_deltalake(str(path), data, partition_by=list(partition_by) or None, mode="overwrite",
                        predicate=predicate, schema_mode="merge", storage_options=self.storage_options)

    def replace(self, table: str, data: pa.Table | pa.RecordBatchReader | Callable[[], Any],
                days: Iterable[dt.date] | None, models: Iterable[str] | None = None,
                source: str | None = None, where: str | None = None) -> None:
        """Replace the rows of `days` (None: of every day, for tables without one; of those models, of that
        quarantine source, matching `where`) with `data`, in one commit."""
        columns, partition_by = TABLES[table]
        clauses = [] if days is None else [days_predicate(days)]
        if source is not None:
            clauses.insert(0, f"source = {sql_str(source)}")
        if models is not None:
            clauses.append(_in("model_id", models))
        if where is not None:
            clauses.append(f"({where})")
        predicate = " AND ".join(clauses) or "true"
        conformed = (lambda: _conform(data(), columns)) if callable(data) else _conform(data, columns)
        scope = None if days is None else {"partition_date": {d.isoformat() for d in days}}
        if scope is not None and source is not None:
            scope["source"] = {source}
        self._write(self.path(table), conformed, predicate, partition_by, scope)

    def replace_model_day(self, model_id: str, data: pa.Table, day: dt.date) -> None:
        """Replace one model's predictions of one day (an empty table deletes them)."""
        self._write(self.model_path(model_id), data, days_predicate([day]), ["partition_date"],
                    {"partition_date": {day.isoformat()}})

    def replace_model_days(self, model_id: str, data: pa.Table | Callable[[], Any], days: Iterable[dt.date]) -> None:
        """Replace one model's predictions of these days in one commit (days without rows in `data` end
        up empty). `data`: as `_write` takes it."""
        days = sorted(set(days))
        self._write(self.model_path(model_id), data, days_predicate(days), ["partition_date"],
                    {"partition_date": {d.isoformat() for d in days}})

    def delete(self, table: str, predicate: str) -> None:
        """Delete the rows matching a SQL predicate (one commit); for repairs and tests."""
        if self.has_table(self.path(table)):
            self.table(self.path(table)).delete(predicate)

    def edit(self, con: duckdb.DuckDBPyConnection, table: str, apply: Callable[[duckdb.DuckDBPyConnection], T],
             where: str | None = None) -> T:
        """Read-modify-write of a small lake table with the DuckDB DML that `apply(con)` runs on its documented
        name: the rows matching `where` (SQL both DuckDB and delta-rs read; None: every row) of the table's
        current version become a real table under that name on `con` (in place of the view), and what `apply`
        leaves there replaces them in one Delta commit; then the view is back, showing the new version.

        Any other commit to the table since the read fails ours (no commit retries at delta-rs' level: its own
        conflict check lets two overwrites of an empty table both land, measured): the rows are read again and
        `apply` runs again, up to EDIT_ATTEMPTS times with a random wait, then a one-line error. So two
        processes editing at once lose nothing and duplicate nothing, whatever their DML. Returns what `apply`
        returned on the try that committed."""
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError, DeltaError

        columns, partition_by = TABLES[table]
        path, schema, name = self.path(table), *table.split(".", 1)
        target = f"{schema}.{quote_ident(name)}"
        once = CommitProperties(max_commit_retries=0)
        for attempt in range(EDIT_ATTEMPTS):
            delta = self.table(path) if self.has_table(path) else None
            if delta is None or not delta.file_uris():
                current = _empty_select(columns)
            else:
                stored = {f.name for f in delta.schema().fields}
                current = self._select_files(delta.file_uris(), stored, columns, partition_by, extra=False)
            con.execute(f"DROP VIEW IF EXISTS {target}")
            try:
                con.execute(f"CREATE TABLE {target} AS SELECT * FROM ({current}) WHERE {where or 'true'}")
                result = apply(con)
                rows = con.sql(f"SELECT * FROM {target}").to_arrow_table()
            finally:
                con.execute(f"DROP TABLE IF EXISTS {target}")
                con.execute(f"CREATE VIEW {target} AS SELECT * FROM {quote_ident(registered(table))}")
            data = _conform(rows, columns)
            try:
                if delta is None:
                    if data.num_rows:
                        if not self.remote:
                            Path(path).mkdir(parents=True, exist_ok=True)
                        # "error": a table another writer made since our read fails ours, not appended to
                        write_deltalake(str(path), data, partition_by=list(partition_by) or None, mode="error",
                                        storage_options=self.storage_options, commit_properties=once)
                elif data.num_rows:
                    write_deltalake(delta, data, partition_by=list(partition_by) or None, mode="overwrite",
                                    predicate=where or "true", commit_properties=once)
                else:
                    delta.delete(where, commit_properties=once)
            except CommitFailedError:
                pass  # another writer committed since our read
            except DeltaError:
                if delta is not None or not self.has_table(path):
                    raise
                # another writer's first commit made the table before ours
            else:
                self.refresh(con, table)
                return result
            time.sleep(random.uniform(0.02, 0.1) * 2 ** min(attempt, 4))
        raise RuntimeError(f"{table}: {EDIT_ATTEMPTS} edits in a row lost to other writers' commits; "
                           "nothing was written, try again")

    # ---- reading through DuckDB

    def scan(self, path: Path | str, columns: dict[str, str], partition_by: Sequence[str], extra: bool = False,
             damaged: Sequence[FileProblem] | None = None) -> str:
        """SQL reading the current version of a Delta table: DuckDB's own Parquet reader over the files the
        Delta log lists, partition values from the paths; `columns` first, in order, then (`extra`) the
        table's other columns. Nothing calls back into Python while it runs (a registered pyarrow dataset
        did, and a `.df()` of it could deadlock on the GIL). On object storage DuckDB reads through the
        registered fsspec filesystem (`register`), which does call into Python for the bytes; None: no table.

        Damaged files (`damaged`; None: those missing or of another size than the log says, `_quick_damage`)
        are left out; in their place a row of their partition raises the problem when read.
        """
        found = self._current_files(path)
        if found is None or not found[0]:
            return _empty_select(columns)
        files, stored = found
        if damaged is None:
            damaged = self._quick_damage(path)
        if damaged:
            bad = {p.path for p in damaged}
            files = [f for f in files if f not in bad]
            failing = [_failing_select(columns, p.values, p.line() + "; re-run that day to rewrite it "
                                       "(python -m monitor_assets.storage.maintenance check lists all)")
                       for p in damaged]
            kept = self._select_files(files, stored, columns, partition_by, extra) if files else _empty_select(columns)
            return " UNION ALL BY NAME ".join(f"({q})" for q in [kept, *failing])
        return self._select_files(files, stored, columns, partition_by, extra)

    @staticmethod
    def _select_files(files: list[str], stored: set[str], columns: dict[str, str], partition_by: Sequence[str],
                      extra: bool) -> str:
        listed = "[" + ", ".join(sql_str(f) for f in files) + "]"
        types = "{" + ", ".join(f"{sql_str(c)}: {sql_str(columns[c])}" for c in partition_by) + "}"
        hive = f"hive_partitioning = true, hive_types = {types}" if partition_by else "hive_partitioning = false"
        # union_by_name makes DuckDB read every file's footer whenever a view is made (each connection, each
        # table: 6-40 ms a table of 150 files); files of one schema need only the first one's.
        union = "" if _one_schema(files) else ", union_by_name = true"
        # A column added since the table was written (an optional field) reads as NULL.
        known = ", ".join(quote_ident(c) if c in stored else f"NULL::{t} AS {quote_ident(c)}"
                          for c, t in columns.items())
        present = ", ".join(quote_ident(c) for c in columns if c in stored)
        picks = f"{known}, * EXCLUDE ({present})" if extra else known
        return f"SELECT {picks} FROM read_parquet({listed}, {hive}{union})"

    def attach(self, con: duckdb.DuckDBPyConnection, models: Iterable[str] | None = (), create_views: bool = True) -> None:
        """Register the lake's tables on `con` and (re)create the views with their documented names.

        `models`: whose predictions tables to register (None: every model; the union view
        `raw.predictions` then covers them all). Registering takes about 2 ms a model."""
        self.register(con)
        if create_views:
            con.execute("CREATE SCHEMA IF NOT EXISTS raw; CREATE SCHEMA IF NOT EXISTS monitoring")
            _ensure_views(con, {table: registered(table) for table in TABLES})
        for table in TABLES:  # no drop first: a stand-in or an older view is replaced, one kept if current
            self._create_view(con, registered(table), self.path(table), *TABLES[table])
        if models is None:
            self.attach_models(con, self.models(), create_views)  # every model (maybe none yet)
        elif models := list(models):
            self.attach_models(con, models, create_views)
        else:
            # No model registered: `raw.predictions` fails ("... __lake_raw__predictions does not exist") rather
            # than reading as empty.
            con.execute(f"DROP VIEW IF EXISTS {registered(PREDICTIONS)}")

    def refresh(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        """Point the registered dataset of `table` at its newest version (after a write)."""
        self.register(con)
        self._create_view(con, registered(table), self.path(table), *TABLES[table], drop_first=True)

    def attach_models(self, con: duckdb.DuckDBPyConnection, models: Iterable[str], create_views: bool = True) -> list[str]:
        """Register these models' predictions tables; `raw.predictions` becomes their union over the shared
        columns. Returns the relation names (quoted for SQL), in order."""
        models = list(models)
        if create_views:
            _ensure_views(con, {**{f"raw.predictions__{m}": _model_registered(m) for m in models},
                                PREDICTIONS: registered(PREDICTIONS)})
        names = [self.model_relation(con, model_id) for model_id in models]
        con.execute(f"CREATE OR REPLACE TEMP VIEW {registered(PREDICTIONS)} AS {self.predictions_union(con, models)}")
        return names

    def predictions_union(self, con: duckdb.DuckDBPyConnection, model_ids: Iterable[str]) -> str:
        """SQL: the shared prediction columns of these models' tables, one after the other; reads only those
        models' files. A model not registered on `con` yet (say, one without a table) is registered now."""
        model_ids = list(model_ids)
        known = {name for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()}
        for m in model_ids:
            if _model_registered(m) not in known:
                self.model_relation(con, m)
        shared = ", ".join(quote_ident(c) for c in PREDICTION_COLUMNS)
        union = " UNION ALL ".join(f"SELECT {shared} FROM {quote_ident(_model_registered(m))}" for m in model_ids)
        return union or _empty_select(PREDICTION_COLUMNS)

    def model_relation(self, con: duckdb.DuckDBPyConnection, model_id: str) -> str:
        """A relation (its name quoted for SQL) for one model's predictions, registered now, with its features
        as columns."""
        name = _model_registered(model_id)
        self.register(con)
        self._create_view(con, name, self.model_path(model_id), PREDICTION_COLUMNS, ["partition_date"], extra=True,
                          drop_first=True)
        return quote_ident(name)

    def _create_view(self, con: duckdb.DuckDBPyConnection, name: str, path: Path | str, columns: dict[str, str],
                     partition_by: Sequence[str], extra: bool = False, drop_first: bool = False) -> None:
        """The temporary view `name` over a table's current files. DuckDB reads every file's footer when it
        makes the view, so one damaged file would fail the connection, and every table with it: a damaged
        file is left out instead and its partition fails when read (`scan`); a table that cannot be read at
        all fails when read, naming the problem. Either is logged once per process.

        A view this connection already has over the same files is kept (`_MADE`): a connection used again (the
        next step's, `warehouse.open_warehouse`) or a model's relation asked for again costs no statement.
        `drop_first`: whatever holds the name goes first (a view or a table)."""
        scan = self.scan(path, columns, partition_by, extra)
        made = _MADE.setdefault(con, {})
        if made.get(name) == scan:
            return
        made.pop(name, None)
        if drop_first:
            con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
            con.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")
        create = f"CREATE OR REPLACE TEMP VIEW {quote_ident(name)} AS "
        try:
            con.execute(create + scan)
            made[name] = scan
            return
        except duckdb.Error as exc:
            error = " ".join(str(exc).split())
        damaged = self.inspect(path)  # with footers: what the quick check cannot see
        _DAMAGED[str(path)] = (_FILES[str(path)][0], damaged)
        for problem in damaged:
            _warn_once(f"lake table {problem.line()}")
        if damaged:
            try:
                con.execute(create + self.scan(path, columns, partition_by, extra, damaged))
                return
            except duckdb.Error as exc:
                error = " ".join(str(exc).split())
        message = f"{self.table_name(path)} ({path}) cannot be read: {error}"
        _warn_once(message)
        con.execute(create + _failing_select(columns, (), message))

    def _quick_damage(self, path: Path | str) -> list[FileProblem]:
        """Files of the table's current version (`_current_files` called first) that are missing or of
        another size than the Delta log says (a copy cut short): checked once a version per process (a stat,
        or the cached info of a remote file, each), plus those a failed view found (`_create_view`). Files
        found damaged are checked again each time, so one put back from a backup reads again."""
        key = _FILES[str(path)][0]
        known = _DAMAGED.get(str(path))
        if known is None or known[0] != key:
            table = _TABLES_LOADED.get(str(path), (None,))[0]
            known = _DAMAGED[str(path)] = (key, self.inspect(path, footers=False, table=table))
            for problem in known[1]:
                _warn_once(f"lake table {problem.line()}")
        if not known[1]:
            return []
        still = [p for p in known[1] if self._file_problem(p.path, p.size, footer=p.problem != MISSING
                                                          and not p.problem.startswith("cut short")) is not None]
        if len(still) != len(known[1]):
            _DAMAGED[str(path)] = (key, still)
        return still

    # ---- damaged files

    def inspect(self, location: Path | str, footers: bool = True, table: Any = None) -> list[FileProblem]:
        """Every data file of the table's current version (`table`: a loaded `DeltaTable`, else loaded now)
        that is missing, of another size than its Delta log entry, or (`footers`) without a readable Parquet
        footer (one footer read a file)."""
        actions = pa.table((table or self.table(location)).get_add_actions(flatten=True))
        keys = [c for c in actions.column_names if c.startswith("partition.")]
        prefix = str(location).rstrip("/") + "/"
        name = self.table_name(location)
        out = []
        for row in actions.to_pylist():
            relative = urllib.parse.unquote(row["path"])
            full = relative if "://" in relative else prefix + relative
            problem = self._file_problem(full, row.get("size_bytes"), footers)
            if problem is None:
                continue
            values = tuple((k[len("partition."):], "" if row[k] is None else str(row[k])) for k in keys)
            out.append(FileProblem(name, "/".join(f"{k}={v}" for k, v in values), full, problem,
                                   row.get("num_records"), values, row.get("size_bytes")))
        return out

    def _file_problem(self, full: str, size: int | None, footer: bool = True) -> str | None:
        import pyarrow.parquet as pq

        try:
            if self.remote:
                key = self._fs_path(full)
                if footer:
                    _DATA_FILE_INFO.pop(key, None)  # a full check asks the store, not the cache
                actual = self.filesystem.info(key)["size"]
            else:
                actual = os.stat(full).st_size
        except FileNotFoundError:
            return MISSING
        if size is not None and actual != size:
            return f"cut short or overwritten: {actual} bytes on storage, {size} in the Delta log"
        if not footer:
            return None
        try:
            if self.remote:
                with self.filesystem.open(self._fs_path(full), "rb") as f:
                    pq.read_metadata(f)
            else:
                pq.read_metadata(full)
        except Exception as exc:  # any reader error is the file's
            return "unreadable Parquet footer: " + " ".join(str(exc).split())
        return None

    def heal(self, location: Path | str, scope: dict[str, set[str]] | None = None) -> list[FileProblem]:
        """Take the damaged and missing files of `scope`'s partitions (None: all) out of the table in one
        commit (delta-rs FSCK, `DeltaTable.repair`); damaged ones are first moved to `_damaged/` inside the
        table, where Delta and vacuum do not look. Their rows are gone from the table: the partitions are
        to be written again (a re-run of the day). Missing files of other partitions stay listed (still
        reported), so nothing is dropped silently. Returns the files taken out."""
        problems = self.inspect(location)
        taken = [p for p in problems if _in_scope(p, scope)]
        if not taken:
            return []
        prefix = str(location).rstrip("/") + "/"
        for p in taken:
            if p.problem != MISSING and p.path.startswith(prefix):
                self._move(p.path, prefix + DAMAGED_DIR + "/" + p.path[len(prefix):])
        # FSCK removes every missing file: the other partitions' get an empty stand-in while it runs.
        stand_ins = [p.path for p in problems if p.problem == MISSING and not _in_scope(p, scope)]
        for path in stand_ins:
            self._touch(path)
        try:
            self.table(location).repair()
        finally:
            for path in stand_ins:
                self._remove(path)
        for cache in (_FILES, _TABLES_LOADED, _DAMAGED):
            cache.pop(str(location), None)
        for p in taken:
            log.warning("healed lake table %s: taken out of the table; its rows come back when the "
                        "partition is written again", p.line())
        return taken

    def _move(self, source: str, target: str) -> None:
        if self.remote:
            self.filesystem.mv(self._fs_path(source), self._fs_path(target))
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)

    def _touch(self, path: str) -> None:
        if self.remote:
            self.filesystem.pipe(self._fs_path(path), b"")
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()

    def _remove(self, path: str) -> None:
        try:
            if self.remote:
                self.filesystem.rm(self._fs_path(path))
            else:
                os.remove(path)
        except FileNotFoundError:
            pass

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let `con` read a remote lake's files (its fsspec filesystem, once per connection); a folder needs
        nothing."""
        if not self.remote:
            return
        fs = self.filesystem
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        if not set(protocols) & set(con.list_filesystems()):
            con.register_filesystem(fs)
            # Footers kept between queries (checked against the file's time, which the info cache answers):
            # each query binds the views again, and would otherwise read every file's footer over HTTP.
            con.execute("SET parquet_metadata_cache = true")

    def _current_files(self, path: Path | str) -> tuple[list[str], set[str]] | None:
        """The data files and column names of a Delta table's newest version (None: no table there). Loading
        a table reads its log (a few ms on a disk, a few round trips on object storage); every connection
        registers every model's table, so they are kept until the log gains a version: its newest commit's
        name and time, from one listing of `_delta_log`."""
        if self.remote:
            try:
                entries = self.filesystem.ls(self._fs_path(path) + "/_delta_log", detail=True)
            except FileNotFoundError:
                return None
            commits = [e for e in entries if e["name"].endswith(".json")]
            newest = max(commits, key=lambda e: e["name"], default=None)
            oldest = min(commits, key=lambda e: e["name"], default=None)
            key = (newest["name"], str(newest.get("LastModified") or newest.get("mtime"))) if newest else None
            origin = (oldest["name"], str(oldest.get("LastModified") or oldest.get("mtime"))) if oldest else None
        else:
            try:
                with os.scandir(Path(path) / "_delta_log") as found:
                    commits = [e for e in found if e.name.endswith(".json")]
            except (FileNotFoundError, NotADirectoryError):
                return None
            newest = max(commits, key=lambda e: e.name, default=None)
            oldest = min(commits, key=lambda e: e.name, default=None)
            key = (newest.name, newest.stat().st_mtime_ns) if newest else None
            origin = (oldest.name, oldest.stat().st_mtime_ns) if oldest else None
        if key is None:
            return None  # a folder whose first commit never landed
        cached = _FILES.get(str(path))
        if cached is None or cached[0] != key:
            # A table already loaded reads only the commits since (loading it anew re-reads its log: ~17 ms).
            table, loaded_origin = _TABLES_LOADED.get(str(path), (None, None))
            newest_version = int(str(key[0]).rsplit("/", 1)[-1].split(".")[0])
            try:
                # Only forward, on the same log: a table made anew at the same path (deleted and written again)
                # has another oldest commit, or no newer one; only a fresh load reads it right.
                if table is None or loaded_origin != origin or newest_version <= table.version():
                    raise LookupError
                table.update_incremental()
                if table.version() != newest_version:
                    raise LookupError
            except Exception:
                table = self.table(path)
                _TABLES_LOADED[str(path)] = (table, origin)
            cached = _FILES[str(path)] = (key, (table.file_uris(), {f.name for f in table.schema().fields}))
        return list(cached[1][0]), cached[1][1]

    # ---- maintenance

    def check(self) -> tuple[int, int, list[FileProblem]]:
        """Every table's every data file checked (`inspect`, footers read): (tables, files, problems). A table
        whose Delta log cannot be read is one problem."""
        tables, files, problems = self.all_tables(), 0, []
        for location in tables:
            try:
                table = self.table(location)
                files += len(table.file_uris())
                problems += self.inspect(location, table=table)
            except Exception as exc:  # the log itself: report it, check the other tables
                problems.append(FileProblem(self.table_name(location), "", str(location),
                                            "Delta log unreadable: " + " ".join(str(exc).split()), None))
        return len(tables), files, problems

    def maintain(self, retention_hours: float = 168.0) -> list[dict]:
        """Compact each table's small files and delete files no version younger than `retention_hours` uses,
        including those of writes killed before their commit (older than `retention_hours`, so a write in
        progress keeps its files). Works the same on a folder and on object storage. A table with a damaged
        file is left as it is (compaction would have to read it) and its row lists the `problems`."""
        out = []
        for path in self.all_tables():
            start = time.perf_counter()
            table = self.table(path)
            before = len(table.file_uris())
            try:
                compacted = table.optimize.compact()
            except Exception:
                problems = self.inspect(path, table=table)
                if not problems:
                    raise
                out.append({"table": self.relative(path), "files_before": before, "files_after": before,
                            "files_compacted": 0, "files_vacuumed": 0, "version": table.version(),
                            "seconds": round(time.perf_counter() - start, 3),
                            "problems": [p.line() for p in problems]})
                continue
            # full: also the files no version ever referenced (a write killed before its commit); a lite
            # vacuum only deletes files that versions removed.
            removed = table.vacuum(retention_hours=int(retention_hours), enforce_retention_duration=False,
                                   dry_run=False, full=True)
            after = self.table(path)
            out.append({"table": self.relative(path), "files_before": before,
                        "files_after": len(after.file_uris()),
                        "files_compacted": int(compacted.get("numFilesRemoved", 0)), "files_vacuumed": len(removed),
                        "version": after.version(), "seconds": round(time.perf_counter() - start, 3)})
        return out


def _conform(data: pa.Table | pa.RecordBatchReader, columns: dict[str, str]) -> pa.Table | pa.RecordBatchReader:
    """`data` with exactly the table's columns, in order and type (missing ones NULL), so every write of a
    table has one schema whatever the producer (a DataFrame, a DuckDB query). A stream already in shape
    is written as it comes (memory holds a batch, not the table)."""
    con = _conform_database().cursor()  # a cursor is cheap; a new database costs ~20 ms a write
    try:
        stream = isinstance(data, pa.RecordBatchReader)
        con.register("_data", data.schema.empty_table() if stream else data)
        have = set(data.schema.names)
        picks = ", ".join((f"CAST({quote_ident(c)} AS {t})" if c in have else f"NULL::{t}") + f" AS {quote_ident(c)}"
                          for c, t in columns.items())
        if con.sql(f"SELECT {picks} FROM _data LIMIT 0").to_arrow_table().schema.equals(data.schema):
            return data  # already in shape: a copy of millions of rows would cost seconds and memory
        if stream:
            con.register("_data", data.read_all())
        return con.sql(f"SELECT {picks} FROM _data").to_arrow_table()
    finally:
        con.close()


@functools.cache
def _conform_database() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    return con


_FS_CLASSES: dict[type, type] = {}
# A Delta data file is never rewritten (unique name; vacuum deletes it only once no version uses it), so its
# size and time are asked once per process: DuckDB asks a filesystem about a file several times (exists, size,
# time, open) each time a query binds a view, one HTTP HEAD each on object storage.
_DATA_FILE_INFO: dict[str, dict] = {}
_DATA_FILE_INFO_MAX = 200_000


def _with_data_file_info_cache(cls: type) -> type:
    """An fsspec async filesystem class whose `_info` of Delta data files (`*.parquet` outside `_delta_log`)
    is cached; everything else (the log, listings) is asked every time."""
    if cls not in _FS_CLASSES:
        async def _info(self, path, *args, **kwargs):
            key = self._strip_protocol(path)
            if not key.endswith(".parquet") or "/_delta_log/" in key:
                return await super(sub, self)._info(path, *args, **kwargs)
            hit = _DATA_FILE_INFO.get(key)
            if hit is None:
                hit = await super(sub, self)._info(path, *args, **kwargs)
                if len(_DATA_FILE_INFO) >= _DATA_FILE_INFO_MAX:
                    _DATA_FILE_INFO.clear()
                _DATA_FILE_INFO[key] = hit
            return dict(hit)

        sub = type(f"DataFileInfoCached{cls.__name__}", (cls,), {"_info": _info})
        _FS_CLASSES[cls] = sub
    return _FS_CLASSES[cls]


# Per table location: (its version key as in _FILES, its damaged files at that version).
_DAMAGED: dict[str, tuple[tuple, list[FileProblem]]] = {}
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a problem once per process (every connection registers every table)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


# Per table location: (newest commit's name and time, (data files, column names)).
_FILES: dict[str, tuple[tuple, tuple[list[str], set[str]]]] = {}
# Local data file -> the number of its column list (names and types, in order) in _SCHEMAS, read from its footer
# once per process: Delta never rewrites a data file in place, a new version writes new files.
_FILE_SCHEMA: dict[str, int] = {}
_SCHEMAS: dict[tuple, int] = {}


def _one_schema(files: Sequence[str]) -> bool:
    """Whether these local Parquet files all have the same columns in the same order (object storage: not
    checked, False)."""
    import pyarrow.parquet as pq

    first = None
    for f in files:
        if "://" in f:
            return False
        number = _FILE_SCHEMA.get(f)
        if number is None:
            try:
                schema = tuple((field.name, str(field.type)) for field in pq.read_schema(f))
            except (OSError, pa.ArrowException):
                return False  # a damaged file: DuckDB names the problem
            number = _FILE_SCHEMA[f] = _SCHEMAS.setdefault(schema, len(_SCHEMAS))
        if first is None:
            first = number
        elif number != first:
            return False
    return True
# path -> (deltalake.DeltaTable brought up to date as commits land, the log's oldest commit when loaded)
_TABLES_LOADED: dict[str, tuple[Any, tuple | None]] = {}
