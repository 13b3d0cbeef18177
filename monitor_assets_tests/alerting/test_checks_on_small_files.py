"""The checks of issue 10 on small files made here, through the whole pipeline: each case asserts the
figure (against scikit-learn / scipy / hand counts) or the clear message, never a silent NULL."""

import json
import time

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_percentage_error, roc_auc_score

from monitor_assets.alerting import rules as A
from monitor_assets.config import ConfigError, load_config
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import CSV_WORLD, run_job, write

DAYS = pd.date_range("2025-06-01", periods=3, freq="D")
N = 300  # rows a day per model
WEIRD = {"unit.price": "numeric", "it's": "categorical", "größe": "numeric", 'say "hi"': "categorical"}


def _shop_day(rng, i: int, day) -> tuple[pd.DataFrame, np.ndarray]:
    """A classifier's day. Groups A and B are selected at the same rate (0.5) but B's errors differ:
    TPR 0.9 vs 0.55, FPR 0.1 vs 0.45 (equalized odds difference 0.35); one customer in group 'solo'
    is never selected. `const` is 5 in the reference (5000 on day 3), `amount` all missing on day 2,
    `colour` all unseen categories on day 3."""
    grp = np.array(["A"] * 150 + ["B"] * 149 + ["solo"])
    y = np.tile([0, 1], N // 2)
    tpr, fpr = np.where(grp == "A", 0.9, 0.55), np.where(grp == "A", 0.1, 0.45)
    pred = (rng.random(N) < np.where(y == 1, tpr, fpr)).astype(int)
    pred[grp == "solo"] = 0
    frame = pd.DataFrame({
        "request_id": [f"s{i}-{k}" for k in range(N)],
        "ts": f"{day:%Y-%m-%d} 12:00:00", "proba": np.where(pred == 1, 0.8, 0.2) + rng.normal(0, 0.05, N),
        "amount": rng.normal(100, 20, N).round(2) if i != 1 else np.nan,
        "const": 5.0 if i != 2 else 5000.0,
        "colour": rng.choice(["red", "blue"], N) if i != 2 else rng.choice(["x1", "x2"], N),
        "grp": grp,
    })
    return frame, y


def _demand_day(rng, i: int, day) -> tuple[pd.DataFrame, np.ndarray]:
    """A regressor whose feature and attribute names have '.', quotes, spaces and unicode; 10% of its
    labels are 0 (MAPE must leave them out)."""
    units = rng.poisson(20, N).astype(float)
    units[:30] = 0.0
    frame = pd.DataFrame({
        "request_id": [f"d{i}-{k}" for k in range(N)], "ts": f"{day:%Y-%m-%d} 12:00:00",
        "proba": (units + rng.normal(0, 3, N)).round(2),
        "unit.price": rng.gamma(4, 5, N).round(2), "it's": rng.choice(["yes", "no"], N),
        "größe": rng.normal(50, 5, N).round(1), 'say "hi"': rng.choice(["a", "b", "c"], N),
        "home region": rng.choice(["north", "süd"], N),
    })
    return frame, units


def _reference(rng, n: int = 600) -> tuple[pd.DataFrame, pd.DataFrame]:
    grp = rng.choice(["A", "B"], n)
    y = rng.integers(0, 2, n)
    shop = pd.DataFrame({"proba": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1), "label": y.astype(float),
                         "amount": rng.normal(100, 20, n), "const": 5.0, "colour": rng.choice(["red", "blue"], n),
                         "grp": grp})
    # Broken rows a real reference has: NaN and NULL labels, NaN and NULL scores.
    shop.loc[:4, "label"] = np.nan
    shop.loc[5:7, "proba"] = np.nan
    shop["label"] = shop["label"].astype(object)
    shop.loc[8:9, "label"] = None
    units = rng.poisson(20, n).astype(float)
    demand = pd.DataFrame({"proba": units + rng.normal(0, 3, n), "label": units,
                           "unit.price": rng.gamma(4, 5, n), "it's": rng.choice(["yes", "no"], n),
                           "größe": rng.normal(50, 5, n), 'say "hi"': rng.choice(["a", "b", "c"], n),
                           "home region": rng.choice(["north", "süd"], n)})
    return shop, demand


CONFIG = """
partitions: {{start_date: 2025-06-01, end_date: 2025-06-03}}
label_delay_days: 0
""" + CSV_WORLD + """models:
  - id: shop
    task: binary_classification
    reference: shop.parquet
    reference_fields: {{score: proba}}
    features: {{amount: numeric, const: numeric, colour: categorical}}
    sensitive_attributes: [grp]
  - id: demand
    task: regression
    main_metric: mape
    reference: demand.parquet
    reference_fields: {{score: proba}}
    features: {{"unit.price": numeric, "it's": categorical, "größe": numeric, 'say "hi"': categorical}}
    sensitive_attributes: ["home region"]
"""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("small_files")
    rng = np.random.default_rng(3)
    days = {}
    for i, day in enumerate(DAYS):
        shop, y_shop = _shop_day(rng, i, day)
        demand, y_demand = _demand_day(rng, i, day)
        for name, frame in (("shop", shop), ("demand", demand)):
            write(tmp / "export" / f"{day:%Y-%m-%d}" / f"{name}.csv", frame.to_csv(index=False))
        truth = pd.DataFrame({"request_id": list(shop.request_id) + list(demand.request_id),
                              "y": list(y_shop) + list(y_demand)})
        truth.to_csv(write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", ""), index=False)
        days[day.date()] = (shop, y_shop, demand, y_demand)
    shop_ref, demand_ref = _reference(rng)
    shop_ref.to_parquet(tmp / "shop.parquet")
    demand_ref.to_parquet(tmp / "demand.parquet")
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    result = run_job(config, "2025-06-01", "2025-06-03")
    assert result.success
    con = open_warehouse(config.warehouse_path, read_only=True)
    evaluated = A.evaluate(con, config, list(days))
    yield config, result, con, days, (shop_ref, demand_ref), evaluated
    con.close()


def _drift(con, model, feature, day):
    return con.execute("SELECT * FROM monitoring.feature_drift WHERE model_id = ? AND feature = ? "
                       "AND partition_date = ?", [model, feature, day]).df().iloc[0]


def test_reference_rows_without_a_usable_label_or_score_are_counted_left_out_and_warned(small_run):
    _, result, con, _, (shop_ref, _), _ = small_run
    usable = shop_ref[pd.to_numeric(shop_ref.label, errors="coerce").notna() & shop_ref.proba.notna()]
    assert len(usable) == 600 - 7 - 3  # 7 labels NaN or NULL, 3 scores NaN
    # The baseline is the clean rows' figure (NaN scores no longer distort it, NaN labels no longer crash).
    base = con.execute("SELECT value FROM monitoring.reference_baselines WHERE model_id = 'shop' "
                       "AND metric = 'roc_auc'").fetchone()[0]
    assert abs(base - roc_auc_score(usable.label.astype(int), usable.proba)) < 1e-12
    n_ref = con.execute("SELECT n FROM monitoring.reference_profiles WHERE model_id = 'shop' AND feature = 'label'"
                        ).fetchone()[0]
    assert n_ref == len(usable)
    meta = next(m for m in result.asset_materializations_for_node("monitoring__reference_profiles"))
    assert meta.metadata["reference_rows_left_out"].value == 10
    warning = meta.metadata["reference_warnings"].value
    assert "shop" in warning and "10 of 600 reference rows left out" in warning
    assert "7 with a label that is missing, NaN or not 0 or 1" in warning and "3 with a score" in warning
    # NULL reference labels do not look like label drift: the label is as in the reference every day.
    assert not any(con.execute("SELECT label_drift FROM monitoring.drift_summary WHERE model_id = 'shop'"
                               ).df().label_drift)


def test_constant_reference_all_missing_and_all_unseen_are_flagged_and_said(small_run):
    _, _, con, _, _, evaluated = small_run
    d1, d2, d3 = (d.date() for d in DAYS)
    const = _drift(con, "shop", "const", d3)
    assert const.method == "constant" and const.drifted and const.statistic == 1.0
    assert "reference is constant at 5" in const.message and "mean 5000" in const.message
    assert not _drift(con, "shop", "const", d1).drifted
    amount = _drift(con, "shop", "amount", d2)
    assert amount.all_missing and amount.missing_share == 1.0 and amount.missing_drift
    assert amount.message.startswith(f"all {N} values are missing")
    colour = _drift(con, "shop", "colour", d3)
    assert colour.all_unseen and colour.unseen_share == 1.0 and colour.drifted and colour.unseen_drift
    assert "categories the reference never saw" in colour.message
    checks = evaluated[(evaluated.model_id == "shop") & (evaluated.check_name == A.FEATURE_VALUES)]
    by_day = {r.partition_date: r for r in checks.itertuples()}
    assert by_day[d1].passed and not by_day[d2].passed and not by_day[d3].passed
    assert "amount: all 300 values are missing" in by_day[d2].message
    assert "colour: all 300 values are categories the reference never saw" in by_day[d3].message
    assert json.loads(by_day[d3].details)["features"][0]["feature"] == "colour"
    alerts = set(con.execute("SELECT partition_date, check_name FROM monitoring.alerts WHERE model_id = 'shop' "
                             "AND status = 'open'").fetchall())
    assert {(d2, A.FEATURE_VALUES), (d3, A.FEATURE_VALUES)} <= alerts and (d1, A.FEATURE_VALUES) not in alerts


def test_fairness_names_eligible_groups_and_alerts_on_equalized_odds(small_run):
    _, _, con, days, _, evaluated = small_run
    fair = evaluated[(evaluated.model_id == "shop")]
    parity = fair[fair.check_name == A.FAIRNESS]
    odds = fair[fair.check_name == A.EQUALIZED_ODDS]
    assert len(parity) == 3 and parity.passed.all()  # A and B are selected alike; 'solo' (n=1) is not eligible
    assert not parity.message.str.contains("solo").any()
    assert parity.message.str.contains(r"n=1[45]\d\)").all()
    assert len(odds) == 3 and not odds.passed.any()
    for r in odds.itertuples():
        shop, y, _, _ = days[r.partition_date]
        rows = shop.assign(y=y, pred=(shop.proba >= 0.5).astype(int))
        rates = {g: (part[part.y == 1].pred.mean(), part[part.y == 0].pred.mean()) for g, part in rows.groupby("grp")
                 if g != "solo"}
        gap = max(abs(rates["A"][0] - rates["B"][0]), abs(rates["A"][1] - rates["B"][1]))
        assert abs(r.value - gap) < 1e-12 and gap > 0.2
        assert "'solo'" not in r.message and "'A'" in r.message and "'B'" in r.message
        assert "labelled" in r.message and "equalized odds difference" in r.message


def test_mape_leaves_out_zero_labels_and_says_how_many(small_run):
    _, _, con, days, _, evaluated = small_run
    perf = con.execute("SELECT partition_date, mape, mape_zero_labels, main_metric_value FROM "
                       "monitoring.performance_daily WHERE model_id = 'demand' ORDER BY 1").df()
    for r in perf.itertuples():
        _, _, demand, y = days[r.partition_date.date()]
        keep = y != 0
        assert r.mape_zero_labels == 30 and r.main_metric_value == r.mape
        assert abs(r.mape - mean_absolute_percentage_error(y[keep], demand.proba[keep])) < 1e-12
    checks = evaluated[(evaluated.model_id == "demand") & (evaluated.check_name == A.PERFORMANCE)]
    assert len(checks) == 3 and checks.message.str.contains("30 zero labels left out of MAPE").all()


def test_names_with_dots_quotes_spaces_and_unicode_are_read_not_nulled(small_run):
    config, _, con, days, _, _ = small_run
    d1 = DAYS[0].date()
    for feature in ["unit.price", "it's", "größe", 'say "hi"']:
        row = _drift(con, "demand", feature, d1)
        assert row.n_current == N and row.missing_share == 0.0 and not row.all_missing, feature
    demand = days[d1][2]
    got = con.execute("SELECT grp, n FROM monitoring.fairness WHERE model_id = 'demand' AND partition_date = ? "
                      "ORDER BY grp", [d1]).fetchall()
    assert got == sorted(demand["home region"].value_counts().items())
    mean = con.execute(f"""SELECT avg({'"unit.price"'}) FROM raw."predictions__demand" WHERE partition_date = ?""",
                       [d1]).fetchone()[0]
    assert abs(mean - demand["unit.price"].mean()) < 1e-9


def test_a_dot_in_a_json_feature_name_is_refused_at_config_load(tmp_path):
    text = CONFIG.format(tmp=tmp_path).replace("export/{date}/{model}.csv", "export/{date}/{model}.jsonl")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "m.yaml", text))
    assert err.value.key == "models[1].features.unit.price"
    assert "nested path (features.unit.price)" in err.value.problem and "source:" in err.value.problem


def test_a_reference_too_small_is_recorded_for_that_model_the_others_are_analysed_without_retries(tmp_path):
    """A deterministic error in one model's reference is not retried and does not stop the others: one
    attempt, the reason (naming model and file) recorded for that model and failing its drift check, the
    other model analysed as usual."""
    rng = np.random.default_rng(5)
    shop, y = _shop_day(rng, 0, DAYS[0])
    write(tmp_path / "export" / "2025-06-01" / "shop.csv", shop.to_csv(index=False))
    write(tmp_path / "export" / "2025-06-01" / "demand.csv", _demand_day(rng, 0, DAYS[0])[0].to_csv(index=False))
    pd.DataFrame({"request_id": shop.request_id, "y": y}).to_csv(write(tmp_path / "truth" / "2025-06-01.csv", ""),
                                                                 index=False)
    shop_ref, demand_ref = _reference(rng)
    shop_ref.head(1).to_parquet(tmp_path / "shop.parquet")  # one row: no baseline
    demand_ref.to_parquet(tmp_path / "demand.parquet")
    config = load_config(write(tmp_path / "monitor.yaml", CONFIG.format(tmp=tmp_path)))
    instance = dg.DagsterInstance.ephemeral()
    start = time.monotonic()
    result = run_job(config, "2025-06-01", instance=instance, raise_on_error=False)
    assert result.success and time.monotonic() - start < 60
    events = result.all_events
    step = "monitoring__reference_profiles"
    assert len([e for e in events if e.step_key == step and e.event_type_value == "STEP_START"]) == 1
    assert not [e for e in events if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_FAILURE")]
    meta = next(iter(result.asset_materializations_for_node(step))).metadata
    assert meta["reference_errors"].value == 1
    assert f"model shop: reference {tmp_path / 'shop.parquet'}: only 0 usable rows of 1" in \
        meta["reference_error_details"].value
    con = open_warehouse(config.warehouse_path, read_only=True)
    try:
        summary = dict(con.execute("SELECT model_id, analysis_error FROM monitoring.drift_summary").fetchall())
        assert summary["demand"] is None
        assert summary["shop"].startswith("no reference profile: ReferenceError: model shop: reference ")
        assert "at least 100 are needed" in summary["shop"] and "\n" not in summary["shop"]
        assert con.execute("SELECT count(*) FROM monitoring.feature_drift WHERE model_id = 'demand'").fetchone()[0] == 5
        assert con.execute("SELECT count(*) FROM monitoring.feature_drift WHERE model_id = 'shop'").fetchone()[0] == 0
        evaluated = A.evaluate(con, config, [DAYS[0].date()])
    finally:
        con.close()
    drift = evaluated[evaluated.check_name == A.DRIFT].set_index("model_id")
    assert not drift.loc["shop"].passed and drift.loc["shop"].severity == "ERROR"
    assert drift.loc["shop"].message == summary["shop"] and drift.loc["demand"].passed


def test_drift_p_values_are_controlled_across_a_model_days_features(small_run):
    """At 300 rows a day the drift tests are p-value tests; their flags use Benjamini-Hochberg across the
    model-day's features and output, exactly scipy's `false_discovery_control`."""
    from scipy.stats import false_discovery_control

    _, _, con, _, _, _ = small_run
    rows = con.execute("""SELECT partition_date, feature, p_value, p_value_adjusted, threshold, drifted FROM
                          monitoring.feature_drift WHERE model_id = 'demand' AND role <> 'label'
                          ORDER BY partition_date, feature""").df()
    assert len(rows) == 3 * 5 and rows.p_value.notna().all() and (rows.threshold == 0.01).all()
    for _, day in rows.groupby("partition_date"):
        expected = false_discovery_control(day.p_value.to_numpy(), method="bh")
        assert np.allclose(day.p_value_adjusted.to_numpy(), expected, rtol=1e-12, atol=0)
        assert (day.drifted == (day.p_value_adjusted < 0.01)).all()


def test_fail_fast_retries_a_lock_but_not_a_deterministic_error():
    """The steps' retry policy still heals transient errors (a DuckDB lock); errors no retry can heal
    fail on their first attempt with their message."""
    import duckdb

    from monitor_assets.wiring import IO_RETRY, fail_fast

    attempts = {"locked": 0, "missing": 0}

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=IO_RETRY.max_retries))
    def locked():
        attempts["locked"] += 1
        with fail_fast():
            if attempts["locked"] < 3:
                raise duckdb.IOException('Could not set lock on file "w.duckdb"')

    @dg.asset(retry_policy=IO_RETRY)
    def missing():
        attempts["missing"] += 1
        with fail_fast():
            duckdb.connect().execute("SELECT nope FROM range(1)")

    attempts["out_of_memory"] = 0

    @dg.asset(retry_policy=IO_RETRY)
    def out_of_memory():  # DuckDB over its own limit: the same rows under the same limit fail again
        attempts["out_of_memory"] += 1
        with fail_fast():
            con = duckdb.connect(config={"memory_limit": "20MB", "temp_directory": ""})
            con.execute("SELECT list(range) FROM (SELECT * FROM range(10000000) ORDER BY random())").fetchall()

    assert dg.materialize([locked]).success and attempts["locked"] == 3
    result = dg.materialize([missing], raise_on_error=False)
    assert not result.success and attempts["missing"] == 1
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert 'Referenced column "nope" not found' in failure.event_specific_data.error.message
    result = dg.materialize([out_of_memory], raise_on_error=False)
    assert not result.success and attempts["out_of_memory"] == 1
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "Out of Memory Error" in failure.event_specific_data.error.message


def test_a_frame_split_by_day_in_one_pass_equals_filtering_it_once_a_day():
    """`by_day` (each step's per-partition metadata of a backfill): each day's rows, in order, index kept, as
    filtering the frame by that day gives them; an empty slice with the frame's columns for a day without rows;
    dates as `date` or as datetime64 land on their day."""
    import datetime as dt

    import pandas as pd

    from monitor_assets.wiring import by_day

    days = [dt.date(2026, 3, 1) + dt.timedelta(days=k) for k in range(5)]
    frame = pd.DataFrame({"partition_date": [days[2], days[0], days[2], days[4], days[0], days[2]],
                          "v": [1, 2, 3, 4, 5, 6]}, index=[10, 11, 12, 13, 14, 15])
    for shape in (frame, frame.assign(partition_date=pd.to_datetime(frame.partition_date))):
        split = by_day(shape, days)
        assert list(split) == days
        for day in days:
            expected = shape[pd.to_datetime(shape.partition_date).dt.date == day]
            pd.testing.assert_frame_equal(split[day], expected)
        assert split[days[2]].v.tolist() == [1, 3, 6] and split[days[1]].empty
        assert list(split[days[3]].columns) == ["partition_date", "v"]
    assert all(part.empty for part in by_day(frame.iloc[0:0], days).values())
