"""A multiclass model end to end on a user's own data: CSV and JSON lines logs with the class probabilities
as a JSON array (or object) column, labels as a CSV of class names; metrics against scikit-learn."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score

from monitor_assets.config import ConfigError, load_config
from monitor_assets.metrics.logic import class_metrics_by_day
from monitor_assets.stats import multiclass as MC
from monitor_assets.storage.warehouse import open_warehouse

from .conftest import run_job, write

CLASSES = ["books", "electronics", "fashion", "home"]
DAYS = pd.date_range("2025-06-01", periods=2, freq="D")


def _day(rng, day, n, start=0):
    """A categoriser's day: probabilities from a softmax of a noisy signal, the predicted class its argmax,
    the true class drawn from the probabilities (calibrated)."""
    logits = rng.normal(0, 1.5, (n, len(CLASSES)))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p = np.round(p, 6)
    p[:, -1] = np.round(1 - p[:, :-1].sum(axis=1), 6)
    y = np.array([rng.choice(len(CLASSES), p=np.clip(row, 0, None) / np.clip(row, 0, None).sum()) for row in p])
    frame = pd.DataFrame({
        "request_id": [f"c{day:%m%d}-{k}" for k in range(start, start + n)],
        "ts": (day + pd.to_timedelta(rng.integers(0, 86400, n), unit="s")).strftime("%Y-%m-%d %H:%M:%S"),
        "category": [CLASSES[i] for i in p.argmax(axis=1)],
        "probs": [json.dumps([float(v) for v in row]) for row in p],
        "price": rng.gamma(3, 10, n).round(2), "channel": rng.choice(["web", "app"], n),
    })
    return frame, p, y


CONFIG = """
partitions: {{start_date: 2025-06-01, end_date: 2025-06-02}}
label_delay_days: 0
warehouse: {tmp}/wh.duckdb
reports_dir: {tmp}/reports
sources:
  predictions:
    path: export/{{date}}/{{model}}.{ext}
    fields: {{prediction_id: request_id, timestamp: ts, score: proba, decision: category, probabilities: probs}}
  labels:
    path: truth/{{date}}.csv
    fields: {{prediction_id: request_id, label: y}}
models:
  - id: categoriser
    task: multiclass_classification
    classes: [books, electronics, fashion, home]
    main_metric: f1_macro
    reference: ref_cat.parquet
    reference_fields: {{label: y, decision: category, probabilities: probs}}
    features: {{price: numeric}}
    sensitive_attributes: [channel]
  - id: churn
    task: binary_classification
    reference: ref_churn.parquet
    reference_fields: {{score: proba, label: y}}
    features: {{price: numeric}}
"""


def _world(tmp_path, ext="csv", bad_rows=True, broken_categoriser_file=False):
    rng = np.random.default_rng(11)
    truth = {}
    for day in DAYS:
        frame, p, y = _day(rng, day, 300)
        labels = pd.DataFrame({"request_id": frame.request_id, "y": [CLASSES[i] for i in y]})
        if bad_rows:
            # one of each problem: unknown predicted class, probabilities of the wrong length, not summing to 1,
            # not numbers; and a label naming an unknown class
            extra = frame.iloc[:4].copy()
            extra["request_id"] = [f"bad{day:%d}-{k}" for k in range(4)]
            extra.loc[extra.index[0], "category"] = "garden"
            extra.loc[extra.index[1], "probs"] = "[0.5, 0.5]"
            extra.loc[extra.index[2], "probs"] = "[0.5, 0.5, 0.5, 0.5]"
            extra.loc[extra.index[3], "probs"] = '["a", 0.2, 0.3, 0.5]'
            frame = pd.concat([frame, extra], ignore_index=True)
            labels.loc[labels.index[5], "y"] = "garden"
        folder = tmp_path / "export" / f"{day:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        if broken_categoriser_file:  # the right columns, every record broken (an exporter bug)
            frame.assign(probs="[0.9, 0.9]", category="?").to_csv(folder / "categoriser.csv", index=False)
        elif ext == "csv":
            frame.to_csv(folder / "categoriser.csv", index=False)
        else:  # JSON lines: probabilities as a JSON array, or as an object {class: p} on every other row
            with open(folder / "categoriser.jsonl", "w") as f:
                for i, r in enumerate(frame.to_dict("records")):
                    probs = json.loads(r["probs"]) if r["probs"].startswith("[") and '"' not in r["probs"] else r["probs"]
                    if i % 2 and isinstance(probs, list) and len(probs) == len(CLASSES):
                        probs = dict(zip(CLASSES, probs, strict=True))
                    f.write(json.dumps({**r, "probs": probs}) + "\n")
        churn = pd.DataFrame({"request_id": [f"h{day:%m%d}-{k}" for k in range(200)], "ts": frame.ts[:200],
                              "proba": rng.random(200).round(4), "price": rng.gamma(3, 10, 200).round(2)})
        churn.to_csv(folder / f"churn.{ext}", index=False) if ext == "csv" else churn.to_json(
            folder / "churn.jsonl", orient="records", lines=True)
        churn_y = pd.DataFrame({"request_id": churn.request_id, "y": (rng.random(200) < churn.proba).astype(int)})
        (tmp_path / "truth").mkdir(exist_ok=True)
        pd.concat([labels, churn_y.astype({"y": str})]).to_csv(tmp_path / "truth" / f"{day:%Y-%m-%d}.csv", index=False)
        truth[day.date()] = (p, y, frame)
    ref, p_ref, y_ref = _day(rng, DAYS[0], 1500)
    ref.assign(y=[CLASSES[i] for i in y_ref]).to_parquet(tmp_path / "ref_cat.parquet")
    pd.DataFrame({"proba": rng.random(500), "y": rng.integers(0, 2, 500), "price": rng.gamma(3, 10, 500)}
                 ).to_parquet(tmp_path / "ref_churn.parquet")
    config = load_config(write(tmp_path / "mine.yaml", CONFIG.format(tmp=tmp_path, ext=ext)))
    return config, truth


@pytest.mark.parametrize("ext", ["csv", "jsonl", "jsonl-fast"])
def test_multiclass_metrics_equal_scikit_learn_and_bad_rows_are_quarantined(tmp_path, ext, monkeypatch):
    if ext == "jsonl-fast":  # DuckDB's parallel JSON reader, as for big files: the same rows and reasons
        monkeypatch.setattr("monitor_assets.ingestion.formats.FAST_PATH_MIN_BYTES", 0)
    config, truth = _world(tmp_path, ext.removesuffix("-fast"))
    assert run_job(config, "2025-06-01", "2025-06-02").success
    con = open_warehouse(str(tmp_path / "wh.duckdb"), read_only=True)
    perf = con.execute("""SELECT * FROM monitoring.performance_daily WHERE model_id = 'categoriser'
                          ORDER BY partition_date""").df()
    for row in perf.itertuples():
        p, y, _ = truth[row.partition_date.date()]
        keep = np.arange(len(y)) != 5  # the row whose label names an unknown class is quarantined
        p, y = p[keep], y[keep]
        pred = p.argmax(axis=1)
        assert row.volume == 300 and row.n_labelled == 300 - 1  # one label names an unknown class
        assert row.accuracy == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        present = sorted(set(y) | set(pred))
        assert row.f1_macro == pytest.approx(f1_score(y, pred, average="macro", labels=present), abs=1e-12)
        assert row.f1 == pytest.approx(row.f1_macro)
        assert row.f1_weighted == pytest.approx(f1_score(y, pred, average="weighted"), abs=1e-12)
        assert row.precision == pytest.approx(precision_score(y, pred, average="macro", labels=present,
                                                              zero_division=0), abs=1e-12)
        assert row.recall == pytest.approx(recall_score(y, pred, average="macro", labels=present,
                                                        zero_division=0), abs=1e-12)
        assert row.log_loss == pytest.approx(log_loss(y, p, labels=range(len(CLASSES))), rel=1e-9)
        assert row.roc_auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
        assert row.main_metric_value == pytest.approx(row.f1_macro)
    # per-class precision and recall, as the step's metadata shows them
    per_class = class_metrics_by_day(con, config, [d.date() for d in DAYS])
    p, y, _ = truth[DAYS[1].date()]
    keep = np.arange(len(y)) != 5
    day2 = per_class[per_class.partition_date == DAYS[1]].set_index("class")
    assert np.allclose(day2.loc[CLASSES, "recall"], recall_score(y[keep], p[keep].argmax(axis=1), average=None,
                                                                 labels=range(4)))
    assert np.allclose(day2.loc[CLASSES, "precision"], precision_score(y[keep], p[keep].argmax(axis=1), average=None,
                                                                       labels=range(4)))
    # every record is loaded or quarantined, with the reason
    q = con.execute("""SELECT source, reason, detail FROM raw.quarantine WHERE line_no IS NOT NULL
                       ORDER BY source, reason""").df()
    reasons = q.groupby(["source", "reason"]).size().to_dict()
    assert reasons == {("predictions", "unknown_category"): 2, ("predictions", "bad_probabilities"): 6,
                       ("labels", "unknown_category"): 2}
    assert q.detail.str.contains("sum to 2").any() and q.detail.str.contains("2 values, expected 4").any()
    log = con.execute("""SELECT source, sum(records_read), sum(records_loaded), sum(records_quarantined)
                         FROM raw.ingestion_log GROUP BY 1""").fetchall()
    for _, read, loaded, quarantined in log:
        assert read == loaded + quarantined
    # stored: the predicted class code and the probabilities; score = the predicted class's probability
    stored = con.execute("""SELECT prediction_id, decision, class_code, class_probabilities, score
                            FROM raw.predictions__categoriser WHERE partition_date = '2025-06-01'""").df()
    p, _, frame = truth[DAYS[0].date()]
    first = stored.set_index("prediction_id").loc[frame.request_id[0]]
    assert first.decision == CLASSES[int(first.class_code)] and first.score == pytest.approx(p[0].max())
    assert np.allclose(first.class_probabilities, p[0])
    # drift of the predicted class is categorical; fairness per class names the class
    drift = con.execute("""SELECT kind FROM monitoring.feature_drift WHERE model_id = 'categoriser'
                           AND role = 'prediction'""").fetchall()
    assert {k for (k,) in drift} == {"categorical"}
    fair = con.execute("""SELECT DISTINCT attribute FROM monitoring.fairness WHERE model_id = 'categoriser'""").fetchall()
    assert {a for (a,) in fair} == {f"channel (class {c})" for c in CLASSES}
    con.close()


def test_trigger_loss_is_scikit_learns_per_row_log_loss(tmp_path):
    config, truth = _world(tmp_path, bad_rows=False)
    assert run_job(config, "2025-06-01", "2025-06-02").success
    import datetime as dt

    from monitor_assets.retraining.logic import labelled_losses_sql

    con = open_warehouse(str(tmp_path / "wh.duckdb"), read_only=True)
    sql, params = labelled_losses_sql(con, config, dt.date(2025, 6, 1), dt.date(2025, 6, 1),
                                      [config.model("categoriser")])
    losses = con.execute(f"SELECT prediction_id, loss FROM ({sql}) ORDER BY prediction_id", params).df()
    p, y, frame = truth[dt.date(2025, 6, 1)]
    expected = pd.Series([log_loss([t], [row], labels=range(len(CLASSES))) for t, row in zip(y, p, strict=True)],
                         index=frame.request_id).sort_index()
    assert len(losses) == 300
    assert np.allclose(losses.set_index("prediction_id").loss.sort_index(), expected, rtol=1e-9)
    # the pure core agrees, and without probabilities the loss is the 0/1 error
    assert np.allclose(MC.row_loss(y, p.argmax(axis=1), len(CLASSES), p), expected.reindex(frame.request_id))
    assert list(MC.row_loss([0, 1], [0, 2], 3)) == [0.0, 1.0]
    con.close()


def test_other_models_run_when_the_multiclass_file_is_bad(tmp_path):
    config, _ = _world(tmp_path, ext="csv", bad_rows=False, broken_categoriser_file=True)
    run_job(config, "2025-06-01", "2025-06-02", raise_on_error=False)
    con = open_warehouse(str(tmp_path / "wh.duckdb"), read_only=True)
    perf = dict(con.execute("SELECT model_id, sum(volume) FROM monitoring.performance_daily GROUP BY 1").fetchall())
    assert perf["churn"] == 400 and perf.get("categoriser", 0) == 0
    quarantined = con.execute("""SELECT count(*) FROM raw.quarantine WHERE source = 'predictions'
                                 AND reason = 'unknown_category'""").fetchone()[0]
    assert quarantined == 600  # every categoriser record, with its first failing reason
    con.close()


@pytest.mark.parametrize("bad, key, says", [
    ("", "models[0].classes", "is required"),
    ("    classes: [a]\n", "models[0].classes", "2 to"),
    ("    classes: [a, b, a]\n", "models[0].classes[2]", "duplicate"),
    ("    classes: [a, b]\n    main_metric: mae\n", "models[0].main_metric", "f1_macro"),
    ("    classes: [a, b]\n    reference_fields: {score: s}\n", "models[0].reference_fields.score", "unknown key"),
])
def test_classes_are_validated_naming_the_key(tmp_path, bad, key, says):
    """One line naming the key; a binary model with `classes` is refused too (below)."""
    write(tmp_path / "ref.parquet", "")
    text = f"""partitions: {{start_date: 2025-06-01}}
sources:
  predictions: {{path: "p/{{date}}.csv"}}
  labels: {{path: "l/{{date}}.csv"}}
models:
  - id: m
    task: multiclass_classification
{bad}    reference: ref.parquet
    features: [x]
"""
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "c.yaml", text))
    assert exc.value.key == key and says in exc.value.problem


def test_classes_belong_to_multiclass_models_only(tmp_path):
    text = """partitions: {start_date: 2025-06-01}
sources:
  predictions: {path: "p/{date}.csv"}
  labels: {path: "l/{date}.csv"}
models:
  - id: m
    task: binary_classification
    classes: [a, b]
    reference: ref.parquet
    features: [x]
"""
    write(tmp_path / "ref.parquet", "")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "c.yaml", text))
    assert exc.value.key == "models[0].classes" and "only multiclass_classification" in exc.value.problem


def test_every_multiclass_main_metric_has_the_direction_scikit_learn_gives_it():
    """A noisier model moves each selectable multiclass metric in its worse direction (metrics_spec)."""
    from monitor_assets.stats.metrics_spec import MAIN_METRICS
    from monitor_assets.stats.performance import degradation

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 3000)
    figures = {}
    for name, noise in (("good", 1.0), ("bad", 3.0)):
        logits = 3.0 * np.eye(4)[y] + rng.normal(0, noise, (3000, 4))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        figures[name] = MC.daily_metrics(y, p.argmax(axis=1), 4, p)
        assert figures[name]["log_loss"] == pytest.approx(log_loss(y, p))
    for metric in MAIN_METRICS["multiclass_classification"]:
        assert degradation(metric, figures["good"][metric], figures["bad"][metric]) > 0, metric
