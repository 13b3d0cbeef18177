import pytest

from monitor_assets.config import ConfigError, load_config

from .conftest import write

BASE = """
partitions: {start_date: 2026-01-01, end_date: 2026-01-03}
sources:
  predictions: {path: "preds/{date}.csv", fields: {score: proba}}
  labels: {path: "labels/{date}.csv"}
models:
  - id: churn
    task: binary_classification
    reference: ref.parquet
    features: {tenure: numeric, plan: categorical}
    sensitive_attributes: [region]
"""


def test_demo_config_loads_every_model():
    config = load_config()
    assert [m.id for m in config.models] == ["fraud_detector", "purchase_propensity", "demand_forecaster",
                                             "product_categoriser"]
    assert config.model("product_categoriser").classes == ("electronics", "fashion", "home", "beauty", "toys")
    assert config.model("demand_forecaster").score_field == "prediction"
    assert config.predictions.paths_for(config.start_date).endswith("2026-10-01/*.jsonl.gz")


def test_tabular_sources_map_columns_and_default_feature_sources(tmp_path):
    config = load_config(write(tmp_path / "m.yaml", BASE))
    model = config.models[0]
    assert config.predictions.format == "csv"
    assert config.predictions.fields["score"] == "proba"
    assert [f.source for f in model.features] == ["tenure", "plan"]  # columns, not JSON paths
    assert model.sensitive_attributes[0].type == "categorical"
    assert model.reference_path == str(tmp_path / "ref.parquet")


@pytest.mark.parametrize("change, key, expected", [
    (("task: binary_classification", "task: clustering"), "models[0].task", "expected one of"),
    # Predictions may span days (split by timestamp); labels are partitioned by the day they arrive.
    (("labels/{date}.csv", "labels/all.csv"), "sources.labels.path", "{date} placeholder"),
    (("end_date: 2026-01-03", "end_date: 2025-01-03"), "partitions.end_date", "on or after"),
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\n    thresholds: {error_rate: 3}"),
     "models[0].thresholds.error_rate", "in [0, 1]"),
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\n    retraining: {shift_se: 0.1}"),
     "models[0].retraining.shift_se", "in [0.5, 50]"),
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\n    colour: blue"),
     "models[0].colour", "unknown key"),
    (("plan: categorical", "plan: {type: categorical, drift_method: ks}"),
     "models[0].features.plan.drift_method", "needs a numeric feature"),
    (("  - id: churn", "  - id: \"churn; DROP TABLE x\""), "models[0].id", "expected letters"),
    # A typo in a channel option must stop the config, not send a password in clear text.
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\nalerts:\n  channels:\n    mail: "
      "{type: email, host: smtp.example, to: [a@b.c], startls: true, password_env: SMTP_PASSWORD}"),
     "alerts.channels.mail.startls", "unknown key"),
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\nalerts: {give_up_hours: -1}"),
     "alerts.give_up_hours", "expected"),
    # Security holes of the first release's config (issue "Statistics and checks that hold…", point 9).
    (("preds/{date}.csv", "../../../../etc/passwd{date:*}"), "sources.predictions.path", "expected a path inside"),
    (("reference: ref.parquet", "reference: /etc/ref.parquet"), "models[0].reference", "allow_outside_paths"),
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\n    thresholds: {error_rate: .nan}"),
     "models[0].thresholds.error_rate", "expected a finite number"),
    (("start_date: 2026-01-01", "start_date: 2026-13-01"), "partitions.start_date", "expected a date YYYY-MM-DD"),
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\nalerts:\n  channels:\n    f: "
      "{type: file, path: 'https://hooks.slack.com/services/T0/B0/abc'}"), "alerts.channels.f.path", "looks like a secret"),
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\nalerts:\n  channels:\n    s: "
      "{type: slack, webhook: x}"), "alerts.channels.s.webhook", "did you mean 'webhook_url_env'?"),
    (("sensitive_attributes: [region]", "sensitive_attributes: [region]\nalerts:\n  channels:\n    m: "
      "{type: email, host: smtp.example, to: [a@b.c], username_env: U, password_env: P}"),
     "alerts.channels.m", "refuses to send a password over plain text"),
])
def test_bad_config_names_file_key_and_expectation(tmp_path, change, key, expected):
    path = write(tmp_path / "bad.yaml", BASE.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key
    assert expected in err.value.problem
    assert str(path) in str(err.value)


def test_missing_required_key_and_secret_in_file_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="models: is required"):
        load_config(write(tmp_path / "a.yaml", BASE.split("models:")[0]))
    secret = BASE + "alerts:\n  channels:\n    slack: {webhook_url: 'https://hooks.example/x'}\n"
    with pytest.raises(ConfigError, match="environment variable"):
        load_config(write(tmp_path / "b.yaml", secret))


def test_plain_text_smtp_auth_needs_an_explicit_opt_in_and_paths_expand_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret-value")
    text = BASE.replace("preds/{date}.csv", "preds/$SMTP_PASSWORD/{date}.csv") + (
        "alerts:\n  channels:\n    m: {type: email, host: smtp.example, to: [a@b.c], username_env: U, "
        "password_env: P, allow_insecure: true}\n")
    config = load_config(write(tmp_path / "ok.yaml", text))
    assert config.channels["m"].options["allow_insecure"] is True
    assert "$SMTP_PASSWORD" in config.predictions.path and "s3cret" not in config.predictions.path
    outside = load_config(write(tmp_path / "out.yaml", "allow_outside_paths: true\n"
                                + BASE.replace("reference: ref.parquet", "reference: /srv/ref.parquet")))
    assert outside.models[0].reference_path == "/srv/ref.parquet"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    import time

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = write(tmp_path / "bomb.yaml", BASE + "\n".join(levels) + "\n")
    began = time.monotonic()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(path)
    assert time.monotonic() - began < 2


def test_main_metric_defaults_by_task_and_is_checked_against_the_task(tmp_path):
    config = load_config(write(tmp_path / "m.yaml", BASE))
    assert config.models[0].main_metric == "roc_auc"
    assert config.min_group_size == 30 and config.models[0].thresholds.equalized_odds_difference == 0.1
    assert config.predictions.fields["decision"] == "decision"  # optional: read when the logs have it
    chosen = load_config(write(tmp_path / "a.yaml", BASE.replace("task: binary_classification",
                                                                "task: binary_classification\n    main_metric: f1")))
    assert chosen.models[0].main_metric == "f1"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "b.yaml", BASE.replace("task: binary_classification",
                                                            "task: binary_classification\n    main_metric: mape")))
    assert err.value.key == "models[0].main_metric" and "expected one of accuracy, f1" in err.value.problem
    regressor = load_config(write(tmp_path / "c.yaml", BASE.replace("binary_classification", "regression")))
    assert regressor.models[0].main_metric == "mae"


def test_demo_uses_the_library_defaults_for_group_size_and_equalized_odds():
    config = load_config()
    assert config.min_group_size == 30
    assert {m.thresholds.equalized_odds_difference for m in config.models} == {0.1}


MODEL_END = "sensitive_attributes: [region]"
EMAIL = MODEL_END + "\nalerts:\n  channels:\n    mail: {type: email, host: smtp.example, to: [a@b.c], %s}"


@pytest.mark.parametrize("change, message", [
    # A typo under any mapping is refused: `end_dat` had silently run up to today (65 days instead of 2).
    (("end_date: 2026-01-03", "end_dat: 2026-01-03"),
     "partitions.end_dat: unknown key; did you mean 'end_date'? expected one of end_date, start_date"),
    ((MODEL_END, MODEL_END + "\nanomalies: {window_day: 7}"),
     "anomalies.window_day: unknown key; did you mean 'window_days'? expected one of threshold, window_days"),
    ((MODEL_END, MODEL_END + "\nfairness: {min_group_size: 2.7}"),
     "fairness.min_group_size: expected an integer, got 2.7"),
    ((MODEL_END, MODEL_END + "\nfairness: {min_group_size: 0}"),
     "fairness.min_group_size: expected an integer >= 1, got 0"),
    ((MODEL_END, MODEL_END + "\nanomalies: {window_days: 7.5}"), "anomalies.window_days: expected an integer, got 7.5"),
    ((MODEL_END, MODEL_END + "\n    version: {a: 1}"), "models[0].version: expected a string or number, got a mapping"),
    ((MODEL_END, MODEL_END + "\n    owner: [a, b]"), "models[0].owner: expected a string or number, got a list"),
    ((MODEL_END, MODEL_END + "\n    reference_fields: {lable: y}"),
     "models[0].reference_fields.lable: unknown key; did you mean 'label'? expected one of decision, label, score"),
    (("fields: {score: proba}", "fields: {scroe: proba}"),
     "sources.predictions.fields.scroe: unknown key; did you mean 'score'? expected one of decision, latency_ms, "
     "model_id, model_version, prediction_id, probabilities, score, status, timestamp"),
    (('labels/{date}.csv"}', 'labels/{date}.csv", allow_empty: "yes"}'),
     "sources.labels.allow_empty: expected true or false, got 'yes'"),
    # E-mail settings fail at load, not when the first alert is sent.
    ((MODEL_END, EMAIL % "port: abc"), "alerts.channels.mail.port: expected an integer, got 'abc'"),
    ((MODEL_END, EMAIL % "port: 70000"), "alerts.channels.mail.port: expected an integer in [1, 65535], got 70000"),
    ((MODEL_END, EMAIL % "timeout: -5"), "alerts.channels.mail.timeout: expected seconds in (0, 120], got -5"),
    ((MODEL_END, EMAIL % "timeout: 3600"), "alerts.channels.mail.timeout: expected seconds in (0, 120], got 3600"),
    ((MODEL_END, EMAIL % "starttls: 'no'"), "alerts.channels.mail.starttls: expected true or false, got 'no'"),
    # Two features read from one column failed deep in storage ("duplicate qualified field name").
    (("plan: categorical}", "plan: categorical, tier: {type: categorical, source: plan}}"),
     "models[0].features.tier: reads the same categorical field 'plan' as models[0].features.plan; a model reads "
     "each field once (remove one, or set a different `source:`)"),
    ((MODEL_END, "sensitive_attributes: [plan]"),
     "models[0].sensitive_attributes.plan: reads the same categorical field 'plan' as models[0].features.plan; "
     "a model reads each field once (remove one, or set a different `source:`)"),
])
def test_strict_values_are_refused_with_one_exact_line(tmp_path, change, message):
    assert change[0] in BASE
    path = write(tmp_path / "bad.yaml", BASE.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("section, typo, suggestion", [("drift", "dataset_drift", "dataset_drift_share"),
                                                        ("fairness", "min_group", "min_group_size")])
def test_unknown_keys_of_other_sections_suggest_the_closest(tmp_path, section, typo, suggestion):
    path = write(tmp_path / "bad.yaml", BASE + f"{section}: {{{typo}: 1}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == f"{section}.{typo}"
    assert err.value.problem.startswith(f"unknown key; did you mean {suggestion!r}? expected one of ")


def test_valid_values_still_load_and_allow_empty_defaults_to_false(tmp_path):
    text = BASE.replace(MODEL_END, EMAIL % "port: 587, timeout: 2.5, starttls: true") + (
        "\nfairness: {min_group_size: 50}\n").replace(MODEL_END, "")
    text = text.replace("    features:", "    version: 2026.1\n    features:")
    config = load_config(write(tmp_path / "ok.yaml", text))
    assert config.min_group_size == 50 and config.models[0].version == "2026.1"
    assert config.channels["mail"].options["port"] == 587
    assert (config.predictions.allow_empty, config.labels.allow_empty) == (False, False)


def test_own_configs_get_their_own_warehouse_and_reports(tmp_path, monkeypatch):
    from monitor_assets.config import DEMO_CONFIG, REPO_ROOT, location_key

    for var in ("MONITOR_CONFIG", "MONITOR_WAREHOUSE", "MONITOR_LAKE", "MONITOR_REPORTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    demo = load_config(DEMO_CONFIG)
    assert demo.warehouse_path == str(REPO_ROOT / "warehouse" / "monitor.duckdb")
    assert demo.reports_dir == str(REPO_ROOT / "reports")
    mine = load_config(write(tmp_path / "mine.yaml", BASE))
    other = load_config(write(tmp_path / "elsewhere" / "mine.yaml", BASE))
    key = location_key(mine.file)
    assert key.startswith("mine-") and len(key) == len("mine-") + 8 and key != location_key(other.file)
    assert mine.warehouse_path == str(REPO_ROOT / "warehouse" / key / "monitor.duckdb")
    assert mine.lake_path == str(REPO_ROOT / "warehouse" / key / "monitor_lake")
    assert mine.state_path == str(REPO_ROOT / "warehouse" / key / "monitor_state.sqlite")
    assert mine.reports_dir == str(REPO_ROOT / "reports" / key)
    # None of the demo's files is shared, and the environment and the config's own keys still win.
    assert {mine.warehouse_path, mine.lake_path, mine.state_path, mine.reports_dir}.isdisjoint(
        {demo.warehouse_path, demo.lake_path, demo.state_path, demo.reports_dir})
    monkeypatch.setenv("MONITOR_WAREHOUSE", str(tmp_path / "wh.duckdb"))
    assert load_config(mine.file).warehouse_path == str(tmp_path / "wh.duckdb")
    keyed = load_config(write(tmp_path / "k.yaml", f"reports_dir: {tmp_path}/r\n" + BASE))
    assert keyed.reports_dir == str(tmp_path / "r")


def test_estimation_is_on_by_default_checked_by_task_and_refuses_unknown_keys(tmp_path):
    model = load_config(write(tmp_path / "e.yaml", BASE)).models[0]
    assert model.estimation.enabled and model.estimation_method == "confidence"
    assert model.estimated_metrics[0] == "roc_auc" and "specificity" in model.estimated_metrics
    chosen = load_config(write(tmp_path / "f.yaml", BASE.replace(
        "task: binary_classification", "task: binary_classification\n    main_metric: f1\n"
        "    estimation: {method: confidence, metrics: [accuracy]}"))).models[0]
    assert chosen.estimated_metrics == ("f1", "accuracy")  # the main metric always comes first
    off = load_config(write(tmp_path / "g.yaml", BASE.replace(
        "task: binary_classification", "task: binary_classification\n    estimation: {enabled: false}"))).models[0]
    assert off.estimation_method == "none"
    regressor = load_config(write(tmp_path / "h.yaml", BASE.replace("binary_classification", "regression"))).models[0]
    assert regressor.estimation_method == "loss_model_reweighted" and regressor.estimated_metrics == ("mae", "rmse")
    for change, key in (("estimation: {metod: auto}", "models[0].estimation.metod"),
                        ("estimation: {method: loss_model}", "models[0].estimation.method"),
                        ("estimation: {metrics: [mae]}", "models[0].estimation.metrics[0]"),
                        ("estimation: {enabled: yes please}", "models[0].estimation.enabled")):
        with pytest.raises(ConfigError) as err:
            load_config(write(tmp_path / "x.yaml", BASE.replace(
                "task: binary_classification", f"task: binary_classification\n    {change}")))
        assert err.value.key == key, change


def test_shards_from_the_config_or_the_environment_which_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("MONITOR_SHARDS", raising=False)
    assert load_config(write(tmp_path / "one.yaml", BASE)).shard_count == 1
    path = write(tmp_path / "three.yaml", BASE + "shards: 3\n")
    assert load_config(path).shard_count == 3
    monkeypatch.setenv("MONITOR_SHARDS", "8")
    assert load_config(path).shard_count == 8
    for bad, key in (("0", "$MONITOR_SHARDS"), ("two", "$MONITOR_SHARDS")):
        monkeypatch.setenv("MONITOR_SHARDS", bad)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value) == f"{path}: {key}: expected a whole number of shards in [1, 1000], got {bad!r}"
    monkeypatch.delenv("MONITOR_SHARDS")
    bad_path = write(tmp_path / "bad.yaml", BASE + "shards: 2.5\n")
    with pytest.raises(ConfigError, match=r"shards: expected a whole number of shards in \[1, 1000\], got 2.5"):
        load_config(bad_path)
