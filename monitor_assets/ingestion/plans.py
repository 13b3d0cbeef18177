"""How each kind of source is read, built from the config: its fields and rules (a `StagingPlan`), and the
columns every model's features land in."""

from __future__ import annotations

from monitor_assets.config import ModelConfig, MonitorConfig, SourceConfig
from monitor_assets.ingestion.fields import NUMBER, TEXT, TIME, Field, StagingPlan
from monitor_assets.stats.multiclass import (
    class_code_sql,
    classes_sql,
    probabilities_problem_sql,
    probabilities_sql,
)
from monitor_assets.storage.lake import PREDICTION_COLUMNS
from monitor_assets.storage.sql import sql_str

# Staging columns of multiclass models' rows: the predicted class code and the probabilities in class order.
CLASS_CODE, CLASS_PROBABILITIES = "mc_code", "mc_proba"
MULTICLASS_STAGE = {CLASS_CODE: "DOUBLE", CLASS_PROBABILITIES: "DOUBLE[]"}


def multiclass_rules(m: ModelConfig, in_model: str, is_ok: str, decision_label: str, proba_label: str,
                     proba: str) -> list[tuple[str, str]]:
    """A multiclass model's record rules: a predicted class or probabilities where served, the class one of
    `classes`, the probabilities K numbers in [0, 1] summing to 1 (an object: exactly the classes as keys)."""
    names = ", ".join(m.classes)
    return [
        (f"{in_model} AND {is_ok} AND decision IS NULL AND probabilities IS NULL",
         f"'missing required field: ' || {sql_str(decision_label)} || ' or ' || {sql_str(proba_label)} "
         "|| ' (status is ok)'"),
        (f"{in_model} AND decision IS NOT NULL AND NOT list_contains({classes_sql(m.classes)}, decision)",
         f"'unknown category: predicted class ' || left(decision, 80) || ' is not a class of {m.id} (' "
         f"|| {sql_str(names[:200])} || ')'"),
        (f"{in_model} AND ({probabilities_problem_sql(m.classes, 'probabilities', proba)}) IS NOT NULL",
         f"'bad probabilities: ' || ({probabilities_problem_sql(m.classes, 'probabilities', proba)})"),
    ]


def predictions_plan(config: MonitorConfig, models: list[ModelConfig] | None = None,
                     constant_model: str | None = None) -> StagingPlan:
    """How prediction files are read: for the given models only (a file is parsed for the fields of the
    models it can hold), with model_id taken from the path when the file belongs to one model."""
    src = config.predictions.fields
    models = list(config.models) if models is None else models
    model_id = (Field("model_id", None, TEXT, constant=constant_model) if constant_model is not None
                else Field("model_id", src["model_id"], TEXT, True))
    fields = [
        Field("prediction_id", src["prediction_id"], TEXT, True),
        model_id,
        Field("ts", src["timestamp"], TIME, True),
        # Not every service logs these: when unmapped or absent they load as NULL (and every row is ok).
        Field("model_version", src["model_version"], optional=True),
        Field("latency_ms", src["latency_ms"], NUMBER, optional=True),
        Field("status", src["status"], optional=True),
        Field("decision", src["decision"], optional=True),  # the logged predicted class, any spelling
    ]
    ok_list = ", ".join(sql_str(s) for s in config.predictions.ok_status)
    is_ok = f"(coalesce(status, {sql_str(config.predictions.ok_status[0])}) IN ({ok_list}))"
    # Each model may log its output under its own field; read each distinct one once.
    score_aliases: dict[str, str] = {}
    multiclass = [m for m in models if m.is_multiclass]
    if multiclass:
        fields.append(Field("probabilities", src.get("probabilities"), optional=True))
    for m in models:
        if m.is_multiclass:
            continue  # no score field: the probability of the predicted class becomes its score
        if m.score_field not in score_aliases:
            alias = f"score_{len(score_aliases)}"
            score_aliases[m.score_field] = alias
            fields.append(Field(alias, m.score_field, NUMBER, False, label=m.score_field))
    feature_aliases: dict[tuple[str, str], str] = {}
    for m in models:
        for f in m.logged_columns:
            key = (f.source, f.type)
            if key not in feature_aliases:
                alias = f"feat_{len(feature_aliases)}"
                feature_aliases[key] = alias
                # Categorical values are kept as text whatever JSON type they came as.
                fields.append(Field(alias, f.source, NUMBER if f.type == "numeric" else TEXT, label=f.source))
    # JSON: the object a model's features sit in ("features" of "features.amount") must be an object when
    # present; null or a string would load every feature as NULL. Absent, they load as NULL (like a column a
    # CSV or Parquet file lacks).
    parents: dict[str, str] = {}
    if config.predictions.format == "jsonl":
        for m in models:
            for f in m.logged_columns:
                parent = f.source.rpartition(".")[0]
                if parent and parent not in parents:
                    parents[parent] = f"obj_{len(parents)}"
                    fields.append(Field(parents[parent], parent, TEXT, label=parent, object=True))
    # Model ids are looked up in a staging table, not a literal list: with hundreds of models a literal list
    # made each file's query slow to plan.
    known = "(SELECT model_id FROM known_models)"
    rules = [("latency_ms < 0", "'out of range: latency_ms=' || latency_ms || ' is negative'")]
    if constant_model is None:  # else model_id is the file's model
        rules.append((f"model_id NOT IN {known}", "'unknown model_id: ' || model_id"))
    if constant_model is not None and src["model_id"]:
        # A per-model file may still log model_id (optional): it must be that model.
        fields.append(Field("logged_model_id", src["model_id"], TEXT, optional=True, label=src["model_id"]))
        rules += [(f"logged_model_id NOT IN {known}", "'unknown model_id: ' || logged_model_id"),
                  (f"logged_model_id <> {sql_str(constant_model)}",
                   f"'model_id mismatch: ' || logged_model_id || ' logged in a file of ' || {sql_str(constant_model)}")]
    if len(models) < len(config.models):  # a model with files of its own is not read from the shared ones
        mine = ", ".join(sql_str(m.id) for m in models) or "NULL"
        rules.append((f"model_id NOT IN ({mine})",
                      "'model_id ' || model_id || ' is read from its own files (sources.predictions.path {model})'"))
    proba = {m.id: probabilities_sql(m.classes, "probabilities") for m in multiclass}
    for m in models:
        in_model = f"model_id = {sql_str(m.id)}"
        if m.is_multiclass:
            rules += multiclass_rules(m, in_model, is_ok, src["decision"] or "decision",
                                      src.get("probabilities") or "probabilities", proba[m.id])
        score = score_aliases.get(m.score_field, "NULL")
        rules.append((f"{in_model} AND NOT {str(m.is_multiclass).lower()} AND {is_ok} AND {score} IS NULL",
                      f"'missing required field: ' || {sql_str(m.score_field)} || ' (status is ok)'"))
        if m.is_classifier:
            rules.append((f"{in_model} AND {score} NOT BETWEEN 0 AND 1",
                          f"'out of range: ' || {sql_str(m.score_field)} || '=' || {score} || ' is outside [0, 1]'"))
        for parent in dict.fromkeys(f.source.rpartition(".")[0] for f in m.logged_columns):
            if parent in parents:
                obj = parents[parent]
                rules.append((f"{in_model} AND {obj} IS NOT NULL AND {obj} <> 'OBJECT'",
                              f"'bad features: ' || {sql_str(parent)} || ' is ' || CASE {obj} WHEN 'NULL' THEN 'null' "
                              f"WHEN 'VARCHAR' THEN 'a string' WHEN 'ARRAY' THEN 'an array' ELSE lower({obj}) END "
                              "|| ', expected an object'"))
        for f in m.features:
            if f.allowed_values:
                allowed = ", ".join(sql_str(v) for v in f.allowed_values)
                alias = feature_aliases[(f.source, f.type)]
                rules.append((f"{in_model} AND {alias} IS NOT NULL AND {alias} NOT IN ({allowed})",
                              f"'unknown category: ' || {sql_str(f.name)} || '=' || {alias}"))
    codes = {m.id: class_code_sql(m.classes, "decision", proba[m.id]) for m in multiclass}
    score_case = " ".join(f"WHEN {sql_str(m.id)} THEN "
                          + (f"{proba[m.id]}[({codes[m.id]})::BIGINT + 1]" if m.is_multiclass
                             else score_aliases[m.score_field]) for m in models)
    # A multiclass model's decision is its predicted class's name as configured (logged, or the most probable).
    decision = ("CASE model_id " + " ".join(f"WHEN {sql_str(m.id)} THEN {classes_sql(m.classes)}[({codes[m.id]})::BIGINT + 1]"
                                           for m in multiclass) + " ELSE decision END") if multiclass else "decision"
    # The staging table keeps each distinct (field, type) once, as feat_<i>; every model's table gets its
    # own features from them, in columns named after the field (see feature_columns).
    outputs = ["model_id", "prediction_id", "ts", "model_version", "latency_ms", "status", is_ok,
               f"CASE model_id {score_case or 'WHEN NULL THEN NULL'} END", "source_file", "line_no", decision,
               *feature_aliases.values()]
    targets = [*PREDICTION_COLUMNS, *feature_aliases.values()]
    if multiclass:
        outputs += ["CASE model_id " + " ".join(f"WHEN {sql_str(m.id)} THEN {codes[m.id]}" for m in multiclass) + " END",
                    "CASE model_id " + " ".join(f"WHEN {sql_str(m.id)} THEN {proba[m.id]}" for m in multiclass) + " END"]
        targets += list(MULTICLASS_STAGE)
    return StagingPlan("predictions", fields, rules, key="prediction_id", outputs=outputs, targets=targets,
                       unique_across_days=True, feature_aliases=feature_aliases,
                       known_models=tuple(config.known_model_ids))


LABEL_TEXT = "label_text"  # staging only: a label as logged, before check_labels types it


def labels_plan(config: MonitorConfig) -> StagingPlan:
    src = config.labels.fields
    # With a multiclass model, a label may be a class name: it is read as text and typed after it is matched
    # to its prediction (`labels.check_labels`: a class code for a multiclass model, a number for the others).
    # A shard reads every model's labels: as text too when a model of another shard is multiclass, as numbers
    # otherwise (as one unsharded run would: the same rows, the same quarantine records).
    named = config.fleet_has_multiclass or any(m.is_multiclass for m in config.models)
    fields = [Field("prediction_id", src["prediction_id"], TEXT, True),
              Field("label", src["label"], TEXT if named else NUMBER, True)]
    # model_id and prediction_date are filled from the matching prediction after loading.
    outputs = ["NULL", "prediction_id", "NULL", "NULL" if named else "label", "source_file", "line_no"]
    return StagingPlan("labels", fields, [], key="prediction_id",
                       outputs=outputs + (["label"] if named else []),
                       targets=(["partition_date", "model_id", "prediction_id", "prediction_date", "label",
                                 "source_file", "line_no", LABEL_TEXT] if named else []))


def interactions_plan(source: SourceConfig) -> StagingPlan:
    s = source.fields
    return StagingPlan("interactions", [
        Field("session_id", s["session_id"], TEXT, True), Field("user_id", s["user_id"]),
        Field("ts", s["timestamp"], TIME, True), Field("event", s["event"], TEXT, True),
        Field("product_id", s["product_id"]), Field("from_recommendation", s["from_recommendation"]),
    ], outputs=["session_id", "user_id", "ts", "event", "product_id", "TRY_CAST(from_recommendation AS BOOLEAN)"])


def sales_plan(source: SourceConfig) -> StagingPlan:
    s = source.fields
    return StagingPlan("sales", [
        Field("order_id", s["order_id"], TEXT, True), Field("ts", s["timestamp"], TIME, True),
        Field("user_id", s["user_id"]), Field("product_id", s["product_id"]),
        Field("quantity", s["quantity"], NUMBER, True), Field("unit_price", s["unit_price"], NUMBER, True),
    ], [("quantity < 0", "'out of range: quantity=' || quantity || ' is negative'"),
        ("unit_price < 0", "'out of range: unit_price=' || unit_price || ' is negative'")],
        outputs=["order_id", "ts", "user_id", "product_id", "quantity", "unit_price", "quantity * unit_price"])


def plan_for(config: MonitorConfig, source: str) -> tuple[SourceConfig, StagingPlan]:
    if source == "predictions":
        return config.predictions, predictions_plan(config)
    if source == "labels":
        return config.labels, labels_plan(config)
    if source == "interactions" and config.interactions:
        return config.interactions, interactions_plan(config.interactions)
    if source == "sales" and config.sales:
        return config.sales, sales_plan(config.sales)
    raise ValueError(f"unknown or unconfigured source {source!r}")
