"""Every asset key, in one place: stages wire to each other by these names, never by position."""

import dagster as dg

# raw: the inputs as loaded
PREDICTIONS = dg.AssetKey(["raw", "predictions"])
LABELS = dg.AssetKey(["raw", "labels"])
INTERACTIONS = dg.AssetKey(["raw", "interactions"])
SALES = dg.AssetKey(["raw", "sales"])
RANKING_IMPRESSIONS = dg.AssetKey(["raw", "ranking_impressions"])

# monitoring: the figures
REFERENCE_PROFILES = dg.AssetKey(["monitoring", "reference_profiles"])
PERFORMANCE_DAILY = dg.AssetKey(["monitoring", "performance_daily"])
ESTIMATED_PERFORMANCE = dg.AssetKey(["monitoring", "estimated_performance"])
SEGMENT_PERFORMANCE = dg.AssetKey(["monitoring", "segment_performance"])
SEGMENT_DRIFT = dg.AssetKey(["monitoring", "segment_drift"])
BUSINESS_KPIS_DAILY = dg.AssetKey(["monitoring", "business_kpis_daily"])
FEATURE_DRIFT = dg.AssetKey(["monitoring", "feature_drift"])
MULTIVARIATE_DRIFT = dg.AssetKey(["monitoring", "multivariate_drift"])
DRIFT_DISTRIBUTIONS = dg.AssetKey(["monitoring", "drift_distributions"])
FAIRNESS = dg.AssetKey(["monitoring", "fairness"])
HISTORY = dg.AssetKey(["monitoring", "history"])
ANOMALY_REPORT = dg.AssetKey(["monitoring", "anomaly_report"])
ALERTS = dg.AssetKey(["monitoring", "alerts"])
MODEL_VERSIONS = dg.AssetKey(["monitoring", "model_versions"])
RETRAINING_TRIGGER = dg.AssetKey(["monitoring", "retraining_trigger"])
VERSION_COMPARISON = dg.AssetKey(["monitoring", "version_comparison"])
LAKE_MAINTENANCE = dg.AssetKey(["monitoring", "lake_maintenance"])
DAILY_PROFILES = dg.AssetKey(["monitoring", "daily_profiles"])
EVALUATION_STORE = dg.AssetKey(["monitoring", "evaluation_store"])
RANKING_PERFORMANCE = dg.AssetKey(["monitoring", "ranking_performance"])

# reports: what people read
MODEL_PERFORMANCE_SUMMARY = dg.AssetKey(["reports", "model_performance_summary"])
MONITORING_DASHBOARD = dg.AssetKey(["reports", "monitoring_dashboard"])
PROMETHEUS_METRICS = dg.AssetKey(["reports", "prometheus_metrics"])
