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
