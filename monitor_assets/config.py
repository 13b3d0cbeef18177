"""The monitoring config: YAML loaded into typed, validated objects.

Every error names the file, the key (as a dotted path) and what was expected, and is raised when
the definitions load, before any run starts.
"""

from __future__ import annotations

import datetime as dt
import difflib
import glob
import hashlib
import math
import os
import re
import zoneinfo
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from monitor_assets.constants import DEFAULT_SEVERITY, THRESHOLD_CHECKS
from monitor_assets.stats.metrics_spec import (  # selectable main metrics per task, what can be estimated
    ESTIMABLE_METRICS,
    ESTIMATION_METHODS,
    MAIN_METRICS,
)

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEMO_CONFIG = REPO_ROOT / "data" / "demo" / "monitor.yaml"

TASKS = ("binary_classification", "regression", "multiclass_classification")
# The metric the performance check judges, per task, unless a model sets `main_metric`: ROC AUC ranks
# without a threshold; MAE is in the label's unit and, unlike MAPE or R², defined on every day.
# Multiclass: accuracy, the least noisy of its metrics on a few hundred rows a day and estimable before labels.
DEFAULT_MAIN_METRIC = {"binary_classification": "roc_auc", "regression": "mae", "multiclass_classification": "accuracy"}
# A multiclass model's own columns in its predictions table, after its features: the predicted class code
# (0..K-1 in `classes` order) and the logged class probabilities (NULL when not logged).
CLASS_CODE_COLUMN, CLASS_PROBABILITIES_COLUMN = "class_code", "class_probabilities"
FEATURE_TYPES = ("numeric", "categorical")
DRIFT_METHODS = ("auto", "psi", "jensenshannon", "wasserstein", "ks", "chisquare")
FORMATS = ("jsonl", "csv", "parquet")
CHANNEL_TYPES = ("file", "email", "slack")
SEVERITIES = ("WARN", "ERROR")
DATE_PLACEHOLDER = re.compile(r"\{date(?::([^}]*))?\}")
MODEL_PLACEHOLDER = "{model}"


class ConfigError(ValueError):
    """A config problem, with the file and the key it is about."""

    def __init__(self, file: Path | str, key: str, problem: str):
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(f"{file}: {key}: {problem}")


@dataclass(frozen=True)
class SourceConfig:
    """Where one kind of input lives: a path or glob with a {date} placeholder, and its field map."""

    name: str
    path: str  # absolute, with the placeholder
    format: str
    fields: dict[str, str | None]  # canonical name -> field in the file (JSON path with dots, or column);
    # None for an optional field the data does not have
    ok_status: tuple[str, ...] = ("ok",)
    timezone: str = "UTC"  # whose midnight ends a day, for a path without {date}
    allow_empty: bool = False  # a day may have no input file (else the preflight and ingestion refuse it)

    @property
    def split_by_time(self) -> bool:
        """No {date} in the path: the files span many days, and each day takes the records whose timestamp
        falls on it (in `timezone`)."""
        return not DATE_PLACEHOLDER.search(self.path)

    def paths_for(self, day: dt.date, model: str | None = None) -> str:
        """The glob for one day: '{date}' becomes YYYY-MM-DD, '{date:%Y%m%d}' any strftime format, and
        '{model}' the model id (each model's files are then read for that model's fields only)."""
        path = DATE_PLACEHOLDER.sub(lambda m: day.strftime(m.group(1) or "%Y-%m-%d"), self.path)
        return path.replace(MODEL_PLACEHOLDER, glob.escape(model) if model is not None else "*")

    @property
    def per_model(self) -> bool:
        """Files of one model each ('{model}' in the path): model_id comes from the path."""
        return MODEL_PLACEHOLDER in self.path


@dataclass(frozen=True)
class FeatureConfig:
    name: str
    type: str
    source: str
    drift_method: str = "auto"
    drift_threshold: float | None = None
    allowed_values: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds for one model. Ratios are relative to the reference baseline."""

    min_metric_ratio: float = 0.95
    latency_p95_ms: float = 500.0
    error_rate: float = 0.01
    drift_share: float = 0.45
    demographic_parity_ratio: float = 0.8
    min_label_coverage: float = 0.0
    # Equalized odds difference (the larger of the TPR and FPR gaps between eligible groups) above this
    # alerts, like the demographic parity ratio below its threshold, when also significant.
    equalized_odds_difference: float = 0.1
    severity: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrainingConfig:
    """The closed loop for one model (README, "The closed loop"): the loss, the reference batch, the
    trigger's window and persistence, the canary gates, and how to retrain."""

    loss: str = ""  # '' : log_loss for classifiers, squared_error for regressors
    reference_days: int = 14  # the reference batch: labelled predictions of the version's first days ...
    reference_rows: int = 20000  # ... at most this many (the earliest)
    window_days: int = 5
    shift_se: float = 5.0  # the CUSUM is tuned for a shift of this many standard errors of a window's mean loss
    persistence_k: int = 2  # flagged on k of the last n days opens a request
    persistence_n: int = 3
    min_rows: int = 100
    entry_point: str = ""  # a Python callable "package.module:function"
    command: tuple[str, ...] = ()  # or a command (no shell); {model_id}, {request_id}, {output_dir} filled in
    auto_approve: bool = False
    canary_alpha: float = 0.05
    canary_latency_tolerance: float = 0.10
    canary_min_labelled: int = 500


@dataclass(frozen=True)
class EstimationConfig:
    """Performance estimated before the labels arrive (`monitoring.estimated_performance`): on by default.
    `method`: confidence (CBPE) or confidence_reweighted for classifiers, loss_model (DLE) or
    loss_model_reweighted for regressors (the reweighted ones reweight the reference by a density ratio on days
    whose inputs have shifted); auto: the one that measured best per task (`stats.estimation.AUTO_METHOD`);
    none: off. `metrics`: empty means every metric the task can estimate; the main metric is always added when
    estimable."""

    enabled: bool = True
    method: str = "auto"
    metrics: tuple[str, ...] = ()

    def resolved(self, task: str) -> str:
        """The estimator that runs for a model of `task`: a method name, or 'none'."""
        from monitor_assets.stats.estimation import AUTO_METHOD

        if not self.enabled or self.method == "none":
            return "none"
        # multiclass: the confidence-based estimator (expected confusion matrix) is the only one
        return AUTO_METHOD.get(task, "confidence") if self.method == "auto" else self.method


@dataclass(frozen=True)
class SegmentsConfig:
    """Where a model is judged piecewise (README, "Segments"): `by` lists the segmentations, each one column
    (`market`) or a cross of several (`[market, device]`); a segment with fewer than `min_rows` labelled rows on
    a day is reported but not judged. `columns` are the segment columns that are neither features nor sensitive
    attributes (categorical, read from `context.<name>` in JSON logs, `<name>` in CSV/Parquet, or `source:`)."""

    by: tuple[tuple[str, ...], ...] = ()
    min_rows: int = 100
    columns: tuple[FeatureConfig, ...] = ()
    # a metric resting on one class's rows (ROC AUC, precision, recall, F1) is reported, not judged, on a
    # segment-day with fewer of them (positives, negatives or predicted positives; for multiclass each class's)
    min_class_rows: int = 10


@dataclass(frozen=True)
class ModelConfig:
    id: str
    task: str
    version: str
    features: tuple[FeatureConfig, ...]
    sensitive_attributes: tuple[FeatureConfig, ...]
    reference_path: str
    reference_fields: dict[str, str]
    score_field: str
    decision_threshold: float = 0.5
    thresholds: Thresholds = field(default_factory=Thresholds)
    alert_channels: tuple[str, ...] = ("file",)
    owner: str = ""
    main_metric: str = ""  # '' : the task's default (DEFAULT_MAIN_METRIC)
    retraining: RetrainingConfig = field(default_factory=RetrainingConfig)
    # Features whose strong drift alerts on its own (`key_feature_drift_below_threshold`); empty: the
    # reference's `drift.key_features_top_k` features most correlated with the score.
    key_features: tuple[str, ...] = ()
    estimation: EstimationConfig = field(default_factory=EstimationConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    # multiclass_classification: the class names; their order fixes the codes 0..K-1 (and the order of a
    # logged probability array)
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.main_metric:
            object.__setattr__(self, "main_metric", DEFAULT_MAIN_METRIC[self.task])

    @property
    def logged_columns(self) -> tuple[FeatureConfig, ...]:
        """Every column read from the model's log records beside the shared fields: features, sensitive
        attributes and segment-only columns."""
        return self.features + self.sensitive_attributes + self.segments.columns

    @property
    def is_classifier(self) -> bool:
        """A binary classifier (score = P(class 1)); multiclass models are `is_multiclass`."""
        return self.task == "binary_classification"

    @property
    def is_multiclass(self) -> bool:
        return self.task == "multiclass_classification"

    @property
    def estimation_method(self) -> str:
        """The estimator that runs ('confidence', 'confidence_reweighted', 'loss_model', 'loss_model_reweighted'),
        or 'none' (estimation off)."""
        return self.estimation.resolved(self.task)

    @property
    def estimated_metrics(self) -> tuple[str, ...]:
        """The metrics to estimate: the configured ones (default all the task can), the main metric first
        when it can be estimated."""
        possible = ESTIMABLE_METRICS[self.task]
        chosen = self.estimation.metrics or possible
        main = (self.main_metric,) if self.main_metric in possible else ()
        return tuple(dict.fromkeys((*main, *chosen)))

    def severity(self, check: str) -> str:
        """WARN or ERROR: the model's `thresholds.severity` for this threshold check, else its default."""
        return self.thresholds.severity.get(check, DEFAULT_SEVERITY[check])


# Ranking (recommenders, search): not in TASKS, whose models every per-model stage iterates; rankers are kept
# apart in `MonitorConfig.rankers` and only the ranking stage (monitor_assets/ranking) reads them.
RANKING_TASK = "ranking"
RANKING_SHAPES = ("lists", "impressions")  # one record per request with its list, or one row per shown item
# Per-request metrics of stats.ranking.AT_K, spelled `<metric>_at_<k>` in config and tables, and the others.
RANKING_AT_K = ("ndcg", "precision", "recall", "map", "hit_rate", "mrr")
RANKING_OTHER_METRICS = ("mrr", "catalogue_coverage", "novelty", "popularity_concentration")
RANKING_LOWER_IS_BETTER = ("popularity_concentration",)


@dataclass(frozen=True)
class RankingConfig:
    """A ranker's `ranking:` section: cut-offs, the names of its log and label fields, the event -> grade map.

    Log fields: `request_id`; a list record's `items` (objects with `item_id` and `score`, or plain ids with a
    parallel `scores` list); an impression row's `item_id`, `rank` and/or `score`. Label (interaction) fields:
    `request_id`, `item_id` and `event` (graded by `relevance`) or `grade` (a number, used as it is)."""

    ks: tuple[int, ...] = (5, 10)
    shape: str = "lists"
    request_id: str = "request_id"
    item_id: str = "item_id"
    rank: str = "rank"
    score: str = "score"
    items: str = "items"
    scores: str = "scores"
    model_version: str | None = "model_version"
    event: str = "event"
    grade: str | None = None
    relevance: tuple[tuple[str, float], ...] = (("click", 1.0), ("add_to_cart", 2.0), ("purchase", 3.0))
    gain: str = "linear"
    no_relevant: str = "zero"

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the stage computes, as named in config and in `monitoring.ranking_performance`."""
        return tuple(f"{m}_at_{k}" for k in self.ks for m in RANKING_AT_K) + RANKING_OTHER_METRICS


@dataclass(frozen=True)
class RankerConfig:
    """A `task: ranking` model: its own log source (a glob with {date}), its interactions as labels, an optional
    reference file of impressions (with grades or events where known), and the metric its check judges."""

    id: str
    version: str
    source: SourceConfig
    labels: SourceConfig | None
    reference_path: str
    ranking: RankingConfig
    main_metric: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    alert_channels: tuple[str, ...] = ("file",)
    owner: str = ""
    task: str = RANKING_TASK
    # The closed loop (`retraining:`, as a model's; no `loss`: a ranker's is 1 - NDCG@main_k per request).
    retraining: RetrainingConfig = field(default_factory=RetrainingConfig)
    # `segments:` as a model's (README, "Segments"); `min_rows` counts labelled requests, `min_class_rows` is unused
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)

    @property
    def main_k(self) -> int:
        """The cut-off of the per-request loss 1 - NDCG@k: the main metric's, else 10 if configured, else the
        largest."""
        _, _, k = self.main_metric.rpartition("_at_")
        if k.isdigit():
            return int(k)
        return 10 if 10 in self.ranking.ks else max(self.ranking.ks)

    def severity(self, check: str) -> str:
        return self.thresholds.severity.get(check, "ERROR")


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    type: str
    options: dict[str, Any]


@dataclass(frozen=True)
class MonitorConfig:
    file: Path
    start_date: dt.date
    end_date: dt.date | None
    label_delay_days: int
    models: tuple[ModelConfig, ...]
    predictions: SourceConfig
    labels: SourceConfig
    interactions: SourceConfig | None
    sales: SourceConfig | None
    channels: dict[str, ChannelConfig]
    dataset_drift_share: float = 0.5
    min_group_size: int = 30
    key_features_top_k: int = 3  # drift.key_features_top_k: measured key features per model (0: none)
    # fairness.baseline: 'reference' judges a disparity against the reference's own (worse by more than
    # `fairness_tolerance`), and always below `fairness_floor_ratio` / above `fairness_ceiling_odds`;
    # 'absolute' judges against the thresholds alone.
    fairness_baseline: str = "reference"
    fairness_tolerance: float = 0.05
    fairness_floor_ratio: float = 0.5
    fairness_ceiling_odds: float = 0.3
    anomaly_window_days: int = 14
    anomaly_threshold: float = 4.0
    alert_cooldown_hours: float = 24.0
    alert_give_up_hours: float = 24.0
    ui_url: str = "http://127.0.0.1:3000"
    warehouse_path: str = ""
    reports_dir: str = ""
    lake_dir: str = ""  # $MONITOR_LAKE; empty: beside the warehouse file
    allow_outside_paths: bool = False  # inputs (and what their links resolve to) may lie outside the folder
    # One shard's view of the config (`for_shard`): `models` are the shard's, `fleet_model_ids` every model's.
    shard: tuple[int, int] = (0, 1)
    # `shards:` (or $MONITOR_SHARDS): above 1, the schedule and backfills run the day as one run per shard
    # through Dagster's queue (monitor_assets.sharding); 1, one monitoring_job run.
    shard_count: int = 1
    evaluation: Any = None  # evaluation.settings.EvaluationConfig: the evaluation store's windows
    fleet_model_ids: tuple[str, ...] = ()
    fleet_has_multiclass: bool = False  # in a shard's config: a model of any shard is multiclass
    rankers: tuple[RankerConfig, ...] = ()  # `task: ranking` models: only the ranking stage reads them

    def for_shard(self, index: int, count: int) -> MonitorConfig:
        """The config of shard `index` of `count`: a contiguous slice of the models in config order, sizes
        differing by one at most. Per-model steps of a shard handle only its models; whatever belongs to no
        model (records without a known model, unmatched labels) is shard 0's."""
        if not 0 <= index < count:
            raise ValueError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
        n = len(self.models)
        mine = self.models[n * index // count:n * (index + 1) // count]
        return replace(self, models=mine, shard=(index, count), fleet_model_ids=tuple(self.known_model_ids),
                       fleet_has_multiclass=any(m.is_multiclass for m in self.models))

    @property
    def sharded(self) -> bool:
        return self.shard[1] > 1

    @property
    def owns_shared(self) -> bool:
        """Whether this config's steps own what belongs to no model: records of shared files that name no
        known model, unmatched labels, the shared files' counts and their missing-file notes (shard 0's)."""
        return self.shard[0] == 0

    @property
    def shard_label(self) -> str:
        return f"{self.shard[0]}/{self.shard[1]}"

    @property
    def known_model_ids(self) -> list[str]:
        """Every configured model, also in a shard's config (records of another shard's model are not unknown)."""
        return list(self.fleet_model_ids) if self.sharded else self.model_ids

    @property
    def written_models(self) -> list[str] | None:
        """Whose rows a per-model step replaces: the shard's models; None (every row of the days) unsharded."""
        return self.model_ids if self.sharded else None

    @property
    def lake_path(self) -> str:
        """The Delta lake folder of the partitioned tables: $MONITOR_LAKE, or `<warehouse>_lake` beside the file."""
        return self.lake_dir or lake_beside(self.warehouse_path)

    @property
    def state_path(self) -> str:
        """The small SQLite file of alert state (outbox, acknowledgements, silences) beside the warehouse."""
        warehouse = Path(self.warehouse_path)
        return str(warehouse.with_name(f"{warehouse.stem}_state.sqlite"))

    def model(self, model_id: str) -> ModelConfig:
        return next(m for m in self.models if m.id == model_id)

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]


def parse_shard(text: str) -> tuple[int, int]:
    """ "i/N" (shard i of N, from 0) -> (i, N); a clear error otherwise."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected INDEX/COUNT, e.g. 0/2") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: expected 0 <= INDEX < COUNT")
    return index, count


# ---------------------------------------------------------------------------------------------
# Parsing helpers: each takes the file and the dotted key so errors can say where they are.


class _Reader:
    def __init__(self, file: Path, allow_outside_paths: bool = False):
        self.file = file
        self.allow_outside_paths = allow_outside_paths

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, key, problem)

    def mapping(self, value: Any, key: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        return value

    def require(self, data: dict, name: str, key: str) -> Any:
        if name not in data or data[name] is None:
            raise self.fail(f"{key}.{name}" if key else name, "is required")
        return data[name]

    def number(self, value: Any, key: str, lo: float | None = None, hi: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"expected a finite number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(key, f"expected a number in [{lo}, {hi}], got {value!r}")
        return float(value)

    def integer(self, value: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
        """A whole number: 2.7 is refused, not truncated to 2."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise self.fail(key, f"expected an integer {bounds}, got {value!r}")
        return value

    def text(self, value: Any, key: str) -> str:
        """A scalar written as text: a mapping or a list would be stored as its Python repr."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            kind = {dict: "a mapping", list: "a list", bool: "true/false", type(None): "nothing"}.get(type(value))
            raise self.fail(key, f"expected a string or number, got {kind or type(value).__name__}")
        return str(value)

    def flag(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def date(self, value: Any, key: str) -> dt.date:
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise self.fail(key, f"expected a date YYYY-MM-DD, got {value!r}") from None

    def path(self, value: Any, key: str, inside: bool = False) -> str:
        """A path relative to the config file. Nothing is expanded (`$VAR` stays literal, so a secret in
        the environment cannot end up in a path). An input (`inside`) must stay inside the config's
        folder unless the config says `allow_outside_paths: true`: a config must not read /etc/passwd."""
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a path, got {value!r}")
        p = Path(value)
        resolved = (p if p.is_absolute() else self.file.parent / p).resolve()
        if inside and not self.allow_outside_paths and not resolved.is_relative_to(self.file.parent.resolve()):
            raise self.fail(key, f"expected a path inside {self.file.parent} (set allow_outside_paths: true "
                                 "at the top level to read from elsewhere)")
        return str(resolved)

    def unknown_keys(self, data: dict, key: str, allowed: set[str]) -> None:
        extra = sorted(set(data) - allowed, key=str)
        if extra:
            where = f"{key}.{extra[0]}" if key else str(extra[0])
            close = difflib.get_close_matches(str(extra[0]), sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise self.fail(where, f"unknown key; {hint}expected one of {', '.join(sorted(allowed))}")


PREDICTION_FIELDS = {
    "prediction_id": "prediction_id",
    "timestamp": "timestamp",
    "model_id": "model_id",
    "model_version": "model_version",
    "latency_ms": "latency_ms",
    "status": "status",
    "score": "score",
    "decision": "decision",  # the logged predicted class (optional): used instead of score >= threshold;
    # a multiclass model's predicted class name
    "probabilities": "probabilities",  # multiclass: class probabilities, a JSON array in `classes` order or
    # an object {class: probability} (optional)
}
LABEL_FIELDS = {"prediction_id": "prediction_id", "label": "label"}
INTERACTION_FIELDS = {
    "session_id": "session_id",
    "user_id": "user_id",
    "timestamp": "timestamp",
    "event": "event",
    "product_id": "product_id",
    "from_recommendation": "from_recommendation",
}
SALES_FIELDS = {
    "order_id": "order_id",
    "timestamp": "timestamp",
    "user_id": "user_id",
    "product_id": "product_id",
    "quantity": "quantity",
    "unit_price": "unit_price",
}
# Fields a source may lack: mapped to null (or absent from a CSV or Parquet file) they load as NULL.
OPTIONAL_FIELDS = {"predictions": ("model_version", "latency_ms", "status", "decision", "probabilities")}
SOURCE_DEFAULT_FIELDS = {
    "predictions": PREDICTION_FIELDS,
    "labels": LABEL_FIELDS,
    "interactions": INTERACTION_FIELDS,
    "sales": SALES_FIELDS,
    # a ranker's log and interactions: their field names are in the ranker's `ranking:` section; its interactions
    # may name theirs apart ('' : the `ranking:` section's name)
    "ranking": {},
    "ranking_labels": {"request_id": "", "item_id": "", "event": "", "grade": ""},
}


def _format_of(path: str) -> str | None:
    name = path.lower().removesuffix(".gz")
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"),
                     (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    return None


def _source(r: _Reader, data: Any, key: str, kind: str) -> SourceConfig:
    data = r.mapping(data, key)
    r.unknown_keys(data, key, {"path", "format", "fields", "ok_status", "timezone", "allow_empty"})
    path = r.path(r.require(data, "path", key), f"{key}.path", inside=True)
    if not DATE_PLACEHOLDER.search(path) and kind == "labels":
        raise r.fail(f"{key}.path", "expected a {date} placeholder (for example labels/{date}.csv): labels have "
                                    "no timestamp to split a file into days by")
    timezone = data.get("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise r.fail(f"{key}.timezone", f"unknown time zone {timezone!r}; expected an IANA name such as UTC or "
                                        "Europe/Berlin") from None
    if MODEL_PLACEHOLDER in path and kind != "predictions":
        raise r.fail(f"{key}.path", "{model} is for prediction logs only; labels, interactions and sales name "
                                    "the prediction or are shared")
    fmt = data.get("format") or _format_of(path)
    if fmt is None:
        raise r.fail(f"{key}.format", f"cannot tell the format from {path!r}; set one of {', '.join(FORMATS)}")
    r.choice(fmt, f"{key}.format", FORMATS)
    fields = dict(SOURCE_DEFAULT_FIELDS[kind])
    given = r.mapping(data.get("fields") or {}, f"{key}.fields")
    r.unknown_keys(given, f"{key}.fields", set(fields))
    for canonical, column in given.items():
        if column is None and canonical in OPTIONAL_FIELDS.get(kind, ()):
            fields[canonical] = None
            continue
        if not isinstance(column, str) or not column:
            raise r.fail(f"{key}.fields.{canonical}", f"expected a column or field name, got {column!r}")
        fields[canonical] = column
    ok_status = data.get("ok_status", ["ok"])
    if not isinstance(ok_status, list):
        ok_status = [ok_status]
    ok_status = [r.text(s, f"{key}.ok_status[{i}]") for i, s in enumerate(ok_status)]
    allow_empty = r.flag(data.get("allow_empty", False), f"{key}.allow_empty")
    return SourceConfig(kind, path, fmt, fields, tuple(ok_status), timezone, allow_empty)


def _feature(r: _Reader, name: Any, spec: Any, key: str, default_source: str, kind: str) -> FeatureConfig:
    if not isinstance(name, str) or not name:
        raise r.fail(key, f"expected a feature name, got {name!r}")
    if isinstance(spec, str):
        spec = {"type": spec}
    spec = r.mapping(spec, key)
    r.unknown_keys(spec, key, {"type", "source", "drift_method", "drift_threshold", "allowed_values"})
    ftype = r.choice(spec.get("type", kind), f"{key}.type", FEATURE_TYPES)
    method = r.choice(spec.get("drift_method", "auto"), f"{key}.drift_method", DRIFT_METHODS)
    threshold = spec.get("drift_threshold")
    if threshold is not None:
        threshold = r.number(threshold, f"{key}.drift_threshold", 0, None)
    if method in ("ks", "wasserstein") and ftype == "categorical":
        raise r.fail(f"{key}.drift_method", f"{method} needs a numeric feature; {name} is categorical")
    if method == "chisquare" and ftype == "numeric":
        raise r.fail(f"{key}.drift_method", f"chisquare needs a categorical feature; {name} is numeric")
    allowed = spec.get("allowed_values")
    if allowed is not None:
        if not isinstance(allowed, list):
            raise r.fail(f"{key}.allowed_values", "expected a list")
        allowed = tuple(str(v) for v in allowed)
    if "." in name and not spec.get("source") and "." in default_source:
        # A JSON path splits at every '.': features.unit.price would read features -> unit -> price, which
        # is NULL on every record of a log that has the key "unit.price". Say so rather than read NULLs.
        raise r.fail(key, f"a '.' in a name is read from JSON logs as a nested path "
                          f"({default_source.format(name=name)}); set `source:` to the value's path, "
                          "or rename it (quotes, spaces and other characters work)")
    source = spec.get("source") or default_source.format(name=name)
    return FeatureConfig(name, ftype, str(source), method, threshold, allowed)


def _named_features(r: _Reader, data: Any, key: str, default_source: str, kind: str) -> tuple:
    if data is None:
        return ()
    if isinstance(data, list):  # a plain list of names
        data = {name: {} for name in data}
    data = r.mapping(data, key)
    return tuple(
        _feature(r, name, spec or {}, f"{key}.{name}", default_source, kind) for name, spec in data.items()
    )


def _thresholds(r: _Reader, data: Any, key: str, defaults: Thresholds) -> Thresholds:
    data = r.mapping(data or {}, key)
    allowed = {f for f in Thresholds.__dataclass_fields__}
    r.unknown_keys(data, key, allowed)
    values: dict[str, Any] = {}
    bounds = {
        "min_metric_ratio": (0, 10), "latency_p95_ms": (0, None), "error_rate": (0, 1),
        "drift_share": (0, 1), "demographic_parity_ratio": (0, 1), "min_label_coverage": (0, 1),
        "equalized_odds_difference": (0, 1),
    }
    for name, (lo, hi) in bounds.items():
        values[name] = r.number(data[name], f"{key}.{name}", lo, hi) if name in data else getattr(defaults, name)
    severity = dict(defaults.severity)
    levels = r.mapping(data.get("severity") or {}, f"{key}.severity")
    r.unknown_keys(levels, f"{key}.severity", set(THRESHOLD_CHECKS))
    for check, level in levels.items():
        severity[check] = r.choice(level, f"{key}.severity.{check}", SEVERITIES)
    values["severity"] = severity
    return Thresholds(**values)


# multiclass log_loss: -ln p(true class) where probabilities were logged, else the 0/1 error (stats.multiclass.row_loss)
RETRAINING_LOSSES = {"binary_classification": ("log_loss",), "regression": ("squared_error", "absolute_error"),
                     "multiclass_classification": ("log_loss",)}


def _retraining(r: _Reader, data: Any, key: str, task: str) -> RetrainingConfig:
    data = r.mapping(data or {}, key)
    r.unknown_keys(data, key, set(RetrainingConfig.__dataclass_fields__))
    values: dict[str, Any] = {}
    if "loss" in data:
        values["loss"] = r.choice(data["loss"], f"{key}.loss", RETRAINING_LOSSES[task])
    whole = {"reference_days": (1, 365), "reference_rows": (100, 10_000_000), "window_days": (1, 90),
             "persistence_k": (1, 90), "persistence_n": (1, 90), "min_rows": (2, 10_000_000),
             "canary_min_labelled": (1, 10_000_000)}
    for name, (lo, hi) in whole.items():
        if name in data:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise r.fail(f"{key}.{name}", f"expected a whole number in [{lo}, {hi}], got {value!r}")
            values[name] = value
    k = values.get("persistence_k", RetrainingConfig.persistence_k)
    n = values.get("persistence_n", RetrainingConfig.persistence_n)
    if k > n:
        raise r.fail(f"{key}.persistence_k", f"expected at most persistence_n ({n}), got {k}")
    for name, (lo, hi) in {"canary_alpha": (0, 1), "canary_latency_tolerance": (0, 10), "shift_se": (0.5, 50)}.items():
        if name in data:
            values[name] = r.number(data[name], f"{key}.{name}", lo, hi)
    if "auto_approve" in data:
        if not isinstance(data["auto_approve"], bool):
            raise r.fail(f"{key}.auto_approve", f"expected true or false, got {data['auto_approve']!r}")
        values["auto_approve"] = data["auto_approve"]
    if data.get("entry_point") is not None:
        entry = data["entry_point"]
        if not isinstance(entry, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", entry):
            raise r.fail(f"{key}.entry_point", f"expected 'package.module:function', got {entry!r}")
        values["entry_point"] = entry
    if data.get("command") is not None:
        command = data["command"]
        if isinstance(command, str):
            command = command.split()
        if not isinstance(command, list) or not command or not all(isinstance(c, str | int | float) for c in command):
            raise r.fail(f"{key}.command", "expected a command as a list of arguments (run without a shell)")
        values["command"] = tuple(str(c) for c in command)
    if values.get("entry_point") and values.get("command"):
        raise r.fail(key, "expected entry_point or command, not both")
    return RetrainingConfig(**values)


def _or_empty(value: Any) -> Any:
    return "" if value is None else value  # `version:` left empty is no version, not the text "None"


def _model(r: _Reader, data: Any, key: str, predictions: SourceConfig, defaults: Thresholds) -> ModelConfig:
    data = r.mapping(data, key)
    r.unknown_keys(data, key, {
        "id", "task", "version", "features", "sensitive_attributes", "reference", "reference_fields",
        "score_field", "decision_threshold", "thresholds", "alert_channels", "owner", "main_metric",
        "retraining", "key_features", "estimation", "segments", "classes",
    })
    model_id = r.require(data, "id", key)
    if not isinstance(model_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", model_id):
        raise r.fail(f"{key}.id", f"expected letters, digits, '_', '-' or '.', got {model_id!r}")
    task = r.choice(r.require(data, "task", key), f"{key}.task", (*TASKS, RANKING_TASK))  # rankers: `_rankers`
    json_like = predictions.format == "jsonl"
    features = _named_features(r, r.require(data, "features", key), f"{key}.features",
                               "features.{name}" if json_like else "{name}", "numeric")
    if not features:
        raise r.fail(f"{key}.features", "expected at least one feature")
    attributes = _named_features(r, data.get("sensitive_attributes"), f"{key}.sensitive_attributes",
                                 "context.{name}" if json_like else "{name}", "categorical")
    # A multiclass reference has no score: its label (class names), and the predicted class (`decision`) and
    # probabilities (`probabilities`) under those default names unless mapped (MULTICLASS_REFERENCE_FIELDS).
    ref_fields = {"label": "label"} if task == "multiclass_classification" else {"score": "score", "label": "label"}
    given_ref = r.mapping(data.get("reference_fields") or {}, f"{key}.reference_fields")
    r.unknown_keys(given_ref, f"{key}.reference_fields", {"label", "decision", "probabilities"}
                   if task == "multiclass_classification" else {"score", "label", "decision"})
    for k, v in given_ref.items():
        ref_fields[k] = r.text(v, f"{key}.reference_fields.{k}")
    # Two features read from one field (same type) become two columns of one name in the model's table,
    # which the lake refuses deep in a run ("duplicate qualified field name"): refuse it here.
    first: dict[tuple[str, str], str] = {}
    for group, items in (("features", features), ("sensitive_attributes", attributes)):
        for f in items:
            where = f"{key}.{group}.{f.name}"
            if (f.source, f.type) in first:
                raise r.fail(where, f"reads the same {f.type} field {f.source!r} as {first[(f.source, f.type)]}; "
                                    "a model reads each field once (remove one, or set a different `source:`)")
            first[(f.source, f.type)] = where
    main_metric = r.choice(data.get("main_metric", DEFAULT_MAIN_METRIC[task]), f"{key}.main_metric", MAIN_METRICS[task])
    classes = _classes(r, data.get("classes"), f"{key}.classes", task)
    if classes:
        for group, items in (("features", features), ("sensitive_attributes", attributes)):
            for f in items:
                if f.source in (CLASS_CODE_COLUMN, CLASS_PROBABILITIES_COLUMN):
                    raise r.fail(f"{key}.{group}.{f.name}", f"the field {f.source!r} names a column a multiclass "
                                                            "model keeps for itself; set a different `source:`")
    channels = data.get("alert_channels", ["file"])
    if isinstance(channels, str):
        channels = [channels]
    return ModelConfig(
        id=model_id,
        task=task,
        version=r.text(_or_empty(data.get("version")), f"{key}.version"),
        features=features,
        sensitive_attributes=attributes,
        reference_path=r.path(r.require(data, "reference", key), f"{key}.reference", inside=True),
        reference_fields=ref_fields,
        # a multiclass model has no score field: its output is the predicted class (the score is derived)
        score_field=r.text(data.get("score_field") or (
            (predictions.fields["decision"] or predictions.fields["probabilities"] or "decision")
            if task == "multiclass_classification" else predictions.fields["score"]), f"{key}.score_field"),
        decision_threshold=r.number(data.get("decision_threshold", 0.5), f"{key}.decision_threshold", 0, 1),
        thresholds=_thresholds(r, data.get("thresholds"), f"{key}.thresholds", defaults),
        alert_channels=tuple(channels),
        owner=r.text(_or_empty(data.get("owner")), f"{key}.owner"),
        main_metric=main_metric,
        retraining=_retraining(r, data.get("retraining"), f"{key}.retraining", task),
        key_features=_key_features(r, data.get("key_features"), f"{key}.key_features", features),
        estimation=_estimation(r, data.get("estimation"), f"{key}.estimation", task),
        segments=_segments(r, data.get("segments"), f"{key}.segments", features + attributes,
                           "context.{name}" if json_like else "{name}"),
        classes=classes,
    )


MAX_CLASSES = 1000
MULTICLASS_REFERENCE_FIELDS = {"decision": "decision", "probabilities": "probabilities"}  # defaults


def _classes(r: _Reader, data: Any, key: str, task: str) -> tuple[str, ...]:
    """`classes: [a, b, c]` of a multiclass model: at least 2 distinct non-empty names (2 is allowed: a
    two-class model logged by class name is a multiclass model with K = 2). Other tasks have none."""
    if task != "multiclass_classification":
        if data is not None:
            raise r.fail(key, f"only multiclass_classification models have classes (this model is {task})")
        return ()
    if data is None:
        raise r.fail(key, "is required for multiclass_classification: the class names, in the order of a "
                          "logged probability array")
    if not isinstance(data, list) or not 2 <= len(data) <= MAX_CLASSES:
        raise r.fail(key, f"expected a list of 2 to {MAX_CLASSES} class names, got {data!r}"[:300])
    names = [r.text(c, f"{key}[{i}]") for i, c in enumerate(data)]
    for i, name in enumerate(names):
        if not name.strip():
            raise r.fail(f"{key}[{i}]", "expected a non-empty class name")
        if name in names[:i]:
            raise r.fail(f"{key}[{i}]", f"duplicate class {name!r}")
    return tuple(names)


def _segments(r: _Reader, data: Any, key: str, known: tuple[FeatureConfig, ...], default_source: str
              ) -> SegmentsConfig:
    """`segments: [market, [market, device]]`, or `segments: {by: [...], min_rows: 100, min_class_rows: 10,
    columns: {...}}`."""
    if data is None:
        return SegmentsConfig()
    if isinstance(data, list):
        data = {"by": data}
    data = r.mapping(data, key)
    r.unknown_keys(data, key, {"by", "min_rows", "min_class_rows", "columns"})
    declared = {c.name: c for c in _named_features(r, data.get("columns"), f"{key}.columns", default_source,
                                                   "categorical")}
    by_key = f"{key}.by"
    items = data.get("by")
    if not isinstance(items, list) or not items:
        raise r.fail(by_key, "expected a list of segment columns, each a name or a list of names (a cross)")
    names = {c.name: c for c in known}
    extra: dict[str, FeatureConfig] = {}
    by = []
    for i, item in enumerate(items):
        cross = item if isinstance(item, list) else [item]
        if not cross or not all(isinstance(n, str) and n for n in cross) or len(set(cross)) < len(cross):
            raise r.fail(f"{by_key}[{i}]", f"expected a column name or a list of distinct names, got {item!r}")
        for n in cross:
            if n in names:
                if names[n].type != "categorical" and n not in declared:
                    raise r.fail(f"{by_key}[{i}]", f"{n} is a numeric feature; segments need categories "
                                                   "(bucket it in the log, or declare it under segments.columns)")
            elif n not in extra:
                extra[n] = declared.get(n) or _feature(r, n, {}, f"{by_key}[{i}]", default_source, "categorical")
        by.append(tuple(cross))
    unused = sorted(set(declared) - {n for cross in by for n in cross})
    if unused:
        raise r.fail(f"{key}.columns.{unused[0]}", "declared but not used in segments.by")
    read = {(c.source, c.type): c.name for c in known}
    for n, c in extra.items():
        if c.type != "categorical":
            raise r.fail(f"{key}.columns.{n}", "segment columns are categorical")
        if (c.source, c.type) in read:
            raise r.fail(f"{key}.columns.{n}", f"reads the same field {c.source!r} as {read[(c.source, c.type)]}; "
                                               f"segment by {read[(c.source, c.type)]} instead")
    minimum = {}
    for name in ("min_rows", "min_class_rows"):
        value = minimum[name] = data.get(name, getattr(SegmentsConfig, name))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000_000:
            raise r.fail(f"{key}.{name}", f"expected a whole number in [1, 10000000], got {value!r}")
    return SegmentsConfig(tuple(dict.fromkeys(by)), minimum["min_rows"], tuple(extra.values()),
                          minimum["min_class_rows"])


def _estimation(r: _Reader, data: Any, key: str, task: str) -> EstimationConfig:
    """Model-level `estimation: {enabled, method, metrics}`."""
    data = r.mapping(data or {}, key)
    r.unknown_keys(data, key, set(EstimationConfig.__dataclass_fields__))
    enabled = r.flag(data["enabled"], f"{key}.enabled") if "enabled" in data else True
    from monitor_assets.stats.estimation import METHODS

    # the estimator's own list of methods (a superset of metrics_spec.ESTIMATION_METHODS until that follows it)
    methods = tuple(dict.fromkeys((*ESTIMATION_METHODS[task], *METHODS.get(task, ()))))
    method = r.choice(data.get("method", "auto"), f"{key}.method", methods)
    metrics = data.get("metrics") or []
    if not isinstance(metrics, list):
        raise r.fail(f"{key}.metrics", "expected a list of metric names")
    for i, m in enumerate(metrics):
        r.choice(m, f"{key}.metrics[{i}]", ESTIMABLE_METRICS[task])
    return EstimationConfig(enabled, method, tuple(dict.fromkeys(metrics)))


def _key_features(r: _Reader, data: Any, key: str, features: tuple) -> tuple[str, ...]:
    """Model-level `key_features: [name, ...]`: each must be one of the model's features."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise r.fail(key, f"expected a list of feature names, got {type(data).__name__}")
    names = {f.name for f in features}
    for name in data:
        if name not in names:
            raise r.fail(key, f"unknown feature {name!r}; the model's features: {', '.join(sorted(names))}")
    return tuple(data)


# Values that are secrets whatever key they sit under: webhook URLs, Slack and bearer tokens, passwords
# in URLs.
SECRET_VALUE = re.compile(r"hooks\.slack\.com/|discord(app)?\.com/api/webhooks|\bxox[abprs]-|://[^/\s:@]+:[^/\s@]+@"
                          r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bAKIA[0-9A-Z]{16}\b", re.IGNORECASE)
MAX_CHANNEL_TIMEOUT_S = 120  # a send blocks a sensor tick; longer than this is a mistake, not a slow server
CHANNEL_OPTIONS = {
    "email": {"host", "host_env", "port", "starttls", "ssl", "allow_insecure", "sender", "to", "username_env",
              "password_env", "timeout"},
    "slack": {"webhook_url_env", "timeout"},
    "file": {"path"},
}


def _channels(r: _Reader, data: Any) -> dict[str, ChannelConfig]:
    data = r.mapping(data or {}, "alerts.channels")
    channels = {"file": ChannelConfig("file", "file", {})}
    for name, spec in data.items():
        key = f"alerts.channels.{name}"
        spec = r.mapping(spec, key)
        ctype = r.choice(spec.get("type", name), f"{key}.type", CHANNEL_TYPES)
        options = {k: v for k, v in spec.items() if k != "type"}
        for opt, value in options.items():
            # Secrets are named by environment variable, never written in the file.
            if opt in ("password", "webhook_url", "token"):
                raise r.fail(f"{key}.{opt}", f"put secrets in an environment variable and set {opt}_env")
            if opt.endswith("_env") and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(value)):
                raise r.fail(f"{key}.{opt}", f"expected an environment variable name, got {value!r}")
        # A typo such as `startls` must not silently send a password in clear text.
        r.unknown_keys(options, key, CHANNEL_OPTIONS[ctype])
        for opt, value in options.items():
            if isinstance(value, str) and SECRET_VALUE.search(value):
                raise r.fail(f"{key}.{opt}", "looks like a secret: put it in an environment variable and name "
                                             "the variable (e.g. webhook_url_env)")
        # Checked here, not when the first alert is sent: a typo'd port fails at load, not at 3 a.m.
        if "port" in options:
            r.integer(options["port"], f"{key}.port", 1, 65535)
        timeout = options.get("timeout", 1)
        if (isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout)
                or not 0 < timeout <= MAX_CHANNEL_TIMEOUT_S):
            raise r.fail(f"{key}.timeout", f"expected seconds in (0, {MAX_CHANNEL_TIMEOUT_S}], got {timeout!r}")
        for opt in ("starttls", "ssl", "allow_insecure"):
            if opt in options:
                r.flag(options[opt], f"{key}.{opt}")
        if ctype == "email" and not (options.get("to")):
            raise r.fail(f"{key}.to", "expected at least one recipient")
        if (ctype == "email" and (options.get("username_env") or options.get("password_env"))
                and not (options.get("starttls") or options.get("ssl") or options.get("allow_insecure"))):
            raise r.fail(key, "refuses to send a password over plain text: set starttls: true or ssl: true "
                              "(or allow_insecure: true for a server you trust)")
        if ctype == "file" and "path" in options:
            options["path"] = r.path(options["path"], f"{key}.path")
        channels[name] = ChannelConfig(name, ctype, options)
    return channels


MAX_YAML_NODES = 100_000  # a config is a few hundred nodes; aliases must not expand it to millions


class _TooLarge(ValueError):
    pass


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps: a date stays text, so a bad one (2026-13-01) is reported
    with its key and the expected form instead of a bare PyYAML error."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes the document has once its aliases are expanded, counted without expanding them."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_YAML_NODES + 1)
    return memo[id(node)]


def _load_yaml(text: str) -> Any:
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise _TooLarge(f"refused: its aliases expand to more than {MAX_YAML_NODES:,} values "
                            "(an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def location_key(file: Path) -> str:
    """The folder name of a config's own warehouse and reports: its stem and a short hash of its resolved
    path (two `monitor.yaml` in different folders do not share one)."""
    resolved = Path(file).resolve()
    return f"{resolved.stem}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def default_locations(file: Path) -> tuple[str, str]:
    """Where the warehouse file and the reports go when neither the environment nor the config says:
    the demo's `warehouse/monitor.duckdb` and `reports/`; any other config its own folder under each
    (`warehouse/<stem>-<hash>/monitor.duckdb`, `reports/<stem>-<hash>/`), so a user's run never writes
    into the demo's warehouse or overwrites its dashboard. The lake and alert state follow the warehouse."""
    if Path(file).resolve() == DEMO_CONFIG.resolve():
        return str(REPO_ROOT / "warehouse" / "monitor.duckdb"), str(REPO_ROOT / "reports")
    key = location_key(file)
    return str(REPO_ROOT / "warehouse" / key / "monitor.duckdb"), str(REPO_ROOT / "reports" / key)


def _read_root(file: Path) -> tuple[_Reader, dict]:
    """The file's top-level mapping and a reader for it; only known top-level keys."""
    if not file.exists():
        raise ConfigError(file, "(file)", "config file not found")
    try:
        root = _load_yaml(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(file, "(file)", "not valid YAML: " + " ".join(str(exc).split())) from None
    except _TooLarge as exc:
        raise ConfigError(file, "(file)", str(exc)) from None
    r = _Reader(file, allow_outside_paths=root.get("allow_outside_paths") is True if isinstance(root, dict)
                else False)
    root = r.mapping(root, "(top level)")
    r.unknown_keys(root, "", {"partitions", "label_delay_days", "sources", "models", "alerts", "drift",
                              "fairness", "anomalies", "thresholds", "warehouse", "reports_dir",
                              "allow_outside_paths", "evaluation", "shards"})
    return r, root


def _partitions(r: _Reader, root: dict) -> tuple[dt.date, dt.date | None]:
    parts = r.mapping(r.require(root, "partitions", ""), "partitions")
    r.unknown_keys(parts, "partitions", {"start_date", "end_date"})  # `end_dat` must not mean "up to today"
    start = r.date(r.require(parts, "start_date", "partitions"), "partitions.start_date")
    end = r.date(parts["end_date"], "partitions.end_date") if parts.get("end_date") else None
    if end is not None and end < start:
        raise r.fail("partitions.end_date", f"expected a date on or after start_date {start}, got {end}")
    return start, end


def _is_ranker(data: Any) -> bool:
    return isinstance(data, dict) and data.get("task") == RANKING_TASK


def _models(r: _Reader, models_data: list, predictions: SourceConfig, defaults: Thresholds) -> tuple[ModelConfig, ...]:
    """Every model but the rankers (`_rankers`), ids unique among all."""
    indexed = [(i, m) for i, m in enumerate(models_data) if not _is_ranker(m)]
    models = tuple(_model(r, m, f"models[{i}]", predictions, defaults) for i, m in indexed)
    seen: set[str] = set()
    for (i, _), m in zip(indexed, models, strict=True):
        if m.id in seen:
            raise r.fail(f"models[{i}].id", f"duplicate model id {m.id!r}")
        seen.add(m.id)
    for i, data in enumerate(models_data):
        if _is_ranker(data) and data.get("id") in seen:
            raise r.fail(f"models[{i}].id", f"duplicate model id {data.get('id')!r}")
        if _is_ranker(data):
            seen.add(data.get("id"))
    return models


def _ranker_source(r: _Reader, data: Any, key: str, kind: str) -> SourceConfig:
    """A ranker's `source:` or `labels:`: a path with {date}, or a mapping {path, format, timezone, allow_empty};
    `labels:` may also map its own field names (`fields: {request_id, item_id, event, grade}`)."""
    if isinstance(data, str):
        data = {"path": data}
    data = r.mapping(data, key)
    if "fields" in data and kind == "ranking":
        raise r.fail(f"{key}.fields", "a ranker names its fields in its `ranking:` section (request_id, item_id, ...)")
    path = data.get("path")
    if isinstance(path, str) and not DATE_PLACEHOLDER.search(path):
        raise r.fail(f"{key}.path", "expected a {date} placeholder (for example rankings/{date}.jsonl)")
    return _source(r, data, key, kind)


RANKING_KEYS = {"k", "shape", "request_id", "item_id", "rank", "score", "items", "scores", "model_version", "event",
                "grade", "relevance", "gain", "no_relevant"}


def _ranking(r: _Reader, data: Any, key: str, fmt: str) -> RankingConfig:
    """A ranker's `ranking:` section (RankingConfig); `shape` defaults to lists for JSON lines, else impressions."""
    from monitor_assets.stats.ranking import GAINS, NO_RELEVANT

    data = r.mapping(data or {}, key)
    r.unknown_keys(data, key, RANKING_KEYS)
    ks = data.get("k", [5, 10])
    ks = [ks] if isinstance(ks, int) and not isinstance(ks, bool) else ks
    if not isinstance(ks, list) or not ks:
        raise r.fail(f"{key}.k", f"expected a cut-off or a list of cut-offs, got {ks!r}")
    ks = tuple(sorted({r.integer(k, f"{key}.k[{i}]", 1, 1000) for i, k in enumerate(ks)}))
    values: dict[str, Any] = {"ks": ks, "shape": r.choice(data.get("shape", "lists" if fmt == "jsonl" else "impressions"),
                                                          f"{key}.shape", RANKING_SHAPES)}
    for name in ("request_id", "item_id", "rank", "score", "items", "scores", "event"):
        if name in data:
            values[name] = r.text(data[name], f"{key}.{name}")
    for name in ("model_version", "grade"):
        if name in data:
            values[name] = None if data[name] is None else r.text(data[name], f"{key}.{name}")
    if "relevance" in data:
        grades = r.mapping(data["relevance"], f"{key}.relevance")
        if not grades:
            raise r.fail(f"{key}.relevance", "expected at least one event: grade")
        values["relevance"] = tuple((str(e), r.number(g, f"{key}.relevance.{e}", 0, 1000)) for e, g in grades.items())
    values["gain"] = r.choice(data.get("gain", "linear"), f"{key}.gain", GAINS)
    values["no_relevant"] = r.choice(data.get("no_relevant", "zero"), f"{key}.no_relevant", NO_RELEVANT)
    return RankingConfig(**values)


def _rankers(r: _Reader, models_data: list, defaults: Thresholds) -> tuple[RankerConfig, ...]:
    """The `task: ranking` entries of `models:` (RankerConfig), in config order."""
    out = []
    for i, data in enumerate(models_data):
        if not _is_ranker(data):
            continue
        key = f"models[{i}]"
        r.unknown_keys(data, key, {"id", "task", "version", "source", "labels", "reference", "ranking", "main_metric",
                                   "thresholds", "alert_channels", "owner", "retraining", "segments"})
        model_id = r.require(data, "id", key)
        if not isinstance(model_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", model_id):
            raise r.fail(f"{key}.id", f"expected letters, digits, '_', '-' or '.', got {model_id!r}")
        source = _ranker_source(r, r.require(data, "source", key), f"{key}.source", "ranking")
        labels = _ranker_source(r, data["labels"], f"{key}.labels", "ranking_labels") if data.get("labels") else None
        ranking = _ranking(r, data.get("ranking"), f"{key}.ranking", source.format)
        default_main = "ndcg_at_10" if 10 in ranking.ks else f"ndcg_at_{max(ranking.ks)}"
        main = data.get("main_metric", default_main)
        if main not in ranking.metrics:
            raise r.fail(f"{key}.main_metric", f"expected one of {', '.join(ranking.metrics)} (cut-offs from "
                                               f"ranking.k), got {main!r}")
        channels = data.get("alert_channels", ["file"])
        retraining = data.get("retraining")
        if isinstance(retraining, dict) and "loss" in retraining:
            raise r.fail(f"{key}.retraining.loss", "a ranker's loss is fixed: 1 - NDCG@k per request, k of its "
                                                   "main metric (README, the closed loop)")
        segments = data.get("segments")
        if isinstance(segments, dict) and "min_class_rows" in segments:
            raise r.fail(f"{key}.segments.min_class_rows", "a ranker has no classes: min_rows (labelled requests) "
                                                           "is its only minimum")
        # a list record's context (`context.market`); an impression row's own column (`market`)
        segment_source = "context.{name}" if source.format == "jsonl" and ranking.shape == "lists" else "{name}"
        out.append(RankerConfig(
            id=model_id, version=r.text(_or_empty(data.get("version")), f"{key}.version"), source=source,
            labels=labels,
            reference_path=r.path(data["reference"], f"{key}.reference", inside=True) if data.get("reference") else "",
            ranking=ranking, main_metric=main,
            thresholds=_thresholds(r, data.get("thresholds"), f"{key}.thresholds", defaults),
            alert_channels=tuple([channels] if isinstance(channels, str) else channels),
            owner=r.text(_or_empty(data.get("owner")), f"{key}.owner"),
            retraining=_retraining(r, retraining, f"{key}.retraining", RANKING_TASK),
            segments=_segments(r, segments, f"{key}.segments", (), segment_source)))
    return tuple(out)


def _alerts(r: _Reader, root: dict, models: tuple[ModelConfig | RankerConfig, ...]) -> tuple[dict, dict[str, ChannelConfig]]:
    """The alerts section and its channels; every channel a model names must be defined."""
    alerts = r.mapping(root.get("alerts") or {}, "alerts")
    r.unknown_keys(alerts, "alerts", {"channels", "cooldown_hours", "give_up_hours", "ui_url"})
    channels = _channels(r, alerts.get("channels"))
    for i, m in enumerate(models):
        for ch in m.alert_channels:
            if ch not in channels:
                raise r.fail(f"models[{_entry_index(root, m.id, i)}].alert_channels",
                             f"unknown channel {ch!r}; defined: {', '.join(channels)}")
    return alerts, channels


def _entry_index(root: dict, model_id: str, fallback: int) -> int:
    """Where the model is in the file's `models:` list (rankers are kept apart, so tuple positions differ)."""
    ids = [m.get("id") if isinstance(m, dict) else None for m in root.get("models") or []]
    return ids.index(model_id) if model_id in ids else fallback


def _section(r: _Reader, root: dict, key: str, known: set[str]) -> dict:
    """An optional top-level mapping with only `known` keys."""
    section = r.mapping(root.get(key) or {}, key)
    r.unknown_keys(section, key, known)
    return section


def _shard_count(r: _Reader, root: dict) -> int:
    """$MONITOR_SHARDS (the platform's setting, as Helm or compose pass it) over `shards:`; 1 by default."""
    text = os.environ.get("MONITOR_SHARDS", "").strip()
    if text:
        if not text.isdigit() or not 1 <= int(text) <= 1000:
            raise r.fail("$MONITOR_SHARDS", f"expected a whole number of shards in [1, 1000], got {text!r}")
        return int(text)
    value = root.get("shards", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise r.fail("shards", f"expected a whole number of shards in [1, 1000], got {value!r}")
    return value


def lake_beside(warehouse: str | os.PathLike) -> str:
    """The lake folder a warehouse path implies when none is named: `<file stem>_lake` beside the file."""
    path = Path(warehouse)
    return str(path.with_name(f"{path.stem}_lake"))


def load_config(path: str | os.PathLike | None = None) -> MonitorConfig:
    """Load and validate a monitoring config; `path` defaults to $MONITOR_CONFIG, then the demo's."""
    file = Path(path or os.environ.get("MONITOR_CONFIG") or DEMO_CONFIG).resolve()
    r, root = _read_root(file)
    start, end = _partitions(r, root)
    sources = r.mapping(r.require(root, "sources", ""), "sources")
    r.unknown_keys(sources, "sources", {"predictions", "labels", "interactions", "sales"})
    defaults = _thresholds(r, root.get("thresholds"), "thresholds", Thresholds())
    models_data = r.require(root, "models", "")
    if not isinstance(models_data, list) or not models_data:
        raise r.fail("models", "expected a non-empty list of models")
    predictions = _source(r, r.require(sources, "predictions", "sources"), "sources.predictions", "predictions")
    models = _models(r, models_data, predictions, defaults)
    rankers = _rankers(r, models_data, defaults)
    alerts, channels = _alerts(r, root, models + rankers)
    drift = _section(r, root, "drift", {"dataset_drift_share", "key_features_top_k"})
    fairness = _section(r, root, "fairness", {"min_group_size", "baseline", "tolerance", "floor_ratio", "ceiling_odds"})
    anomalies = _section(r, root, "anomalies", {"window_days", "threshold"})
    warehouse_default, reports_default = default_locations(file)
    # Imported here: the evaluation stage's settings use this module's ConfigError.
    from monitor_assets.evaluation.settings import parse_evaluation
    evaluation = parse_evaluation(root.get("evaluation"), file)
    label_delay = root.get("label_delay_days", 3)
    if isinstance(label_delay, bool) or not isinstance(label_delay, int) or not 0 <= label_delay <= 60:
        raise r.fail("label_delay_days", f"expected a whole number of days in [0, 60], got {label_delay!r}")
    return MonitorConfig(
        file=file,
        shard_count=_shard_count(r, root),
        allow_outside_paths=r.allow_outside_paths,
        start_date=start,
        end_date=end,
        label_delay_days=label_delay,
        models=models,
        rankers=rankers,
        evaluation=evaluation,
        predictions=predictions,
        labels=_source(r, r.require(sources, "labels", "sources"), "sources.labels", "labels"),
        interactions=_source(r, sources["interactions"], "sources.interactions", "interactions")
        if sources.get("interactions") else None,
        sales=_source(r, sources["sales"], "sources.sales", "sales") if sources.get("sales") else None,
        channels=channels,
        dataset_drift_share=r.number(drift.get("dataset_drift_share", 0.5), "drift.dataset_drift_share", 0, 1),
        min_group_size=r.integer(fairness.get("min_group_size", 30), "fairness.min_group_size", 1),
        key_features_top_k=r.integer(drift.get("key_features_top_k", 3), "drift.key_features_top_k", 0),
        fairness_baseline=r.choice(fairness.get("baseline", "reference"), "fairness.baseline",
                                   ("reference", "absolute")),
        fairness_tolerance=r.number(fairness.get("tolerance", 0.05), "fairness.tolerance", 0, 1),
        fairness_floor_ratio=r.number(fairness.get("floor_ratio", 0.5), "fairness.floor_ratio", 0, 1),
        fairness_ceiling_odds=r.number(fairness.get("ceiling_odds", 0.3), "fairness.ceiling_odds", 0, 1),
        anomaly_window_days=r.integer(anomalies.get("window_days", 14), "anomalies.window_days", 3, 365),
        anomaly_threshold=r.number(anomalies.get("threshold", 4.0), "anomalies.threshold", 0, None),
        alert_cooldown_hours=r.number(alerts.get("cooldown_hours", 24), "alerts.cooldown_hours", 0, None),
        alert_give_up_hours=r.number(alerts.get("give_up_hours", 24), "alerts.give_up_hours", 0, None),
        ui_url=os.environ.get("MONITOR_UI_URL") or str(alerts.get("ui_url", "http://127.0.0.1:3000")).rstrip("/"),
        warehouse_path=os.environ.get("MONITOR_WAREHOUSE")
        or (r.path(root["warehouse"], "warehouse") if root.get("warehouse") else warehouse_default),
        lake_dir=os.environ.get("MONITOR_LAKE", ""),
        reports_dir=os.environ.get("MONITOR_REPORTS_DIR")
        or (r.path(root["reports_dir"], "reports_dir") if root.get("reports_dir") else reports_default),
    )
