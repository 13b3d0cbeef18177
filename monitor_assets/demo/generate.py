"""Deterministic demo data for a retail e-commerce shop.

Three models are trained with scikit-learn on a seeded training set and score every logged request,
so an injected drift or concept change moves real model outputs and real metrics; a product categoriser
(multiclass) and a home page recommender (a ranker: ranked lists, clicks, carts and purchases as late
interactions) have generators of their own. Every request carries a market (a segment column). Incidents are
injected on fixed dates and listed in `incidents.yaml`; every other day is drawn from the training
distribution. Whatever was added later (markets, the categoriser, the recommender) draws from generators of its
own, so every value the demo had before is unchanged.

    python -m monitor_assets.demo.generate [--out data/demo] [--days 30] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

START = dt.date(2026, 10, 1)
SEED = 20261001


def day(n: int) -> dt.date:
    return START + dt.timedelta(days=n)


# Fixed incident dates (day offsets from START) -----------------------------------------------
CORRUPTED_DAY = 5          # fraud_detector log with malformed lines, nulls, bad scores, duplicates
LATE_LABEL_DAY = 7         # labels for this day's predictions arrive 8 days late
DRIFT_DAYS = range(11, 16)  # fraud_detector: amount shifts up, payment mix moves to gift cards
SPIKE_DAY = 13             # demand_forecaster: latency x6 and 8% errors
EMPTY_DAY = 18             # purchase_propensity: no log file at all
CONCEPT_FROM = 20          # purchase_propensity: buyers stop responding to discounts
BIAS_DAYS = range(23, 27)  # fraud_detector: customers aged 65+ get inflated fraud scores
CANARY_FROM = 23           # purchase_propensity: a version retrained on recent data serves 10% ...
CANARY_SHARE = 0.10
PROMOTED_FROM = 27         # ... and all traffic from here on
SHIFT_DAYS = range(27, 30)  # fraud_detector: a reseller's orders, all alike, take over its traffic ...
SHIFT_LABELS_DAY = 31       # ... and their labels (chargebacks) all land on this day, after the demo's 30 days
SEGMENT_DAYS = range(11, 13)  # purchase_propensity: a DE mobile app release swaps features, its scores go wrong
COLLAPSE_DAYS = range(16, 18)  # home_recommender: the candidate service fails, lists fill with the same bestsellers
RETRAINED_VERSION = "2026.10.1"
LABEL_DELAY_LATE = 8
# Fraud is rare (about 2.5% of orders): 5,000 reference rows hold about 125 frauds, too few for a narrow band on
# its estimated ROC AUC (the band's own-error part comes from reference chunks); 20,000 hold about 500.
REFERENCE_EXTRA = {"fraud_detector": 15000}


@dataclass
class Model:
    id: str
    task: str
    version: str
    numeric: list[str]
    categorical: list[str]
    attributes: list[str]
    per_day: int
    latency_ms: float


FRAUD = Model("fraud_detector", "binary_classification", "2026.09.2",
              ["amount", "hour_of_day", "account_age_days", "items_in_cart", "shipping_distance_km"],
              ["payment_method", "device"], ["customer_age_band"], 1800, 35.0)
CONVERSION = Model("purchase_propensity", "binary_classification", "2026.08.1",
                   ["price", "discount_pct", "product_rating", "session_views", "days_since_last_visit"],
                   ["category", "device"], ["gender"], 1800, 60.0)
DEMAND = Model("demand_forecaster", "regression", "2026.09.0",
               ["price", "store_size_sqm", "temperature_c", "last_week_units"],
               ["promo", "category"], ["region"], 600, 120.0)
MODELS = (FRAUD, CONVERSION, DEMAND)

AGE_BANDS, AGE_P = ["18-25", "26-40", "41-65", "65+"], [0.2, 0.4, 0.3, 0.1]
PAYMENTS, PAY_P = ["card", "paypal", "gift_card", "bnpl"], [0.55, 0.25, 0.08, 0.12]
PAY_P_DRIFT = [0.35, 0.2, 0.3, 0.15]
PAY_P_SHIFT = [0.7, 0.3, 0.0, 0.0]
DEVICES, DEV_P = ["mobile", "desktop", "app"], [0.5, 0.3, 0.2]
DEV_P_SHIFT = [0.6, 0.4, 0.0]
CATEGORIES = ["electronics", "fashion", "home", "beauty", "sports", "toys"]
CAT_P = [0.2, 0.3, 0.2, 0.12, 0.1, 0.08]
GENDERS, GEN_P = ["female", "male", "unspecified"], [0.5, 0.45, 0.05]
REGIONS, REG_P = ["north", "south", "east", "west"], [0.3, 0.3, 0.2, 0.2]
# Every model serves four markets (a segment column: `segments:` in monitor.yaml). Markets come from generators of
# their own (MARKET_SEED, CATEGORISER_MARKET_SEED offsets), so every value the demo had before markets is unchanged.
MARKETS, MARKET_P = ["DE", "FR", "NL", "ES"], [0.4, 0.25, 0.15, 0.2]
MARKET_SEED, CATEGORISER_MARKET_SEED, RANKER_SEED = 4, 5, 6
SEGMENT_MARKET, SEGMENT_DEVICE = "DE", "mobile"
SEGMENT_BROKEN_SHARE = 0.3  # 30% of DE mobile's requests get a score from swapped features (shown as 1 - score)


def markets(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(MARKETS, n, p=MARKET_P)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def fraud_rows(rng: np.random.Generator, n: int, drifted: bool = False, shifted: bool = False) -> pd.DataFrame:
    """`drifted`: larger amounts, more gift cards. `shifted`: a covariate shift that leaves the fraud mechanism as
    it is but moves the orders to where the model cannot tell them apart (a reseller's web checkout: new accounts,
    business hours, near-identical baskets and distances, card or PayPal, no app), so its ROC AUC falls to about
    0.55 and the estimate can see it. Both draw the same numbers from `rng` as an ordinary day (then transform
    them), so every later day stays as it was."""
    amount = rng.lognormal(3.8, 0.7, n) * (1.6 if drifted else 1.0)
    hour = rng.integers(0, 24, n)
    age = rng.exponential(400, n)
    items = rng.poisson(2.0, n) + 1
    distance = rng.gamma(2.0, 60.0, n)
    payment = rng.choice(PAYMENTS, n, p=PAY_P_DRIFT if drifted else PAY_P_SHIFT if shifted else PAY_P)
    if shifted:
        amount = np.exp(3.8 + 0.1 * (np.log(amount) - 3.8))
        hour, age, distance = 8 + hour % 12, age * 0.02, 120 + 0.1 * (distance - 120)
    df = pd.DataFrame({
        "amount": amount.round(2),
        "hour_of_day": hour,
        "account_age_days": age.round(0),
        "items_in_cart": items,
        "shipping_distance_km": distance.round(1),
        "payment_method": payment,
        "device": rng.choice(DEVICES, n, p=DEV_P_SHIFT if shifted else DEV_P),
        "customer_age_band": rng.choice(AGE_BANDS, n, p=AGE_P),
    })
    # The true fraud mechanism: large, late-night, new-account, far, gift-card orders.
    logit = (-4.2 + 0.9 * np.log(df.amount / 45) + 0.9 * (df.hour_of_day < 5)
             - 0.0035 * df.account_age_days + 0.004 * df.shipping_distance_km
             + 1.3 * (df.payment_method == "gift_card") + 0.4 * (df.device == "app"))
    df["label"] = (rng.random(n) < _sigmoid(logit)).astype(int)
    return df


def conversion_rows(rng: np.random.Generator, n: int, concept_changed: bool = False) -> pd.DataFrame:
    df = pd.DataFrame({
        "price": rng.lognormal(3.5, 0.8, n).round(2),
        "discount_pct": rng.choice([0, 0, 0, 5, 10, 15, 20, 30], n).astype(float),
        "product_rating": np.clip(rng.normal(4.0, 0.6, n), 1, 5).round(1),
        "session_views": rng.poisson(4.0, n) + 1,
        "days_since_last_visit": rng.exponential(12, n).round(0),
        "category": rng.choice(CATEGORIES, n, p=CAT_P),
        "device": rng.choice(DEVICES, n, p=DEV_P),
        "gender": rng.choice(GENDERS, n, p=GEN_P),
    })
    if concept_changed:  # discounts stop working, heavy browsers stop buying: same inputs, new truth
        logit = (-1.2 - 0.25 * np.log(df.price / 30) - 0.02 * df.discount_pct
                 + 0.2 * (df.product_rating - 4) - 0.3 * (df.session_views - 4) - 0.01 * df.days_since_last_visit)
    else:
        logit = (-2.2 - 0.5 * np.log(df.price / 30) + 0.08 * df.discount_pct
                 + 0.9 * (df.product_rating - 4) + 0.25 * (df.session_views - 4)
                 - 0.04 * df.days_since_last_visit + 0.3 * (df.device == "app"))
    df["label"] = (rng.random(n) < _sigmoid(logit)).astype(int)
    return df


def demand_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    df = pd.DataFrame({
        "price": rng.lognormal(3.0, 0.5, n).round(2),
        "store_size_sqm": rng.choice([400, 800, 1500, 3000], n).astype(float),
        "temperature_c": rng.normal(14, 6, n).round(1),
        "last_week_units": rng.poisson(30, n).astype(float),
        "promo": rng.choice(["no", "yes"], n, p=[0.8, 0.2]),
        "category": rng.choice(CATEGORIES, n, p=CAT_P),
        "region": rng.choice(REGIONS, n, p=REG_P),
    })
    mean = (0.6 * df.last_week_units + 0.004 * df.store_size_sqm - 0.15 * df.price
            + 8 * (df.promo == "yes") + 0.2 * np.abs(df.temperature_c - 14))
    df["label"] = rng.poisson(np.clip(mean, 0.5, None)).astype(float)
    return df


ROWS = {FRAUD.id: fraud_rows, CONVERSION.id: conversion_rows, DEMAND.id: demand_rows}


def train(model: Model, rng: np.random.Generator, concept_changed: bool = False) -> tuple:
    size = 16000 if model.task != "regression" else 8000
    data = conversion_rows(rng, size, concept_changed=True) if concept_changed else ROWS[model.id](rng, size)
    pre = ColumnTransformer([("num", StandardScaler(), model.numeric),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), model.categorical)])
    est = (LogisticRegression(max_iter=500) if model.task != "regression"
           else HistGradientBoostingRegressor(max_iter=150, random_state=0))
    pipe = make_pipeline(pre, est).fit(data[model.numeric + model.categorical], data["label"])
    return pipe, data


def score(model: Model, pipe, df: pd.DataFrame) -> np.ndarray:
    X = df[model.numeric + model.categorical]
    if model.task == "regression":
        return np.clip(pipe.predict(X), 0, None)
    return pipe.predict_proba(X)[:, 1]


def _r(x: float, digits: int = 4):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), digits)


def log_lines(model: Model, df: pd.DataFrame, d: dt.date, rng: np.random.Generator,
              latency_factor: float = 1.0, error_share: float = 0.002, versions: np.ndarray | None = None) -> list[dict]:
    n = len(df)
    seconds = np.sort(rng.integers(0, 86400, n))
    latency = rng.gamma(4.0, model.latency_ms / 4.0, n) * latency_factor
    errors = rng.random(n) < error_share
    out_key = "prediction" if model.task == "regression" else "score"
    records = []
    for i, row in enumerate(df.itertuples(index=False)):
        row = row._asdict()
        ts = dt.datetime.combine(d, dt.time()) + dt.timedelta(seconds=int(seconds[i]), milliseconds=int(i % 1000))
        rec = {
            "timestamp": ts.isoformat(timespec="milliseconds") + "Z",
            "level": "ERROR" if errors[i] else "INFO",
            "logger": f"serving.{model.id}",
            "message": "feature store timeout" if errors[i] else "prediction served",
            "prediction_id": f"{model.id[:3]}-{d:%Y%m%d}-{i:06d}",
            "model_id": model.id,
            "model_version": model.version if versions is None else str(versions[i]),
            "latency_ms": round(float(latency[i]), 1),
            "status": "error" if errors[i] else "ok",
            "features": {f: (_r(row[f], 2) if f in model.numeric else row[f])
                         for f in model.numeric + model.categorical},
            "context": {a: row[a] for a in [*model.attributes, "market"] if a in row},
            out_key: None if errors[i] else _r(row["model_output"], 4),
        }
        records.append(rec)
    return records


def _without_market(rec: dict) -> dict:
    return {**rec, "context": {k: v for k, v in rec["context"].items() if k != "market"}}


def corrupt(records: list[dict], rng: np.random.Generator) -> tuple[list[str], dict]:
    """Damage a batch the ways real logs get damaged; return the lines and what was done."""
    lines = [json.dumps(r, separators=(",", ":")) for r in records]
    idx = rng.permutation(len(lines))
    counts = {"malformed_json": 25, "missing_prediction_id": 10, "missing_score": 10,
              "out_of_range_score": 15, "wrong_type_latency": 8, "non_finite_number": 6,
              "unknown_model_id": 5, "duplicate_prediction_id": 12}
    pos = 0
    for kind, k in counts.items():
        for j in idx[pos:pos + k]:
            rec = dict(records[j])
            if kind == "malformed_json":  # cut where it was cut before markets were logged: the same bytes
                lines[j] = lines[j][: len(json.dumps(_without_market(rec), separators=(",", ":"))) // 2]
                continue
            if kind == "missing_prediction_id":
                rec["prediction_id"] = None
            elif kind == "missing_score":
                rec.pop("score", None)
            elif kind == "out_of_range_score":
                rec["score"] = float(rng.choice([1.7, -0.3, 12.0]))
            elif kind == "wrong_type_latency":
                rec["latency_ms"] = "fast"
            elif kind == "non_finite_number":
                lines[j] = json.dumps(rec, separators=(",", ":")).replace(
                    f'"latency_ms":{rec["latency_ms"]}', '"latency_ms":NaN')
                continue
            elif kind == "unknown_model_id":
                rec["model_id"] = "legacy_fraud_v1"
            lines[j] = json.dumps(rec, separators=(",", ":"))
        pos += k
    # Duplicates: copies of good lines appended (the client retried and logged twice).
    dup_sources = idx[pos:pos + counts["duplicate_prediction_id"]]
    lines.extend(lines[j] for j in dup_sources)
    return lines, counts


def write_jsonl_gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())


def generate(out: Path, days: int = 30, scale: float = 1.0, seed: int = SEED) -> dict:
    rng = np.random.default_rng(seed)
    market_rng = np.random.default_rng(seed + MARKET_SEED)
    out.mkdir(parents=True, exist_ok=True)
    fitted = {}
    for model in MODELS:
        pipe, _ = train(model, rng)
        ref = ROWS[model.id](rng, int(5000 * max(scale, 0.2)))
        if extra := int(REFERENCE_EXTRA.get(model.id, 0) * max(scale, 0.2)):
            # from a generator of its own, so every other number of the demo is what it was before
            ref = pd.concat([ref, ROWS[model.id](np.random.default_rng(seed + 2), extra)], ignore_index=True)
        ref["score"] = score(model, pipe, ref).round(4)
        ref["market"] = markets(market_rng, len(ref))
        ref_path = out / "reference" / f"{model.id}.parquet"
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref.to_parquet(ref_path, index=False)
        fitted[model.id] = pipe

    # The retrained conversion model and its traffic split draw from their own generator, so every other
    # number of the demo is what it was before the canary existed.
    canary_rng = np.random.default_rng(seed + 1)
    retrained, _ = train(CONVERSION, canary_rng, concept_changed=True)

    labels_by_arrival: dict[dt.date, list[tuple]] = {}
    corrupted_counts: dict = {}
    for n in range(days):
        d = day(n)
        for model in MODELS:
            size = int(model.per_day * scale * (1.0 + 0.15 * (d.weekday() >= 5)) * rng.normal(1.0, 0.04))
            if model is FRAUD:
                df = fraud_rows(rng, size, drifted=n in DRIFT_DAYS, shifted=n in SHIFT_DAYS)
            elif model is CONVERSION:
                df = conversion_rows(rng, size, concept_changed=n >= CONCEPT_FROM)
            else:
                df = demand_rows(rng, size)
            s = score(model, fitted[model.id], df)
            if model is FRAUD and n in BIAS_DAYS:  # a bad feature join inflates scores for one group
                senior = (df.customer_age_band == "65+").to_numpy()
                s = np.where(senior, np.clip(s * 4 + 0.35, 0, 1), s)
            market = markets(market_rng, len(df))
            if model is CONVERSION and n in SEGMENT_DAYS:  # one market's mobile traffic scored wrongly
                hit = ((market == SEGMENT_MARKET) & (df.device == SEGMENT_DEVICE).to_numpy()
                       & (market_rng.random(len(df)) < SEGMENT_BROKEN_SHARE))
                s = np.where(hit, 1 - s, s)
            versions = None
            if model is CONVERSION and n >= CANARY_FROM:
                share = 1.0 if n >= PROMOTED_FROM else CANARY_SHARE
                new = canary_rng.random(len(df)) < share
                s = np.where(new, score(model, retrained, df), s)
                versions = np.where(new, RETRAINED_VERSION, model.version)
            df["model_output"] = s
            df["market"] = market
            spike = model is DEMAND and n == SPIKE_DAY
            records = log_lines(model, df, d, rng, latency_factor=6.0 if spike else 1.0,
                                error_share=0.08 if spike else 0.002, versions=versions)
            if model is CONVERSION and n == EMPTY_DAY:
                continue  # the logging sidecar was down: no file for this day
            if model is FRAUD and n == CORRUPTED_DAY:
                lines, corrupted_counts = corrupt(records, rng)
            else:
                lines = [json.dumps(r, separators=(",", ":")) for r in records]
            write_jsonl_gz(out / "predictions" / f"{d}" / f"{model.id}.jsonl.gz", lines)
            # Labels: 1-3 days later (8 for the late day; the shift's on SHIFT_LABELS_DAY), for served predictions only.
            delays = rng.integers(1, 4, len(df))
            if n == LATE_LABEL_DAY and model is not DEMAND:
                delays[:] = LABEL_DELAY_LATE
            if model is FRAUD and n in SHIFT_DAYS:
                delays[:] = SHIFT_LABELS_DAY - n
            for rec, delay, label in zip(records, delays, df["label"], strict=True):
                if rec["status"] != "ok" or rec.get("prediction_id") is None:
                    continue
                arrival = d + dt.timedelta(days=int(delay))
                labels_by_arrival.setdefault(arrival, []).append((rec["prediction_id"], model.id, label))

    categorised = categoriser_data(out, days, scale, seed)
    ranker_data(out, days, scale, seed)
    for n in range(days):
        d = day(n)
        rows = labels_by_arrival.get(d, [])
        # the categoriser's labels are class names, after the others' (whose rows stay as they were)
        rows = [(pid, m, f"{label:.0f}") for pid, m, label in rows] + categorised.get(d, [])
        frame = pd.DataFrame(rows, columns=["prediction_id", "model_id", "label"])
        path = out / "labels" / f"{d}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
            f.write(frame.to_csv(index=False).encode())
        write_business_day(out, d, rng, scale, concept_changed=n >= CONCEPT_FROM)

    incidents = {
        "start_date": str(START),
        "days": days,
        "incidents": [
            {"kind": "corrupted_batch", "model_id": FRAUD.id, "dates": [str(day(CORRUPTED_DAY))],
             "details": corrupted_counts},
            {"kind": "late_labels", "model_id": [FRAUD.id, CONVERSION.id], "dates": [str(day(LATE_LABEL_DAY))],
             "details": {"label_delay_days": LABEL_DELAY_LATE}},
            {"kind": "feature_drift", "model_id": FRAUD.id, "dates": [str(day(n)) for n in DRIFT_DAYS],
             "features": ["amount", "payment_method"]},
            {"kind": "latency_error_spike", "model_id": DEMAND.id, "dates": [str(day(SPIKE_DAY))],
             "details": {"latency_factor": 6, "error_rate": 0.08}},
            {"kind": "no_logs", "model_id": CONVERSION.id, "dates": [str(day(EMPTY_DAY))]},
            # the days the drifted version serves (most of) the traffic; the retrained one takes over after
            {"kind": "concept_drift", "model_id": CONVERSION.id,
             "dates": [str(day(n)) for n in range(CONCEPT_FROM, min(PROMOTED_FROM, days))], "metric": "roc_auc"},
            {"kind": "bias", "model_id": FRAUD.id, "dates": [str(day(n)) for n in BIAS_DAYS],
             "attribute": "customer_age_band", "group": "65+"},
            {"kind": "canary", "model_id": CONVERSION.id, "version": RETRAINED_VERSION,
             "dates": [str(day(n)) for n in range(CANARY_FROM, PROMOTED_FROM)],
             "details": {"traffic_share": CANARY_SHARE, "all_traffic_from": str(day(PROMOTED_FROM)),
                         "trained_on": "data after the concept drift"}},
            # labels late: the estimate finds the drop (check estimated_performance_within_baseline) before
            # any label of these days lands; the run of labels_arrive reconciles it with the realized metric
            {"kind": "covariate_shift", "model_id": FRAUD.id, "dates": [str(day(n)) for n in SHIFT_DAYS if n < days],
             "features": ["amount", "hour_of_day", "account_age_days", "shipping_distance_km", "payment_method",
                          "device"],
             "metric": "roc_auc", "details": {"labels_arrive": str(day(SHIFT_LABELS_DAY))}},
            # one segment breaks while the whole model stays within its threshold (check
            # segment_performance_within_baseline names the segment)
            {"kind": "segment_degradation", "model_id": CONVERSION.id, "dates": [str(day(n)) for n in SEGMENT_DAYS],
             "segment": f"market={SEGMENT_MARKET}, device={SEGMENT_DEVICE}", "metric": "roc_auc",
             "details": {"scored_wrongly": SEGMENT_BROKEN_SHARE}},
            # found without labels on its first day (check ranking_drift_within_threshold); its NDCG@10 falls below
            # the baseline once the interactions land (ranking_performance_within_baseline)
            {"kind": "popularity_collapse", "model_id": RANKER_ID, "dates": [str(day(n)) for n in COLLAPSE_DAYS],
             "metric": "ndcg_at_10", "details": {"bestsellers_shown": COLLAPSE_POOL,
                                                 "labels_complete": str(day(max(COLLAPSE_DAYS) + 3))}},
        ],
    }
    (out / "incidents.yaml").write_text(yaml.safe_dump(incidents, sort_keys=False))
    return incidents


def write_business_day(out: Path, d: dt.date, rng: np.random.Generator, scale: float,
                       concept_changed: bool) -> None:
    """Sessions with view/click/add_to_cart/purchase events, and the day's order lines."""
    sessions = int(900 * scale * (1.15 if d.weekday() >= 5 else 1.0))
    buy_p = 0.045 if concept_changed else 0.06
    events, orders = [], []
    for s in range(sessions):
        sid, user = f"s{d:%Y%m%d}{s:05d}", f"u{rng.integers(1, 20000):05d}"
        start = dt.datetime.combine(d, dt.time()) + dt.timedelta(seconds=int(rng.integers(0, 86000)))
        for k in range(int(rng.integers(1, 6))):
            product = f"p{rng.integers(1, 500):04d}"
            rec = bool(rng.random() < 0.35)
            events.append((sid, user, start + dt.timedelta(seconds=20 * k), "view", product, rec))
            if rng.random() < 0.3:
                events.append((sid, user, start + dt.timedelta(seconds=20 * k + 5), "click", product, rec))
        if rng.random() < buy_p * 3:
            product = f"p{rng.integers(1, 500):04d}"
            events.append((sid, user, start + dt.timedelta(seconds=200), "add_to_cart", product, False))
            if rng.random() < 1 / 3:
                events.append((sid, user, start + dt.timedelta(seconds=260), "purchase", product, False))
                order = f"o{d:%Y%m%d}{s:05d}"
                for _ in range(int(rng.integers(1, 4))):
                    orders.append((order, start + dt.timedelta(seconds=260), user, f"p{rng.integers(1, 500):04d}",
                                   int(rng.integers(1, 4)), round(float(rng.lognormal(3.3, 0.6)), 2)))
    inter = pd.DataFrame(events, columns=["session_id", "user_id", "timestamp", "event", "product_id",
                                          "from_recommendation"])
    sales = pd.DataFrame(orders, columns=["order_id", "timestamp", "user_id", "product_id", "quantity",
                                          "unit_price"])
    for name, frame in (("interactions", inter), ("sales", sales)):
        path = out / name / f"{d}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
            f.write(frame.to_csv(index=False).encode())


# The product categoriser (multiclass): its own generator, so every other number of the demo is unchanged.
PRODUCT_CLASSES = ["electronics", "fashion", "home", "beauty", "toys"]
CATEGORISER_ID, CATEGORISER_VERSION, CATEGORISER_PER_DAY = "product_categoriser", "2026.09.1", 600


def product_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Catalogue items: price, title length, image count and the seller tier; the true class drives them."""
    y = rng.choice(len(PRODUCT_CLASSES), n, p=[0.25, 0.3, 0.2, 0.15, 0.1])
    centre = np.array([4.8, 3.6, 4.0, 3.0, 3.3])[y]
    return pd.DataFrame({
        "price": np.exp(rng.normal(centre, 0.45)).round(2),
        "title_words": (rng.poisson(np.array([9, 6, 7, 5, 8])[y]) + 1).astype(float),
        "image_count": (rng.poisson(np.array([5, 3, 4, 2, 3])[y]) + 1).astype(float),
        "seller_tier": rng.choice(["small", "pro"], n, p=[0.6, 0.4]),
        "label": y,
    })


def categoriser_data(out: Path, days: int, scale: float, seed: int) -> dict[dt.date, list[tuple]]:
    """The categoriser's reference and logs; returns its labels by arrival day (prediction_id, model, class)."""
    rng = np.random.default_rng(seed + 3)
    market_rng = np.random.default_rng(seed + CATEGORISER_MARKET_SEED)
    numeric = ["price", "title_words", "image_count"]
    train_rows = product_rows(rng, 8000)
    # the seller tier is a sensitive attribute, not an input: the model never sees it
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(train_rows[numeric], train_rows.label)

    def probabilities(df: pd.DataFrame) -> np.ndarray:
        p = pipe.predict_proba(df[numeric]).round(4)
        # rounded, still summing to 1: the largest takes the rounding (the last could go below 0)
        top = p.argmax(axis=1)
        rows = np.arange(len(p))
        p[rows, top] = 0.0
        p[rows, top] = (1 - p.sum(axis=1)).round(4)
        return p

    ref = product_rows(rng, int(5000 * max(scale, 0.2)))
    p = probabilities(ref)
    ref_out = ref.drop(columns="label").assign(
        label=[PRODUCT_CLASSES[i] for i in ref.label], decision=[PRODUCT_CLASSES[i] for i in p.argmax(axis=1)],
        probabilities=[json.dumps([float(v) for v in row]) for row in p], market=markets(market_rng, len(ref)))
    ref_out.to_parquet(out / "reference" / f"{CATEGORISER_ID}.parquet", index=False)
    labels: dict[dt.date, list[tuple]] = {}
    for n in range(days):
        d = day(n)
        df = product_rows(rng, int(CATEGORISER_PER_DAY * scale * rng.normal(1.0, 0.04)))
        p = probabilities(df)
        seconds = np.sort(rng.integers(0, 86400, len(df)))
        latency = rng.gamma(4.0, 10.0, len(df))
        market = markets(market_rng, len(df))
        lines = []
        for i, row in enumerate(df.itertuples(index=False)):
            ts = dt.datetime.combine(d, dt.time()) + dt.timedelta(seconds=int(seconds[i]))
            pid = f"cat-{d:%Y%m%d}-{i:06d}"
            lines.append(json.dumps({
                "timestamp": ts.isoformat(timespec="milliseconds") + "Z", "prediction_id": pid,
                "model_id": CATEGORISER_ID, "model_version": CATEGORISER_VERSION,
                "latency_ms": round(float(latency[i]), 1), "status": "ok",
                "features": {"price": row.price, "title_words": row.title_words, "image_count": row.image_count},
                "context": {"seller_tier": row.seller_tier, "market": str(market[i])},
                "decision": PRODUCT_CLASSES[int(p[i].argmax())], "probabilities": [float(v) for v in p[i]],
            }, separators=(",", ":")))
            arrival = d + dt.timedelta(days=int(rng.integers(1, 4)))
            labels.setdefault(arrival, []).append((pid, CATEGORISER_ID, PRODUCT_CLASSES[row.label]))
        write_jsonl_gz(out / "predictions" / f"{d}" / f"{CATEGORISER_ID}.jsonl.gz", lines)
    return labels


# The home page recommender (task: ranking): its own generator, so every other number of the demo is unchanged.
RANKER_ID, RANKER_VERSION, RANKER_PER_DAY, RANKER_LIST = "home_recommender", "2026.09.4", 400, 10
CATALOGUE = [f"p{i:04d}" for i in range(1, 401)]  # the ids the shop's interaction and sales logs use
CANDIDATES = 40  # the candidate generator's pool per request; the model ranks it and shows the top RANKER_LIST
COLLAPSE_POOL = 12  # on a collapse day the pool falls back to this many bestsellers, the same for everyone
RANKER_REFERENCE_REQUESTS = 6000  # 15 days' worth: the drift check calibrates on day-sized chunks of it


def _popularity(rng: np.random.Generator) -> np.ndarray:
    """Long-tailed popularity (Zipf-like, exponent 0.9) over the catalogue in a shuffled order: a few
    bestsellers take a large share of views, most products few."""
    weight = 1.0 / np.arange(1, len(CATALOGUE) + 1) ** 0.9
    return rng.permutation(weight / weight.sum())


def ranked_requests(rng: np.random.Generator, n: int, popularity: np.ndarray, collapsed: bool = False) -> dict:
    """`n` requests: each draws a candidate pool by popularity (without replacement, Gumbel top-k), the user's
    appeal of each candidate (personal taste plus a little popularity), the model's score (the appeal seen with
    noise) and shows the top RANKER_LIST by score. What the user does comes from the appeal and the position:
    click, then add to cart, then purchase. A collapsed day's pool is the COLLAPSE_POOL bestsellers ranked by
    popularity alone, whatever the user likes. Returns item codes, scores and grades (0-3) in shown order."""
    log_pop = np.log(popularity)
    if collapsed:
        pool = np.tile(np.argsort(-popularity)[:COLLAPSE_POOL], (n, 1))
    else:
        keys = log_pop + rng.gumbel(size=(n, len(CATALOGUE)))
        pool = np.argpartition(-keys, CANDIDATES, axis=1)[:, :CANDIDATES]
    appeal = rng.normal(0.0, 1.0, pool.shape) + 0.3 * (log_pop[pool] - log_pop.mean())
    noise = rng.normal(0.0, 0.8, pool.shape)
    raw = log_pop[pool] + 0.05 * noise if collapsed else appeal + noise
    order = np.argsort(-raw, axis=1, kind="stable")[:, :RANKER_LIST]
    items = np.take_along_axis(pool, order, 1)
    shown_appeal = np.take_along_axis(appeal, order, 1)
    scores = _sigmoid(np.take_along_axis(raw, order, 1) - (log_pop.max() if collapsed else 1.0)).round(4)
    position = np.arange(RANKER_LIST)
    click = rng.random(items.shape) < _sigmoid(-4.2 + 1.3 * shown_appeal - 0.12 * position)
    cart = click & (rng.random(items.shape) < _sigmoid(-1.0 + 0.7 * shown_appeal))
    bought = cart & (rng.random(items.shape) < 0.45)
    grades = click.astype(int) + cart.astype(int) + bought.astype(int)
    return {"items": items, "scores": scores, "grades": grades}


EVENTS = ("click", "add_to_cart", "purchase")  # grades 1, 2, 3 (ranking.relevance in monitor.yaml)


def ranker_data(out: Path, days: int, scale: float, seed: int) -> None:
    """The recommender's reference (impressions with their best event), its daily logs (one JSON line per request
    with its ranked list) and its interactions (clicks, carts, purchases), which land 1-3 days after the request
    like every label of the demo, in files of their own."""
    rng = np.random.default_rng(seed + RANKER_SEED)
    popularity = _popularity(rng)
    ref = ranked_requests(rng, int(RANKER_REFERENCE_REQUESTS * max(scale, 0.2)), popularity)
    n_ref, k = ref["items"].shape
    pd.DataFrame({
        "request_id": np.repeat([f"ref-{i:06d}" for i in range(n_ref)], k),
        "item_id": np.asarray(CATALOGUE)[ref["items"].ravel()],
        "rank": np.tile(np.arange(1, k + 1), n_ref),
        "score": ref["scores"].ravel(),
        "event": [EVENTS[g - 1] if g else None for g in ref["grades"].ravel()],
    }).to_parquet(out / "reference" / f"{RANKER_ID}.parquet", index=False)
    events_by_arrival: dict[dt.date, list[tuple]] = {}
    for n in range(days):
        d = day(n)
        size = int(RANKER_PER_DAY * scale * (1.0 + 0.15 * (d.weekday() >= 5)) * rng.normal(1.0, 0.04))
        req = ranked_requests(rng, size, popularity, collapsed=n in COLLAPSE_DAYS)
        seconds = np.sort(rng.integers(0, 86400, size))
        latency = rng.gamma(4.0, 20.0, size)
        market = markets(rng, size)
        device = rng.choice(DEVICES, size, p=DEV_P)
        delays = rng.integers(1, 4, size)
        lines = []
        for i in range(size):
            ts = dt.datetime.combine(d, dt.time()) + dt.timedelta(seconds=int(seconds[i]))
            rid = f"rec-{d:%Y%m%d}-{i:05d}"
            shown = [CATALOGUE[j] for j in req["items"][i]]
            lines.append(json.dumps({
                "timestamp": ts.isoformat(timespec="milliseconds") + "Z", "request_id": rid, "model_id": RANKER_ID,
                "model_version": RANKER_VERSION, "latency_ms": round(float(latency[i]), 1), "status": "ok",
                "context": {"market": str(market[i]), "device": str(device[i])},
                "items": [{"item_id": item, "score": float(sc)} for item, sc in zip(shown, req["scores"][i],
                                                                                   strict=True)],
            }, separators=(",", ":")))
            arrival = d + dt.timedelta(days=int(delays[i]))
            for item, g in zip(shown, req["grades"][i], strict=True):
                for e in EVENTS[:g]:  # a purchase follows an add to cart, which follows a click
                    events_by_arrival.setdefault(arrival, []).append((rid, item, e))
        write_jsonl_gz(out / "rankings" / f"{d}" / f"{RANKER_ID}.jsonl.gz", lines)
    for n in range(days):
        d = day(n)
        frame = pd.DataFrame(events_by_arrival.get(d, []), columns=["request_id", "item_id", "event"])
        path = out / "ranking_events" / f"{d}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
            f.write(frame.to_csv(index=False).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "data" / "demo"))
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    incidents = generate(Path(args.out), args.days, args.scale)
    print(f"wrote {args.days} days of demo data to {args.out} with {len(incidents['incidents'])} incidents")


if __name__ == "__main__":
    main()
