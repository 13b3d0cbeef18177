"""Names shared across the package: groups, owners, the DuckDB pool, check names. No imports."""

GROUP_INGESTION = "ingestion"
GROUP_METRICS = "metrics"
GROUP_DRIFT = "drift"
GROUP_BIAS = "bias"
GROUP_ALERTING = "alerting"
GROUP_REPORTING = "reporting"

# Every step that writes the warehouse is in this pool; dagster.yaml gives each pool one slot.
DUCKDB_POOL = "duckdb"
OWNERS = ["team:mlops"]

# Threshold check names (properties that should hold), evaluated per model and day.
PERFORMANCE_CHECK = "performance_within_baseline"
LATENCY_CHECK = "latency_p95_within_sla"
ERROR_RATE_CHECK = "error_rate_within_sla"
VOLUME_CHECK = "predictions_logged"
DRIFT_CHECK = "drift_share_below_threshold"
FAIRNESS_CHECK = "demographic_parity_above_threshold"
ANOMALY_CHECK = "no_metric_anomalies"
FEATURE_VALUES_CHECK = "feature_values_present_and_known"  # missing / unseen shares, all missing, all unseen
EQUALIZED_ODDS_CHECK = "equalized_odds_within_threshold"
PREDICTION_DRIFT_CHECK = "prediction_drift_below_threshold"  # the model's output (score) distribution moved
KEY_FEATURE_DRIFT_CHECK = "key_feature_drift_below_threshold"  # a key feature drifted well past its threshold
ESTIMATED_PERFORMANCE_CHECK = "estimated_performance_within_baseline"  # the label-free estimate fell below it
SEGMENT_PERFORMANCE_CHECK = "segment_performance_within_baseline"  # a market / device / ... fell below its own
MULTIVARIATE_DRIFT_CHECK = "multivariate_drift_within_threshold"  # the features changed how they go together
SEGMENT_DRIFT_CHECK = "segment_drift_within_threshold"  # a segment's feature drifted (adjusted across segments)
# a segment's label-free estimate fell below its floor (adjusted across segments)
SEGMENT_ESTIMATED_PERFORMANCE_CHECK = "segment_estimated_performance_within_baseline"
THRESHOLD_CHECKS = (PERFORMANCE_CHECK, LATENCY_CHECK, ERROR_RATE_CHECK, VOLUME_CHECK, DRIFT_CHECK, FAIRNESS_CHECK,
                    ANOMALY_CHECK, FEATURE_VALUES_CHECK, EQUALIZED_ODDS_CHECK, PREDICTION_DRIFT_CHECK,
                    KEY_FEATURE_DRIFT_CHECK, ESTIMATED_PERFORMANCE_CHECK, SEGMENT_PERFORMANCE_CHECK,
                    MULTIVARIATE_DRIFT_CHECK, SEGMENT_DRIFT_CHECK, SEGMENT_ESTIMATED_PERFORMANCE_CHECK)
# The severity of each threshold check unless a model's `thresholds.severity` says otherwise.
DEFAULT_SEVERITY = {PERFORMANCE_CHECK: "ERROR", LATENCY_CHECK: "WARN", ERROR_RATE_CHECK: "ERROR", VOLUME_CHECK: "ERROR",
                    DRIFT_CHECK: "WARN", FAIRNESS_CHECK: "ERROR", ANOMALY_CHECK: "WARN", FEATURE_VALUES_CHECK: "ERROR",
                    EQUALIZED_ODDS_CHECK: "ERROR", PREDICTION_DRIFT_CHECK: "WARN", KEY_FEATURE_DRIFT_CHECK: "WARN",
                    ESTIMATED_PERFORMANCE_CHECK: "WARN", SEGMENT_PERFORMANCE_CHECK: "ERROR",
                    MULTIVARIATE_DRIFT_CHECK: "WARN", SEGMENT_DRIFT_CHECK: "WARN",
                    SEGMENT_ESTIMATED_PERFORMANCE_CHECK: "WARN"}

# Data-quality checks on raw/predictions.
QUALITY_CHECK = "predictions_are_complete_and_valid"
VOLUME_RANGE_CHECK = "prediction_volume_within_expected_range"
# The closed loop's checks.
RETRAINING_CHECK = "loss_within_reference"  # fails on the day a retraining request opens
CANARY_CHECK = "canary_passes_gates"  # fails when a challenger should be rolled back
RETRAINING_CHECKS = (RETRAINING_CHECK, CANARY_CHECK)
# Shared by the daily checks and the evaluation windows' verdicts.
MIN_LABELLED = 100  # fewer labelled rows than this: the performance check waits for more labels
FAIRNESS_MAX_P = 0.001  # a disparity must also be unlikely to be chance (see stats.fairness)
# A closed evaluation window (week, month, ...) against the reference.
EVALUATION_WINDOW_CHECK = "evaluation_window_within_baseline"
# Rankers' checks (the ranking stage).
RANKING_PERFORMANCE_CHECK = "ranking_performance_within_baseline"
RANKING_DRIFT_CHECK = "ranking_drift_within_threshold"
RANKING_SEGMENT_CHECK = "ranking_segment_performance_within_baseline"  # rankers with `segments:`
# The model id of a finding that concerns no single model (e.g. a row with an unknown model id).
ALL_MODELS = "all models"
# Run tag naming the shard ("i/N") whose models a run's per-model steps handle; no tag: every model.
SHARD_TAG = "monitor_assets/shard"
