"""A user's own data in another shape: CSV predictions with their own column names, no JSON."""

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, r2_score

from monitor_assets.config import load_config
from monitor_assets.storage.warehouse import open_warehouse

from .conftest import run_job, write


def test_user_csv_predictions_run_through_the_same_pipeline(tmp_path):
    rng = np.random.default_rng(7)
    days = pd.date_range("2025-06-01", periods=3, freq="D")
    (tmp_path / "export").mkdir()
    (tmp_path / "truth").mkdir()
    for i, day in enumerate(days):
        n = 400
        x = rng.normal(50 + 10 * (i == 2), 10, n)  # day 3: the input shifts by one std
        frame = pd.DataFrame({
            "req": [f"r{i}-{k}" for k in range(n)],
            "served_at": (day + pd.to_timedelta(rng.integers(0, 86400, n), unit="s")).strftime("%Y-%m-%d %H:%M:%S"),
            "svc": "basket_size", "ver": "v3", "ms": rng.gamma(2, 20, n).round(1), "outcome": "SUCCESS",
            "yhat": (x * 0.1 + rng.normal(0, 1, n)).round(3), "visits": x.round(2),
            "store": rng.choice(["A", "B"], n), "segment": rng.choice(["new", "loyal"], n),
        })
        frame.to_csv(tmp_path / "export" / f"preds_{day:%Y%m%d}.csv", index=False)
        truth = pd.DataFrame({"request": frame.req, "actual": (x * 0.1).round(3)})
        truth.to_csv(tmp_path / "truth" / f"{day:%Y-%m-%d}.csv", index=False)
    ref_x = rng.normal(50, 10, 3000)
    pd.DataFrame({"visits": ref_x, "store": rng.choice(["A", "B"], 3000), "segment": "new",
                  "yhat": ref_x * 0.1, "actual": ref_x * 0.1}).to_parquet(tmp_path / "ref.parquet")
    config_path = write(tmp_path / "mine.yaml", f"""
partitions: {{start_date: 2025-06-01, end_date: 2025-06-03}}
label_delay_days: 0
warehouse: {tmp_path}/wh.duckdb
reports_dir: {tmp_path}/reports
sources:
  predictions:
    path: export/preds_{{date:%Y%m%d}}.csv
    fields: {{prediction_id: req, timestamp: served_at, model_id: svc, model_version: ver,
             latency_ms: ms, status: outcome, score: yhat}}
    ok_status: [SUCCESS]
  labels:
    path: truth/{{date}}.csv
    fields: {{prediction_id: request, label: actual}}
models:
  - id: basket_size
    task: regression
    reference: ref.parquet
    reference_fields: {{score: yhat, label: actual}}
    features: {{visits: numeric, store: categorical}}
    sensitive_attributes: [segment]
""")
    config = load_config(config_path)
    assert run_job(config, "2025-06-01", "2025-06-03").success
    con = open_warehouse(str(tmp_path / "wh.duckdb"), read_only=True)
    perf = con.execute("""SELECT partition_date, volume, n_labelled, mae, r2 FROM monitoring.performance_daily
                          ORDER BY 1""").df()
    assert list(perf.volume) == [400, 400, 400] and list(perf.n_labelled) == [400, 400, 400]
    day = pd.read_csv(tmp_path / "export" / "preds_20250602.csv")
    truth = pd.read_csv(tmp_path / "truth" / "2025-06-02.csv")
    assert perf.mae[1] == np.float64(perf.mae[1])
    assert abs(perf.mae[1] - mean_absolute_error(truth.actual, day.yhat)) < 1e-9
    assert abs(perf.r2[1] - r2_score(truth.actual, day.yhat)) < 1e-9
    assert con.execute("SELECT count(*) FROM raw.quarantine").fetchone()[0] == 0


def _churn_day(rng, day, n, flip_decisions: float = 0.0):
    """A day of a churn classifier: well separated scores, a logged decision that is the threshold rule
    overridden to the truth on 3% of rows (a reviewer), and on bad days wrong on `flip_decisions` of rows."""
    y = rng.binomial(1, 0.3, n)
    score = np.clip(0.2 + 0.55 * y + rng.normal(0, 0.2, n), 0, 1).round(4)
    decision = (score >= 0.5).astype(int)
    reviewed = rng.random(n) < 0.03
    decision[reviewed] = y[reviewed]
    broken = rng.random(n) < flip_decisions
    decision[broken] = 1 - decision[broken]
    member = rng.random(n) < 0.4
    frame = pd.DataFrame({
        "request_id": [f"{day:%m%d}-{k}" for k in range(n)],
        "ts": (day + pd.to_timedelta(rng.integers(0, 86400, n), unit="s")).strftime("%Y-%m-%d %H:%M:%S"),
        "proba": score, "approved": decision.astype(bool),  # pandas writes True/False
        "tenure": rng.gamma(3, 10, n).round(1), "is_member": member,
    })
    return frame, y


def test_csv_with_true_false_booleans_no_latency_a_logged_decision_and_accuracy_as_main_metric(tmp_path):
    """The issue's real-world shape: booleans spelled True/False in the CSV against a real bool column in
    the reference, no latency or status column, a logged decision column, accuracy as the main metric."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    from monitor_assets.alerting import rules as A

    rng = np.random.default_rng(11)
    days = pd.date_range("2025-06-01", periods=3, freq="D")
    truth = {}
    for i, day in enumerate(days):
        frame, y = _churn_day(rng, day, 400, flip_decisions=0.12 if i == 2 else 0.0)
        write(tmp_path / "export" / f"{day:%Y-%m-%d}" / "churn.csv", frame.to_csv(index=False))
        pd.DataFrame({"request_id": frame.request_id, "churned": y}).to_csv(
            write(tmp_path / "truth" / f"{day:%Y-%m-%d}.csv", ""), index=False)
        truth[day.date()] = (frame, y)
    ref, y_ref = _churn_day(rng, pd.Timestamp("2025-05-01"), 3000)
    ref.assign(churned=y_ref).drop(columns=["request_id", "ts"]).to_parquet(tmp_path / "ref.parquet")
    assert pd.read_parquet(tmp_path / "ref.parquet").is_member.dtype == bool
    config = load_config(write(tmp_path / "mine.yaml", f"""
partitions: {{start_date: 2025-06-01, end_date: 2025-06-03}}
label_delay_days: 0
warehouse: {tmp_path}/wh.duckdb
reports_dir: {tmp_path}/reports
sources:
  predictions:
    path: export/{{date}}/{{model}}.csv       # no model_id, latency, status or version column
    fields: {{prediction_id: request_id, timestamp: ts, score: proba, decision: approved}}
  labels:
    path: truth/{{date}}.csv
    fields: {{prediction_id: request_id, label: churned}}
models:
  - id: churn
    task: binary_classification
    main_metric: accuracy
    reference: ref.parquet
    reference_fields: {{score: proba, label: churned, decision: approved}}
    features: {{tenure: numeric, is_member: categorical}}
"""))
    assert config.models[0].main_metric == "accuracy"
    assert run_job(config, "2025-06-01", "2025-06-03").success
    con = open_warehouse(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        # The logged decision is the predicted class (not score >= 0.5), and accuracy is the main metric.
        perf = con.execute("""SELECT partition_date, accuracy, roc_auc, main_metric_value, n_decision_missing,
                                     latency_p95_ms FROM monitoring.performance_daily ORDER BY 1""").df()
        for r in perf.itertuples():
            frame, y = truth[r.partition_date.date()]
            assert abs(r.accuracy - accuracy_score(y, frame.approved.astype(int))) < 1e-12
            by_threshold = accuracy_score(y, (frame.proba >= 0.5).astype(int))
            assert r.accuracy != by_threshold or r.Index < 2  # day 3's broken decisions: far apart
            assert abs(r.roc_auc - roc_auc_score(y, frame.proba)) < 1e-12
            assert r.main_metric_value == r.accuracy and r.n_decision_missing == 0
            assert pd.isna(r.latency_p95_ms)
        base = dict(con.execute("SELECT metric, value FROM monitoring.reference_baselines").fetchall())
        assert abs(base["accuracy"] - accuracy_score(y_ref, ref.approved.astype(int))) < 1e-12
        # AUC barely moves on day 3 while accuracy drops by about 12 points: the check follows accuracy.
        assert abs(perf.roc_auc[2] - perf.roc_auc[0]) < 0.03 and perf.accuracy[0] - perf.accuracy[2] > 0.08
        # True/False in the CSV are the reference's booleans: nothing unseen, no drift, on any day.
        member = con.execute("""SELECT drifted, unseen_share, all_unseen, missing_share, message
                                FROM monitoring.feature_drift WHERE feature = 'is_member'""").df()
        assert len(member) == 3 and not member.drifted.any() and (member.unseen_share == 0).all()
        assert not member.all_unseen.any() and (member.missing_share == 0).all() and (member.message == "").all()
        alerts = con.execute("SELECT partition_date::VARCHAR, check_name, message FROM monitoring.alerts").fetchall()
        # Day 3's broken decisions disagree with the calibrated scores: the estimate (no labels needed) sees the
        # accuracy drop as well as the realized figure.
        assert sorted((d, c) for d, c, _ in alerts) == [("2025-06-03", A.ESTIMATED_PERFORMANCE),
                                                         ("2025-06-03", A.PERFORMANCE)]
        message = {c: m for _, c, m in alerts}
        assert message[A.PERFORMANCE].startswith("accuracy ") and "lower than the baseline" in message[A.PERFORMANCE]
        assert message[A.ESTIMATED_PERFORMANCE].startswith("estimated accuracy ")
        evaluated = A.evaluate(con, config, [d.date() for d in days])
    finally:
        con.close()
    latency = evaluated[evaluated.check_name == A.LATENCY]
    assert len(latency) == 3 and latency.passed.all() and (latency.message.str.contains("not logged")).all()
    errors = evaluated[evaluated.check_name == A.ERROR_RATE]
    assert errors.passed.all() and errors.message.str.startswith("status not logged").all()
