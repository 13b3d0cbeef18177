"""The evaluation store for multiclass models: a window's figures from the daily profiles against scikit-learn
on the window's raw rows (class names logged, probabilities as JSON, some rows without them), and the demo's
categoriser through the same job."""

import datetime as dt
import json
from dataclasses import replace

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets import keys
from monitor_assets.config import load_config
from monitor_assets.definitions import build_definitions
from monitor_assets.evaluation.logic import ALL_VERSIONS, PROFILES, STORE
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import write

CLASSES = ["books", "electronics", "fashion", "home"]
START = dt.date(2025, 6, 2)  # a Monday: the first week is whole
DAYS = [START + dt.timedelta(days=i) for i in range(9)]
CONFIG = """
partitions: {{start_date: 2025-06-02, end_date: 2025-06-10}}
label_delay_days: 0
evaluation: {{windows: [week]}}
warehouse: {tmp}/wh.duckdb
reports_dir: {tmp}/reports
sources:
  predictions:
    path: export/{{date}}/{{model}}.csv
    fields: {{prediction_id: request_id, timestamp: ts, decision: category, probabilities: probs}}
  labels:
    path: truth/{{date}}.csv
    fields: {{prediction_id: request_id, label: y}}
models:
  - id: categoriser
    task: multiclass_classification
    classes: [books, electronics, fashion, home]
    reference: ref.parquet
    reference_fields: {{label: y, decision: category, probabilities: probs}}
    features: {{price: numeric, shop: categorical}}
    sensitive_attributes: [channel]
"""


def _day(rng, day, n, tilt=0.0):
    """Softmax probabilities rounded as a logger writes them, the argmax logged as the class name, the true
    class drawn from them; a tenth of the rows log no probabilities."""
    logits = rng.normal(0, 1.5, (n, len(CLASSES))) + np.array([tilt, 0, 0, 0])
    p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 6)
    p[:, -1] = np.round(1 - p[:, :-1].sum(axis=1), 6)
    p = np.clip(p, 0, 1)
    y = np.array([rng.choice(len(CLASSES), p=row / row.sum()) for row in p])
    frame = pd.DataFrame({"request_id": [f"c{day:%m%d}-{k}" for k in range(n)], "ts": f"{day} 10:00:00",
                          "category": [CLASSES[i] for i in p.argmax(axis=1)],
                          "probs": [json.dumps([float(v) for v in row]) for row in p],
                          "price": rng.gamma(3, 10, n).round(2), "channel": rng.choice(["web", "app"], n),
                          "shop": rng.choice(["north", "south", "east"], n)})
    frame.loc[rng.random(n) < 0.1, "probs"] = None
    return frame, y


def _job(config):
    job = dg.define_asset_job("evaluation_test_job", selection=dg.AssetSelection.assets(keys.EVALUATION_STORE).upstream())
    return dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[job])).resolve_job_def(
        "evaluation_test_job")


def _run(config, start, end):
    result = _job(config).execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags={
        "dagster/asset_partition_range_start": str(start), "dagster/asset_partition_range_end": str(end)})
    assert result.success
    with connect(None, config.lake_path) as con:
        store = con.execute(f"SELECT * EXCLUDE (computed_at) FROM {STORE}").df()
        profiles = con.execute(f"SELECT * EXCLUDE (computed_at) FROM {PROFILES}").df()
    store["window_start"] = pd.to_datetime(store.window_start).dt.date
    return store, profiles


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiclass_windows")
    rng = np.random.default_rng(3)
    raw = []
    for i, day in enumerate(DAYS):
        frame, y = _day(rng, day, 250, tilt=1.0 if i >= 7 else 0.0)
        labelled = rng.random(len(frame)) < 0.85
        write(tmp / "export" / f"{day}" / "categoriser.csv", frame.to_csv(index=False))
        write(tmp / "truth" / f"{day}.csv", pd.DataFrame({"request_id": frame.request_id[labelled],
                                                          "y": [CLASSES[k] for k in y[labelled]]}).to_csv(index=False))
        raw.append(frame.assign(day=day, label=np.where(labelled, y, -99)))
    ref, y_ref = _day(rng, DAYS[0], 2000)
    ref.assign(y=[CLASSES[k] for k in y_ref]).to_parquet(tmp / "ref.parquet")
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    store, profiles = _run(config, DAYS[0], DAYS[-1])
    return {"raw": pd.concat(raw, ignore_index=True), "store": store, "profiles": profiles,
            "reference": ref.assign(label=y_ref)}


def test_week_window_equals_scikit_learn_on_the_raw_rows(world):
    store, raw = world["store"], world["raw"]
    part = store[(store.model_id == "categoriser") & (store.window_start == START)
                 & (store.model_version == ALL_VERSIONS)]
    values = dict(zip(part.metric, part.value, strict=True))
    rows = raw[(raw.day <= DAYS[6]) & (raw.label >= 0)]
    y, d = rows.label.to_numpy(int), rows.category.map(CLASSES.index).to_numpy()
    assert part.n_labelled.iloc[0] == len(rows) and part.n_rows.iloc[0] == (raw.day <= DAYS[6]).sum()
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(y, d), abs=1e-12)
    assert values["f1_macro"] == pytest.approx(skm.f1_score(y, d, average="macro"), abs=1e-12)
    assert values["f1_weighted"] == pytest.approx(skm.f1_score(y, d, average="weighted"), abs=1e-12)
    assert values["precision"] == pytest.approx(skm.precision_score(y, d, average="macro", zero_division=0), abs=1e-12)
    with_p = rows[rows.probs.notna()]  # log loss over the rows that logged probabilities
    proba = np.array([json.loads(t) for t in with_p.probs])
    assert values["log_loss"] == pytest.approx(skm.log_loss(with_p.label, proba, labels=range(4)), rel=1e-9)
    exact = skm.roc_auc_score(with_p.label, proba, multi_class="ovr", average="macro")
    assert abs(values["roc_auc"] - exact) <= values["roc_auc_bound"] + 1e-12
    # the predicted class's drift is named as a categorical feature's; no fairness for multiclass
    assert {f"drift.prediction.{k}" for k in ("psi", "jensenshannon", "chisquare_p_value")} <= set(values)
    assert "drift.shop.psi" in values and not any(m.startswith("fairness.") for m in values)
    ref = world["reference"]  # the reference's own figures beside the window's
    reference = dict(zip(part.metric, part.reference_value, strict=True))
    assert reference["accuracy"] == pytest.approx(
        skm.accuracy_score(ref.label, ref.category.map(CLASSES.index)), abs=1e-12)


def test_the_tilted_days_move_the_predicted_class_drift(world):
    store = world["store"]
    js = store[(store.model_id == "categoriser") & (store.metric == "drift.prediction.jensenshannon")
               & (store.model_version == ALL_VERSIONS)].set_index("window_start").value
    assert js[DAYS[7]] > 2 * js[START]  # the second week's days favour the first class
    profiles = world["profiles"]
    assert profiles.error.isna().all() and len(profiles) == len(DAYS)


def test_the_demo_categoriser_gets_windows(tmp_path):
    demo = load_config()
    model = demo.model("product_categoriser")
    config = replace(demo, models=[model], warehouse_path=str(tmp_path / "wh.duckdb"),
                     reports_dir=str(tmp_path / "reports"))
    first = demo.start_date
    store, profiles = _run(config, first, first + dt.timedelta(days=2))
    assert profiles.error.isna().all() and (profiles.n_labelled > 0).any()
    got = set(store[store.model_id == "product_categoriser"].metric)
    assert {"accuracy", "f1_macro", "log_loss", "roc_auc", "drift.prediction.jensenshannon"} <= got
