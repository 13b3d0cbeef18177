"""The estimated_performance asset through the daily job: estimates for every day, labelled or not, a check
that fails after a shift while the labels are still missing, and reconciliation once they land."""

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets import keys
from monitor_assets.config import load_config
from monitor_assets.constants import ESTIMATED_PERFORMANCE_CHECK
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import CSV_WORLD, run_job, write

DAYS = pd.date_range("2025-06-01", periods=8, freq="D")
SHIFT = 5  # from the sixth day the classifier's inputs move to where it is unsure
LABELLED_AT_FIRST = 4  # labels of the first four days only; the rest land later

CONFIG = """
partitions: {{start_date: 2025-06-01, end_date: 2025-06-08}}
label_delay_days: 7
""" + CSV_WORLD + """models:
  - id: risk
    task: binary_classification
    main_metric: accuracy
    reference: risk.parquet
    reference_fields: {{score: proba}}
    features: {{x: numeric}}
  - id: demand
    task: regression
    reference: demand.parquet
    reference_fields: {{score: proba}}
    features: {{x: numeric, colour: categorical}}
    estimation: {{metrics: [mae]}}
"""


def _risk(rng, n, shifted=False):
    x = rng.normal(0, 0.6 if shifted else 2.0, n)
    p = 1 / (1 + np.exp(-(2.0 * x + 0.3)))
    return pd.DataFrame({"x": x, "proba": p}), (rng.random(n) < p).astype(int)


def _demand(rng, n):
    x, colour = rng.normal(0, 1, n), rng.choice(["red", "blue"], n)
    prediction = 3 * x
    y = prediction + rng.normal(0, np.where(colour == "red", 2.0, 0.5))
    return pd.DataFrame({"x": x, "colour": colour, "proba": prediction}), y


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("estimation")
    rng = np.random.default_rng(5)
    ref, y = _risk(rng, 4000)
    ref.assign(label=y).to_parquet(tmp / "risk.parquet")
    ref, y = _demand(rng, 3000)
    ref.assign(label=y).to_parquet(tmp / "demand.parquet")
    truth = {}
    for i, day in enumerate(DAYS):
        risk, y_risk = _risk(rng, 600, shifted=i >= SHIFT)
        demand, y_demand = _demand(rng, 400)
        for name, frame in (("risk", risk), ("demand", demand)):
            frame = frame.assign(request_id=[f"{name}{i}-{k}" for k in range(len(frame))], ts=f"{day:%Y-%m-%d} 12:00")
            write(tmp / "export" / f"{day:%Y-%m-%d}" / f"{name}.csv", frame.to_csv(index=False))
        truth[day.date()] = pd.DataFrame({"request_id": [f"risk{i}-{k}" for k in range(600)]
                                          + [f"demand{i}-{k}" for k in range(400)],
                                          "y": list(y_risk) + list(y_demand)})
        if i < LABELLED_AT_FIRST:
            truth[day.date()].to_csv(write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", ""), index=False)
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    instance = dg.DagsterInstance.ephemeral()
    assert run_job(config, "2025-06-01", "2025-06-08", instance=instance).success
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        before = con.execute("SELECT * FROM monitoring.estimated_performance ORDER BY ALL").df()
        alerts = con.execute("SELECT * FROM monitoring.alerts WHERE check_name = ?",
                             [ESTIMATED_PERFORMANCE_CHECK]).df()
        fits = con.execute("SELECT model_id, fit_key, computed_at FROM monitoring.estimators ORDER BY 1").df()
    # The late labels land on the last day: that day's run reconciles the seven days before it.
    late = pd.concat([truth[d.date()] for d in DAYS[LABELLED_AT_FIRST:]])
    late.to_csv(write(tmp / "truth" / "2025-06-08.csv", ""), index=False)
    assert run_job(config, "2025-06-08", instance=instance).success
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        after = con.execute("SELECT * FROM monitoring.estimated_performance ORDER BY ALL").df()
        history = con.execute("""SELECT partition_date, model_id, metric, segment, value FROM monitoring.history
                                 WHERE metric LIKE 'estimated.%' ORDER BY ALL""").df()
        refits = con.execute("SELECT model_id, fit_key, computed_at FROM monitoring.estimators ORDER BY 1").df()
    return {"config": config, "instance": instance, "before": before, "after": after, "alerts": alerts,
            "truth": truth, "fits": fits, "refits": refits, "tmp": tmp, "history": history}


def test_every_day_is_estimated_labelled_or_not(world):
    before = world["before"]
    risk = before[before.model_id == "risk"]
    assert set(risk.metric) == {"accuracy", "precision", "recall", "f1", "specificity", "roc_auc"}
    assert len(risk) == 8 * 6 and (risk.n_rows == 600).all() and (risk.method == "confidence").all()
    assert (risk.lower <= risk.estimate).all() and (risk.estimate <= risk.upper).all()
    labelled = risk[risk.n_labelled > 0]
    assert set(pd.to_datetime(labelled.partition_date).dt.day) == {1, 2, 3, 4}
    assert risk[risk.n_labelled == 0].realized.isna().all() and risk[risk.n_labelled == 0].within_band.isna().all()
    demand = before[before.model_id == "demand"]
    assert set(demand.metric) == {"mae"} and (demand.method == "loss_model_reweighted").all()


def test_realized_values_match_scikit_learn(world):
    tmp, before = world["tmp"], world["before"]
    day = DAYS[0]
    frame = pd.read_csv(tmp / "export" / f"{day:%Y-%m-%d}" / "risk.csv").merge(world["truth"][day.date()])
    y, s = frame.y.to_numpy(), frame.proba.to_numpy()
    row = before[(before.model_id == "risk") & (pd.to_datetime(before.partition_date) == day)].set_index("metric")
    assert row.loc["accuracy", "realized"] == pytest.approx(skm.accuracy_score(y, s >= 0.5))
    assert row.loc["f1", "realized"] == pytest.approx(skm.f1_score(y, s >= 0.5))
    assert row.loc["roc_auc", "realized"] == pytest.approx(skm.roc_auc_score(y, s))
    assert row.loc["accuracy", "n_labelled"] == 600


def test_the_check_fails_after_the_shift_before_any_label(world):
    alerts = world["alerts"]
    failing = sorted(pd.to_datetime(alerts[alerts.model_id == "risk"].partition_date).dt.day)
    assert failing and min(failing) == SHIFT + 1 and set(failing) <= set(range(SHIFT + 1, 9))
    assert (alerts.severity == "WARN").all()
    assert "estimated accuracy" in alerts.message.iloc[0] and "no labels needed" in alerts.message.iloc[0]
    history = world["instance"].event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(keys.ESTIMATED_PERFORMANCE, ESTIMATED_PERFORMANCE_CHECK), limit=50)
    assert {r.partition for r in history} >= {f"2025-06-0{d}" for d in range(1, 9)}


def test_labels_that_land_later_reconcile_the_estimates(world):
    after = world["after"]
    risk = after[(after.model_id == "risk") & (after.metric == "accuracy")]
    assert (risk.n_labelled == 600).all() and risk.realized.notna().all()
    # the shift lowered the realized accuracy and the estimate said so before the labels came
    shifted = risk[pd.to_datetime(risk.partition_date).dt.day > SHIFT]
    assert (shifted.realized < 0.75).all() and (abs(shifted.estimate - shifted.realized) < 0.06).all()
    held = after[after.within_band.notna()]
    assert held.within_band.mean() >= 0.8  # the band held on most labelled model-days
    assert world["refits"].equals(world["fits"])  # fitted once per reference version, then reused


def test_regressor_estimate_tracks_the_realized_mae(world):
    """Judged as the estimate promises, not by a fixed 10% on every day: a day's realized MAE over 400 rows scatters
    about 5.5% around the truth, so 10% on all 8 days held in only about 3 of 4 simulated worlds (seeded data
    passes or fails by luck). Here: the band holds on at least 5 of the 8 days, and the mean relative error over the
    days is below 10% (a sound estimate averages about 4.5%). Simulated on 200 worlds of this data, this test always
    held (at most 3 days missed the band, in 4 worlds); with the estimate and band 15% too high it failed in 98%."""
    demand = world["after"][world["after"].model_id == "demand"]
    assert demand.realized.notna().all() and len(demand) == len(DAYS)
    inside = (demand.lower <= demand.realized) & (demand.realized <= demand.upper)
    assert inside.sum() >= 5, demand[["partition_date", "estimate", "lower", "upper", "realized"]]
    assert (abs(demand.estimate - demand.realized) / demand.realized).mean() < 0.1
    assert not math.isnan(demand.lower.iloc[0])


def test_each_partition_has_its_own_plottable_figures(world):
    instance = world["instance"]
    figures = {}
    for day in ("2025-06-02", "2025-06-07"):
        record = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=keys.ESTIMATED_PERFORMANCE, asset_partitions=[day]), limit=1).records[0]
        figures[day] = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert figures["2025-06-02"]["models_estimated"] == 2
    assert figures["2025-06-07"]["worst_model"] == "risk"
    assert figures["2025-06-07"]["worst_main_metric_ratio"] < figures["2025-06-02"]["worst_main_metric_ratio"]
    assert 0.8 <= figures["2025-06-07"]["band_coverage_so_far"] <= 1.0


def test_history_keeps_each_estimate_and_its_band(world):
    """monitoring.history has `estimated.<metric>` per model-day (segment '') and its band ('lower', 'upper'),
    equal to the table's values (the run of the last day rewrote the days it refreshed)."""
    after, history = world["after"], world["history"]
    refreshed = after[pd.to_datetime(after.partition_date) >= pd.Timestamp("2025-06-08") - pd.Timedelta(days=3)]
    assert len(refreshed) >= 4 * 7  # four days, both models' metrics
    for r in refreshed.itertuples():
        rows = history[(history.partition_date == r.partition_date) & (history.model_id == r.model_id)
                       & (history.metric == f"estimated.{r.metric}")].set_index("segment").value
        assert rows[""] == pytest.approx(r.estimate) and rows["lower"] == pytest.approx(r.lower)
        assert rows["upper"] == pytest.approx(r.upper)
    assert set(history.segment) == {"", "lower", "upper"}


@pytest.mark.parametrize("method,classifier,regressor", [
    ("auto", "confidence", "loss_model_reweighted"),  # auto: what measured best (benchmarks/estimation_bench.py)
    ("none", "none", "none"),
])
def test_methods_resolve_per_task(tmp_path, method, classifier, regressor):
    from monitor_assets.estimation.logic import method_of, needs_features

    text = CONFIG.format(tmp=tmp_path).replace("estimation: {metrics: [mae]}", f"estimation: {{method: {method}}}")
    text = text.replace("    features: {x: numeric}\n", f"    features: {{x: numeric}}\n    estimation: {{method: {method}}}\n", 1)
    config = load_config(write(tmp_path / "monitor.yaml", text))
    risk, demand = config.models
    assert (method_of(risk), method_of(demand)) == (classifier, regressor)
    assert needs_features(method_of(risk)) == (classifier == "confidence_reweighted")


def test_explicit_methods_are_kept_and_checked_per_task(tmp_path):
    from monitor_assets.estimation.logic import method_of

    for risk_method, demand_method in (("confidence", "loss_model_reweighted"), ("confidence_reweighted", "loss_model")):
        text = CONFIG.format(tmp=tmp_path).replace("estimation: {metrics: [mae]}", f"estimation: {{method: {demand_method}}}")
        text = text.replace("    features: {x: numeric}\n", f"    features: {{x: numeric}}\n    estimation: {{method: {risk_method}}}\n", 1)
        risk, demand = load_config(write(tmp_path / "monitor.yaml", text)).models
        assert (method_of(risk), method_of(demand)) == (risk_method, demand_method)
    text = CONFIG.format(tmp=tmp_path).replace("    features: {x: numeric}\n",
                                               "    features: {x: numeric}\n    estimation: {method: loss_model_reweighted}\n", 1)
    with pytest.raises(Exception, match="models\\[0\\].estimation.method"):
        load_config(write(tmp_path / "monitor.yaml", text))


def test_each_days_figures_are_computed_for_all_days_at_once_as_day_by_day():
    """`day_summaries` answers for a year in one pass: on messy rows (a model not in the config, a day with no
    estimate, unlabelled estimates, a lower-is-better metric, a missing baseline) each day's figures equal the
    day-by-day arithmetic: the worst main metric as a share of its baseline, and the band's coverage over the
    labelled estimates up to that day."""
    import datetime as dt
    from types import SimpleNamespace

    import duckdb

    from monitor_assets.estimation.logic import ESTIMATES, day_summaries

    rng = np.random.default_rng(3)
    days = [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(40)]
    rows = []
    for day in days:
        if day.day == 13:
            continue  # nothing estimated that day
        for model_id, metric in (("risk", "accuracy"), ("risk", "f1"), ("demand", "mae"), ("ghost", "accuracy"),
                                 ("nobase", "accuracy")):
            estimate = rng.uniform(0.5, 0.95) if metric != "mae" else rng.uniform(2, 6)
            within = None if rng.random() < 0.3 else bool(rng.random() < 0.8)
            rows.append((day, model_id, metric, estimate, estimate - 0.05, estimate + 0.05, within))
    frame = pd.DataFrame(rows, columns=["partition_date", "model_id", "metric", "estimate", "lower", "upper",
                                        "within_band"])
    con = duckdb.connect()
    con.execute("CREATE SCHEMA monitoring")
    con.execute("CREATE TABLE monitoring.reference_baselines (model_id VARCHAR, metric VARCHAR, value DOUBLE)")
    con.execute("INSERT INTO monitoring.reference_baselines VALUES "
                "('risk', 'accuracy', 0.9), ('demand', 'mae', 3.0), ('ghost', 'accuracy', 0.9)")
    con.execute(f"CREATE TABLE {ESTIMATES} AS SELECT * FROM frame")
    config = SimpleNamespace(
        models=[SimpleNamespace(id="risk", main_metric="accuracy"), SimpleNamespace(id="demand", main_metric="mae"),
                SimpleNamespace(id="nobase", main_metric="accuracy")],
        model_ids=["risk", "demand", "nobase"])
    asked = days[5:]  # the run's days; earlier labelled days count in the coverage
    got = day_summaries(con, config, frame[frame.partition_date >= asked[0]], asked)
    assert list(got) == asked
    for day in asked:
        today = frame[(frame.partition_date == day) & (frame.partition_date >= asked[0])]
        shares = []
        for _, r in today.iterrows():
            if (r.model_id, r.metric) == ("risk", "accuracy"):
                shares.append((r.estimate / 0.9, "risk"))
            elif (r.model_id, r.metric) == ("demand", "mae"):
                shares.append((1 - (r.estimate - 3.0) / 3.0, "demand"))  # lower is better
        upto = frame[(frame.partition_date <= day) & frame.model_id.isin(config.model_ids) & frame.within_band.notna()]
        expected = {"models_estimated": today.model_id.nunique(), "estimates": len(today),
                    "worst_main_metric_ratio": min(shares)[0] if shares else None,
                    "worst_model": min(shares)[1] if shares else "none",
                    "band_coverage_so_far": upto.within_band.astype(bool).mean() if len(upto) else None,
                    "labelled_estimates_so_far": len(upto)}
        assert got[day].keys() == expected.keys()
        for key, value in expected.items():
            assert got[day][key] == pytest.approx(value), (day, key)
    assert got[dt.date(2025, 1, 13)]["estimates"] == 0 and got[dt.date(2025, 1, 13)]["worst_model"] == "none"
