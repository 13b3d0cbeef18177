"""The demo's retraining entry point (`retraining.entry_point: monitor_assets.demo.retrain:retrain`).

It really retrains: the model's labelled predictions of the last `DAYS` days up to the request (features
from the model's own predictions table, labels from raw.labels) train a scikit-learn pipeline of the
same kind the demo generator uses (logistic regression for classifiers, gradient boosting for
regressors); 20% of the rows are held out to report a score. The fitted pipeline goes to
`<output_dir>/model.joblib`, with `model.json` describing it. A real pipeline would start a training
job instead; see README, "Plug in your training pipeline".
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import joblib
import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mean_absolute_error, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from monitor_assets.config import load_config
from monitor_assets.retraining.logic import RetrainingRequest
from monitor_assets.storage.lake import model_table
from monitor_assets.storage.reads import latest_labels_sql
from monitor_assets.storage.sql import quote_ident
from monitor_assets.storage.warehouse import connect

DAYS = 7
MIN_ROWS = 200


def retrain(request: RetrainingRequest) -> dict:
    config = load_config(request.config_file)
    model = config.model(request.model_id)
    last = request.opened_on
    first = last - dt.timedelta(days=DAYS - 1)
    with connect(request.warehouse_path, request.lake_path, models=[model.id]) as con:
        table = model_table(model.id)
        present = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        columns = {}
        for f in model.features:
            column = f.source if f.source in present else f.name
            if column not in present:
                raise ValueError(f"{model.id}: feature {f.name} has no column in {table}")
            columns[f.name] = column
        picks = ", ".join(f"p.{quote_ident(c)} AS {quote_ident(n)}" for n, c in columns.items())
        data = con.execute(f"""
            SELECT {picks}, l.label FROM {table} AS p
            JOIN ({latest_labels_sql(since="?::DATE")}) AS l USING (prediction_id)
            WHERE p.partition_date BETWEEN ? AND ? AND p.is_ok AND l.label IS NOT NULL""",
                           [first, first, last]).df()
    if len(data) < MIN_ROWS:
        raise ValueError(f"{model.id}: {len(data)} labelled rows between {first} and {last}; {MIN_ROWS} needed")
    numeric = [f.name for f in model.features if f.type == "numeric"]
    categorical = [f.name for f in model.features if f.type == "categorical"]
    data[categorical] = data[categorical].astype(str)
    pre = ColumnTransformer([("num", StandardScaler(), numeric),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), categorical)])
    estimator = (LogisticRegression(max_iter=500) if model.is_classifier
                 else HistGradientBoostingRegressor(max_iter=150, random_state=0))
    holdout = np.random.default_rng(request.request_id).random(len(data)) < 0.2
    train, test = data[~holdout], data[holdout]
    y_train = train.label.astype(int) if model.is_classifier else train.label
    pipe = make_pipeline(pre, estimator).fit(train[numeric + categorical].fillna(0), y_train)
    x_test = test[numeric + categorical].fillna(0)
    if model.is_classifier:
        score = {"holdout_roc_auc": round(float(roc_auc_score(test.label.astype(int),
                                                              pipe.predict_proba(x_test)[:, 1])), 4)}
    else:
        score = {"holdout_mae": round(float(mean_absolute_error(test.label, pipe.predict(x_test))), 4)}
    out = Path(request.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.joblib"
    joblib.dump(pipe, path)
    info = {"model_id": model.id, "retrained_from": request.model_version, "request_id": request.request_id,
            "trained_on": f"{first}..{last}", "rows": int(len(train)), "holdout_rows": int(len(test)), **score,
            "model_path": str(path)}
    (out / "model.json").write_text(json.dumps(info, indent=2))
    return info
