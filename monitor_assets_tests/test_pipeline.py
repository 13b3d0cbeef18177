"""The whole pipeline on the bundled demo data, materialized in process on a real DuckDB file."""

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from monitor_assets.storage.lake import Lake
from monitor_assets.storage.warehouse import open_warehouse

from .conftest import run_job

INCIDENTS = yaml.safe_load((Path(__file__).parents[1] / "data" / "demo" / "incidents.yaml").read_text())


def incident(kind):
    return next(i for i in INCIDENTS["incidents"] if i["kind"] == kind)


def test_thirty_partitions_of_every_daily_table(demo_db):
    for table in ("raw.predictions", "raw.labels", "raw.interactions", "raw.sales", "monitoring.performance_daily",
                  "monitoring.business_kpis_daily", "monitoring.history"):
        days = demo_db.execute(f"SELECT count(DISTINCT partition_date) FROM {table}").fetchone()[0]
        # Labels start arriving the day after the first prediction.
        assert days == (29 if table == "raw.labels" else 30), table


def test_counts_add_up_and_corrupted_batch_is_quarantined(demo_db):
    log = demo_db.execute("""SELECT source, sum(records_read), sum(records_loaded), sum(records_quarantined)
                             FROM raw.ingestion_log GROUP BY 1""").fetchall()
    # a ranker's records are its requests (one row per shown item) and its interactions
    tables = {"ranking": "(SELECT DISTINCT partition_date, request_id FROM raw.ranking_impressions)",
              "ranking_labels": "raw.ranking_interactions"}
    for source, read, loaded, quarantined in log:
        assert read == loaded + quarantined, source
        table_rows = demo_db.execute(f"SELECT count(*) FROM {tables.get(source, f'raw.{source}')}").fetchone()[0]
        q_rows = demo_db.execute("SELECT count(*) FROM raw.quarantine WHERE source = ? AND line_no IS NOT NULL",
                                 [source]).fetchone()[0]
        assert (table_rows, q_rows) == (loaded, quarantined), source
    corrupted = incident("corrupted_batch")
    day = corrupted["dates"][0]
    by_kind = dict(demo_db.execute("""
        SELECT reason, count(*) FROM raw.quarantine
        WHERE source = 'predictions' AND partition_date = ? GROUP BY 1""", [day]).fetchall())
    injected = corrupted["details"]
    assert by_kind["malformed_json"] == injected["malformed_json"]
    assert by_kind["duplicate"] == injected["duplicate_prediction_id"]
    assert by_kind["out_of_range"] == injected["out_of_range_score"]
    assert by_kind["non_finite"] == injected["non_finite_number"]
    assert by_kind["unknown_model"] == injected["unknown_model_id"]
    assert by_kind["missing_field"] == injected["missing_prediction_id"] + injected["missing_score"]
    other_days = demo_db.execute("SELECT count(*) FROM raw.quarantine WHERE source = 'predictions' "
                                 "AND partition_date <> ? AND line_no IS NOT NULL", [day]).fetchone()[0]
    assert other_days == 0


def test_empty_day_is_a_visible_gap_not_a_crash(demo_db):
    gap = incident("no_logs")
    row = demo_db.execute("""SELECT volume, label_coverage, roc_auc FROM monitoring.performance_daily
                             WHERE model_id = ? AND partition_date = ?""", [gap["model_id"], gap["dates"][0]]).fetchone()
    assert row[0] == 0 and row[1] is None and row[2] is None


def test_performance_equals_scikit_learn_on_the_warehouse_rows(demo_db):
    day = "2026-10-10"
    rows = demo_db.execute("""
        SELECT p.score, l.label FROM raw.predictions p JOIN raw.labels l USING (prediction_id)
        WHERE p.partition_date = ? AND p.model_id = 'fraud_detector' AND p.is_ok""", [day]).fetchall()
    scores, labels = np.array(rows).T
    auc = demo_db.execute("""SELECT roc_auc FROM monitoring.performance_daily
                             WHERE partition_date = ? AND model_id = 'fraud_detector'""", [day]).fetchone()[0]
    assert auc == roc_auc_score(labels, scores) or abs(auc - roc_auc_score(labels, scores)) < 1e-12


def test_concept_drift_and_latency_spike_show_in_metrics(demo_db):
    concept = incident("concept_drift")
    auc = dict(demo_db.execute("""SELECT partition_date::VARCHAR, roc_auc FROM monitoring.performance_daily
                                  WHERE model_id = ?""", [concept["model_id"]]).fetchall())
    before = [v for d, v in auc.items() if d < concept["dates"][0] and v is not None]
    after = [auc[d] for d in concept["dates"] if auc.get(d) is not None]
    assert min(before) > 0.7 and max(after) < 0.6
    spike = incident("latency_error_spike")
    p95 = dict(demo_db.execute("""SELECT partition_date::VARCHAR, latency_p95_ms FROM monitoring.performance_daily
                                  WHERE model_id = ?""", [spike["model_id"]]).fetchall())
    assert p95[spike["dates"][0]] > 500 > max(v for d, v in p95.items() if d != spike["dates"][0])


def test_late_labels_refresh_earlier_days_and_history_never_duplicates(demo_config, demo_run, tmp_path):
    """Run days one at a time, the way the daily schedule does: late labels must update earlier days."""
    import shutil
    from dataclasses import replace

    db = tmp_path / "daily.duckdb"
    shutil.copytree(demo_config.lake_path, replace(demo_config, warehouse_path=str(db)).lake_path)
    # its own reports: the demo's dashboard and Prometheus files are what later tests read
    config = replace(demo_config, warehouse_path=str(db), reports_dir=str(tmp_path / "reports"))
    lake = Lake(config.lake_path)
    lake.delete("raw.labels", "partition_date >= CAST('2026-10-12' AS DATE)")
    lake.delete("monitoring.performance_daily", "partition_date >= CAST('2026-10-10' AS DATE)")
    assert run_job(config, "2026-10-11").success  # labels for the 10th are still partly missing
    with open_warehouse(str(db), read_only=True) as c:
        partial = c.execute("""SELECT label_coverage FROM monitoring.performance_daily
                               WHERE partition_date = '2026-10-10' AND model_id = 'fraud_detector'""").fetchone()[0]
    for day in ("2026-10-12", "2026-10-13", "2026-10-13"):  # the 13th twice: a re-run
        assert run_job(config, day).success
    with open_warehouse(str(db), read_only=True) as c:
        full = c.execute("""SELECT label_coverage FROM monitoring.performance_daily
                            WHERE partition_date = '2026-10-10' AND model_id = 'fraud_detector'""").fetchone()[0]
        dupes = c.execute("""SELECT count(*) FROM (SELECT partition_date, model_id, metric, segment, count(*) n
                             FROM monitoring.history GROUP BY ALL HAVING n > 1)""").fetchone()[0]
        perf_dupes = c.execute("""SELECT count(*) FROM (SELECT partition_date, model_id, count(*) n
                                  FROM monitoring.performance_daily GROUP BY ALL HAVING n > 1)""").fetchone()[0]
        hist_cov = c.execute("""SELECT value FROM monitoring.history WHERE partition_date = '2026-10-10'
                                AND model_id = 'fraud_detector' AND metric = 'label_coverage'""").fetchone()[0]
    assert partial < 0.5 and full == 1.0
    assert hist_cov == full
    assert dupes == 0 and perf_dupes == 0


def test_late_label_incident_is_reflected_in_coverage(demo_db):
    late = incident("late_labels")
    day = dt.date.fromisoformat(late["dates"][0])
    delay = late["details"]["label_delay_days"]
    arrivals = demo_db.execute("""SELECT min(partition_date), max(partition_date) FROM raw.labels
                                  WHERE prediction_date = ? AND model_id = 'fraud_detector'""", [day]).fetchone()
    assert arrivals[0] == arrivals[1] == day + dt.timedelta(days=delay)


def test_injected_drift_is_flagged_on_its_dates_and_nothing_else_is(demo_db):
    drift = incident("feature_drift")
    flagged = demo_db.execute("""SELECT model_id, feature, partition_date::VARCHAR FROM monitoring.feature_drift
                                 WHERE drifted AND role = 'feature'""").fetchall()
    expected = {(i["model_id"], f, d) for i in (drift, incident("covariate_shift")) for f in i["features"]
                for d in i["dates"]}
    assert set(flagged) == expected  # every injected (feature, date), and no stable feature on any day
    share = dict(demo_db.execute("""SELECT partition_date::VARCHAR, drift_share FROM monitoring.drift_summary
                                    WHERE model_id = ?""", [drift["model_id"]]).fetchall())
    # the drifted model's own row count of features (another model's row, e.g. the ranker's 3, says nothing)
    n_features = {n for (n,) in demo_db.execute("SELECT DISTINCT n_features FROM monitoring.drift_summary "
                                                 "WHERE model_id = ?", [drift["model_id"]]).fetchall()}
    assert all(abs(share[d] - 2 / 7) < 1e-9 for d in drift["dates"]) and n_features == {7}


def test_injected_bias_is_flagged_for_its_group_on_its_dates(demo_db):
    bias = incident("bias")
    unfair = demo_db.execute("""
        SELECT DISTINCT model_id, attribute, partition_date::VARCHAR FROM monitoring.fairness
        WHERE demographic_parity_ratio < 0.8 AND disparity_p_value < 0.001""").fetchall()
    assert set(unfair) == {(bias["model_id"], bias["attribute"], d) for d in bias["dates"]}
    worst = demo_db.execute("""
        SELECT grp FROM monitoring.fairness WHERE model_id = ? AND attribute = ? AND partition_date = ?
        ORDER BY selection_rate DESC LIMIT 1""", [bias["model_id"], bias["attribute"], bias["dates"][0]]).fetchall()
    assert worst[0][0] == bias["group"]


def test_reference_profiles_are_reused_when_the_reference_is_unchanged(demo_config, demo_run):
    import shutil
    import tempfile
    from dataclasses import replace

    from .conftest import run_job
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/copy.duckdb"
        shutil.copytree(demo_config.lake_path, replace(demo_config, warehouse_path=db).lake_path)
        before = open_warehouse(db, read_only=True).execute(
            "SELECT max(computed_at) FROM monitoring.reference_profiles").fetchall()[0][0]
        result = run_job(replace(demo_config, warehouse_path=db, reports_dir=f"{tmp}/reports"), "2026-10-30")
        assert result.success
        after = open_warehouse(db, read_only=True).execute(
            "SELECT max(computed_at) FROM monitoring.reference_profiles").fetchall()[0][0]
        assert before == after


def _estimates(con, model_id: str, metric: str, days: list[str]) -> dict:
    rows = con.execute("""SELECT partition_date::VARCHAR, estimate, lower, upper, realized, n_rows, n_labelled, within_band
                          FROM monitoring.estimated_performance WHERE model_id = ? AND metric = ?
                          AND partition_date::VARCHAR IN (SELECT unnest(?::VARCHAR[]))""", [model_id, metric, days])
    return {r[0]: r[1:] for r in rows.fetchall()}


def test_covariate_shift_is_found_by_the_estimate_while_its_labels_are_late(demo_config, demo_db):
    from monitor_assets.constants import ESTIMATED_PERFORMANCE_CHECK

    shift = incident("covariate_shift")
    model = demo_config.model(shift["model_id"])
    failed = {d for d, in demo_db.execute("""SELECT partition_date::VARCHAR FROM monitoring.alerts
                                              WHERE model_id = ? AND check_name = ?""",
                                           [model.id, ESTIMATED_PERFORMANCE_CHECK]).fetchall()}
    assert failed == set(shift["dates"])  # on every day of the shift, and on no other day of this model
    baseline = demo_db.execute("SELECT value FROM monitoring.reference_baselines WHERE model_id = ? AND metric = ?",
                               [model.id, shift["metric"]]).fetchone()[0]
    floor = model.thresholds.min_metric_ratio * baseline
    for day, (_, _, upper, realized, n_rows, n_labelled, within) in _estimates(
            demo_db, model.id, shift["metric"], shift["dates"]).items():
        assert n_labelled == 0 and realized is None and within is None, day  # no label of the day yet
        assert n_rows > 1000 and upper < floor, day  # the whole band below the floor


def test_covariate_shift_is_confirmed_when_its_late_labels_land(demo_config, demo_run, demo_db, tmp_path):
    """The generator run for more days writes the shift's labels on their arrival day; that day's run reconciles
    the shift's days, and the realized ROC AUC (scikit-learn's, on the warehouse rows) is inside the band."""
    import shutil
    from dataclasses import replace

    from monitor_assets.config import load_config
    from monitor_assets.demo.generate import generate

    shift = incident("covariate_shift")
    landed = dt.date.fromisoformat(shift["details"]["labels_arrive"])
    start = dt.date.fromisoformat(INCIDENTS["start_date"])
    out = tmp_path / "demo"
    generate(out, days=(landed - start).days + 1)
    demo = Path(__file__).parents[1] / "data" / "demo"
    for day in shift["dates"]:  # the days the demo holds come out the same
        path = f"predictions/{day}/{shift['model_id']}.jsonl.gz"
        assert (out / path).read_bytes() == (demo / path).read_bytes()
    (out / "monitor.yaml").write_text((demo / "monitor.yaml").read_text().replace(
        f"end_date: {start + dt.timedelta(days=INCIDENTS['days'] - 1)}", f"end_date: {landed}"))
    db = tmp_path / "late.duckdb"
    config = replace(load_config(out / "monitor.yaml"), warehouse_path=str(db), reports_dir=str(tmp_path / "r"),
                     label_delay_days=(landed - dt.date.fromisoformat(shift["dates"][0])).days)
    shutil.copytree(demo_config.lake_path, config.lake_path)
    assert run_job(config, str(landed)).success
    model = shift["model_id"]
    with open_warehouse(str(db), read_only=True) as c:
        after = _estimates(c, model, shift["metric"], shift["dates"])
        assert sorted(after) == shift["dates"]
        for day, (*_, realized, n_rows, n_labelled, _) in after.items():
            rows = c.execute("""SELECT p.score, l.label FROM raw.predictions p JOIN raw.labels l USING (prediction_id)
                                WHERE p.partition_date = ? AND p.model_id = ? AND p.is_ok""", [day, model]).fetchall()
            scores, labels = np.array(rows).T
            assert n_labelled == n_rows == len(rows), day
            assert abs(realized - roc_auc_score(labels, scores)) < 1e-12, day
    # The labels confirm the drop the estimate had found: below the check's floor on every day. The realized value
    # is inside the band or short of its lower end by less than half the band's width: far out of the reference's
    # inputs, the reweighted estimate errs high.
    baseline = demo_db.execute("SELECT value FROM monitoring.reference_baselines WHERE model_id = ? AND metric = ?",
                               [model, shift["metric"]]).fetchone()[0]
    for day, (_, lower, upper, realized, *_) in after.items():
        assert realized < config.model(model).thresholds.min_metric_ratio * baseline, day
        assert lower - (upper - lower) / 2 <= realized <= upper, day


def test_a_batch_of_days_counted_at_once_gives_each_day_its_own_drift(demo_run, demo_db):
    """The drift step counts a batch of days in a few statements (`isolated_drift_days`): every model-day's rows
    and summary equal those of the day counted alone (`isolated_drift`), for each demo model over its 30 days
    (the purchase model's day without its file among them, labels arriving from the second day), the
    floats but for rounding."""
    from monitor_assets.analysis import logic as L

    config, _ = demo_run
    days = [dt.date(2026, 10, 1) + dt.timedelta(days=k) for k in range(30)]
    profiles, importance, errors = L.drift_inputs(demo_db, config.models)
    compared = labelled = 0
    for model in config.models:
        together = L.isolated_drift_days(demo_db, config, model, days, profiles[model.id], importance[model.id],
                                         errors.get(model.id))
        alone = [L.isolated_drift(demo_db, config, model, day, profiles[model.id], importance[model.id],
                                  errors.get(model.id)) for day in days]
        assert len(together) == len(alone) == 30
        for (rows_a, summary_a), (rows_b, summary_b) in zip(together, alone, strict=True):
            assert summary_a == summary_b and summary_a["analysis_error"] is None
            assert len(rows_a) == len(rows_b)
            for a, b in zip(rows_a, rows_b, strict=True):
                assert a.keys() == b.keys()
                # floats equal but for rounding: a day read alone reaches the counters in its chunks' batches
                assert {k: (pytest.approx(v, rel=1e-12, nan_ok=True) if isinstance(v, float) else v)
                        for k, v in a.items()} == b
                compared += 1
                labelled += a["role"] == "label"
    assert compared > 800 and labelled > 50


def test_each_days_drift_metadata_holds_that_days_figures(demo_run, demo_db):
    """A 30-day run gives each partition its own figures (split once, `by_day`): the drifted features and the
    models with dataset drift the feature-drift step attaches to each day equal that day's rows in the tables."""
    import dagster as dg

    _, result = demo_run
    key = dg.AssetKey(["monitoring", "feature_drift"])
    shown = {e.partition: e.materialization.metadata for e in result.get_asset_materialization_events()
             if e.asset_key == key and e.partition}
    assert len(shown) == 30
    drifted = dict(demo_db.execute("SELECT partition_date::VARCHAR, count(*) FILTER (WHERE drifted) FROM "
                                   "monitoring.feature_drift WHERE role = 'feature' GROUP BY 1").fetchall())
    dataset = dict(demo_db.execute("SELECT partition_date::VARCHAR, count(*) FILTER (WHERE dataset_drift) FROM "
                                   "monitoring.drift_summary GROUP BY 1").fetchall())
    assert {day: m["drifted_features"].value for day, m in shown.items()} == drifted
    assert {day: m["models_with_dataset_drift"].value for day, m in shown.items()} == dataset
    assert len(set(drifted.values())) > 1  # the days differ: a day's figures are not the run's
