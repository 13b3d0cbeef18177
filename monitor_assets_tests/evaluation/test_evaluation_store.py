"""The evaluation store on a small 90-day world: a binary classifier with two versions and a sensitive attribute,
a regressor, and a model whose reference lacks a feature.

- window metrics from merged daily profiles equal scikit-learn / fairlearn / numpy on the window's raw rows;
- the 90-day window is computed after every prediction file (the CSV logs and the lake's tables) is deleted;
- labels that arrive late update that day's profile and the windows holding it;
- the broken reference skips only its own model (an error row per day), and the others are profiled.
"""

import datetime as dt
import json
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio
from sklearn import metrics as skm

from monitor_assets import keys
from monitor_assets.config import load_config
from monitor_assets.definitions import build_definitions
from monitor_assets.evaluation import logic as E
from monitor_assets.evaluation.logic import (
    ALL_VERSIONS,
    PROFILES,
    REFERENCES,
    STORE,
    WINDOW_PICTURES,
    write_store,
)
from monitor_assets.evaluation.settings import parse_evaluation
from monitor_assets.stats.distributions import Comparison
from monitor_assets.stats.profiles import Profile
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import CSV_WORLD, write

START = dt.date(2025, 4, 1)
N_DAYS = 90
DAYS = [START + dt.timedelta(days=i) for i in range(N_DAYS)]
FIRST_RUN_END = DAYS[84]  # the first run stops here; the second runs the last five days
LATE_DAY = DAYS[83]  # part of this day's labels arrive with DAYS[86]'s file
ROWS = {"clf": 160, "reg": 120, "broken": 60}
V2_FROM = 60  # clf serves version v2 beside v1 from this day

CONFIG = """
partitions: {{start_date: 2025-04-01, end_date: 2025-06-29}}
label_delay_days: 3
fairness: {{min_group_size: 30}}
evaluation: {{windows: [week, month, {{rolling_days: 90}}]}}
""" + CSV_WORLD.replace("score: proba}", "score: proba, model_version: version}") + """models:
  - id: clf
    task: binary_classification
    reference: clf.parquet
    reference_fields: {{score: proba}}
    features: {{x0: numeric, x1: numeric, shop: categorical}}
    sensitive_attributes: [region]
  - id: reg
    task: regression
    reference: reg.parquet
    reference_fields: {{score: proba}}
    features: {{a: numeric, shop: categorical}}
  - id: broken
    task: binary_classification
    reference: broken.parquet
    reference_fields: {{score: proba}}
    features: {{x0: numeric, x1: numeric}}
"""
EVALUATION = {"windows": ["week", "month", {"rolling_days": 90}]}


def _clf(rng, n, shift=0.0):
    x0 = rng.normal(shift, 1, n)
    x1 = rng.exponential(1, n)
    x1[rng.random(n) < 0.05] = np.nan  # some missing values
    shop = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1])
    region = rng.choice(["a", "b"], n, p=[0.6, 0.4])
    proba = 1 / (1 + np.exp(-(x0 + np.nan_to_num(x1) - 1 + (region == "a") * 0.3)))
    return pd.DataFrame({"x0": x0, "x1": x1, "shop": shop, "region": region, "proba": proba})


def _reg(rng, n):
    a = rng.normal(10, 3, n)
    shop = rng.choice(["north", "south"], n)
    return pd.DataFrame({"a": a, "shop": shop, "proba": 2 * a + rng.normal(0, 1, n)})


def _truth(frame, rng, task):
    if task == "regression":
        return frame.proba + rng.normal(0, 2, len(frame))
    return (rng.random(len(frame)) < frame.proba).astype(int)


def _run(defs, instance, start, end):
    result = defs.resolve_job_def("evaluation_test_job").execute_in_process(
        instance=instance, tags={"dagster/asset_partition_range_start": str(start),
                                 "dagster/asset_partition_range_end": str(end)})
    assert result.success
    return result


def _read(config):
    with connect(None, config.lake_path) as con:
        profiles = con.execute(f"SELECT * EXCLUDE (computed_at) FROM {PROFILES} ORDER BY ALL").df()
        store = con.execute(f"SELECT * EXCLUDE (computed_at) FROM {STORE} ORDER BY ALL").df()
        refs = con.execute(f"SELECT model_id, fit_key, computed_at FROM {REFERENCES} ORDER BY 1").df()
    profiles["day"] = pd.to_datetime(profiles.partition_date).dt.date
    for c in ("window_start", "window_end"):
        store[c] = pd.to_datetime(store[c]).dt.date
    return profiles, store, refs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(2024)
    refs = {"clf": _clf(rng, 4000), "reg": _reg(rng, 3000), "broken": _clf(rng, 2000).drop(columns="x1")}
    for name, frame in refs.items():
        frame.assign(label=_truth(frame, rng, "regression" if name == "reg" else "binary")).to_parquet(
            tmp / f"{name}.parquet")
    raw, labels = [], {d: [] for d in DAYS}
    for i, day in enumerate(DAYS):
        for name, n in ROWS.items():
            frame = _reg(rng, n) if name == "reg" else _clf(rng, n, shift=0.5 if i >= 70 else 0.0)
            frame["version"] = np.where((i >= V2_FROM) & (rng.random(n) < 0.5), "v2", "v1") if name == "clf" else "v1"
            frame["request_id"] = [f"{name}{i}-{k}" for k in range(n)]
            frame["ts"] = f"{day:%Y-%m-%d} 09:00"
            frame["y"] = _truth(frame, rng, "regression" if name == "reg" else "binary")
            labelled = rng.random(n) < 0.9  # a tenth never gets a label
            late = labelled & (rng.random(n) < 0.4) if day == LATE_DAY else np.zeros(n, bool)
            write(tmp / "export" / f"{day:%Y-%m-%d}" / f"{name}.csv",
                  frame.drop(columns="y").to_csv(index=False))
            labels[day].append(frame.loc[labelled & ~late, ["request_id", "y"]])
            labels[DAYS[86]].append(frame.loc[late, ["request_id", "y"]])
            raw.append(frame.assign(model=name, day=day, label=np.where(labelled, frame.y, np.nan), late=late))
    for day in DAYS:
        write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", pd.concat(labels[day]).to_csv(index=False))
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    assert config.evaluation == parse_evaluation(EVALUATION)  # read from the file's `evaluation:`
    job = dg.define_asset_job("evaluation_test_job",
                              selection=dg.AssetSelection.assets(keys.EVALUATION_STORE).upstream())
    defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[job]))
    instance = dg.DagsterInstance.ephemeral()
    _run(defs, instance, DAYS[0], FIRST_RUN_END)
    before = _read(config)
    _run(defs, instance, DAYS[85], DAYS[-1])
    after = _read(config)
    # every prediction file goes: the logs and the lake's predictions tables; the store must still be computed
    shutil.rmtree(tmp / "export")
    shutil.rmtree(f"{config.lake_path}/raw/predictions")
    with connect(None, config.lake_path) as con:
        run = write_store(con, config, [DAYS[-1]])
    return {"config": config, "raw": pd.concat(raw, ignore_index=True), "before": before, "after": after,
            "rescan": run, "tmp": tmp}


def _rows(world, model, start, end, version=ALL_VERSIONS):
    raw = world["raw"]
    part = raw[(raw.model == model) & (raw.day >= start) & (raw.day <= end)]
    return part if version == ALL_VERSIONS else part[part.version == version]


def _window(store, model, name, start, version=ALL_VERSIONS):
    part = store[(store.model_id == model) & (store.window_name == name) & (store.window_start == start)
                 & (store.model_version == version)]
    return dict(zip(part.metric, part.value, strict=True)), part


@pytest.mark.parametrize("version", ["v1", "v2", ALL_VERSIONS])
def test_classifier_window_equals_scikit_learn_on_the_raw_rows(world, version):
    start, end = dt.date(2025, 6, 2), dt.date(2025, 6, 8)  # a week after v2 came
    values, part = _window(world["after"][1], "clf", "week", start, version)
    rows = _rows(world, "clf", start, end, version)
    lab = rows[rows.label.notna()]
    y, p = lab.label.astype(int), lab.proba
    d = (p >= 0.5).astype(int)
    assert part.n_rows.iloc[0] == len(rows) and part.n_labelled.iloc[0] == len(lab)
    assert part.days_profiled.iloc[0] == (14 if version == ALL_VERSIONS else 7)  # a profile per day and version
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(y, d), abs=1e-12)
    assert values["precision"] == pytest.approx(skm.precision_score(y, d), abs=1e-12)
    assert values["recall"] == pytest.approx(skm.recall_score(y, d), abs=1e-12)
    assert values["f1"] == pytest.approx(skm.f1_score(y, d), abs=1e-12)
    assert values["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-9)
    assert values["brier_score"] == pytest.approx(skm.brier_score_loss(y, p), rel=1e-9)
    assert abs(values["roc_auc"] - skm.roc_auc_score(y, p)) <= values["roc_auc_bound"] + 1e-12
    assert values["drift.x1.missing_share"] == pytest.approx(rows.x1.isna().mean(), abs=1e-12)
    # the reference's own figures beside them
    ref = pd.read_parquet(world["tmp"] / "clf.parquet")
    reference = dict(zip(part.metric, part.reference_value, strict=True))
    assert reference["accuracy"] == pytest.approx(skm.accuracy_score(ref.label, ref.proba >= 0.5), abs=1e-12)
    assert reference["log_loss"] == pytest.approx(skm.log_loss(ref.label, ref.proba), rel=1e-9)
    assert reference["drift.x1.missing_share"] == pytest.approx(ref.x1.isna().mean(), abs=1e-12)


def test_fairness_window_equals_fairlearn(world):
    start, end = dt.date(2025, 5, 1), dt.date(2025, 5, 31)
    values, _ = _window(world["after"][1], "clf", "month", start)
    rows = _rows(world, "clf", start, end)
    pred = (rows.proba >= 0.5).astype(int)
    assert values["fairness.region.demographic_parity_ratio"] == pytest.approx(
        demographic_parity_ratio(pred, pred, sensitive_features=rows.region), abs=1e-12)
    assert values["fairness.region.demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(pred, pred, sensitive_features=rows.region), abs=1e-12)


def test_regressor_window_equals_numpy(world):
    start, end = dt.date(2025, 4, 1), dt.date(2025, 4, 30)
    values, part = _window(world["after"][1], "reg", "month", start)
    lab = _rows(world, "reg", start, end).dropna(subset=["label"])
    assert part.n_labelled.iloc[0] == len(lab)
    assert values["mae"] == pytest.approx(skm.mean_absolute_error(lab.label, lab.proba), rel=1e-12)
    assert values["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(lab.label, lab.proba)), rel=1e-12)
    assert values["r2"] == pytest.approx(skm.r2_score(lab.label, lab.proba), rel=1e-9)


def test_ninety_day_window_without_any_prediction_file(world):
    frame = world["rescan"].frame
    part = frame[(frame.model_id == "clf") & (frame.window_name == "rolling_90d") & (frame.model_version == "*")]
    assert set(part.window_start) == {DAYS[0]} and set(part.window_end) == {DAYS[-1]}
    rows = _rows(world, "clf", DAYS[0], DAYS[-1])
    assert part.n_rows.iloc[0] == len(rows) and part.n_labelled.iloc[0] == rows.label.notna().sum()
    assert part.days_profiled.iloc[0] == N_DAYS + (N_DAYS - V2_FROM)  # one profile per day and version
    values = dict(zip(part.metric, part.value, strict=True))
    lab = rows[rows.label.notna()]
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(lab.label, lab.proba >= 0.5), abs=1e-12)
    # the same figures as the run that could still read the predictions
    stored, _ = _window(world["after"][1], "clf", "rolling_90d", DAYS[0])
    assert values == pytest.approx(stored, nan_ok=True)


def test_drift_shows_the_shift_against_the_previous_window(world):
    # x0 moves by half a standard deviation from day 70 (2025-06-09): the week after is far from the reference,
    # the week before is not; the previous window's value sits beside it
    late, _ = _window(world["after"][1], "clf", "week", dt.date(2025, 6, 16))
    early, part = _window(world["after"][1], "clf", "week", dt.date(2025, 6, 2))
    assert late["drift.x0.jensenshannon"] > 3 * early["drift.x0.jensenshannon"]
    assert late["drift.x0.psi"] > 0.1 > early["drift.x0.psi"]
    prev, _ = _window(world["after"][1], "clf", "week", dt.date(2025, 5, 26))
    row = part[part.metric == "drift.x0.psi"]
    assert row.previous_value.iloc[0] == pytest.approx(prev["drift.x0.psi"])


def test_a_late_label_updates_the_day_and_its_windows(world):
    (p0, s0, _), (p1, s1, _) = world["before"], world["after"]
    rows = _rows(world, "clf", LATE_DAY, LATE_DAY)
    late = int(rows.late.sum())
    assert late > 0

    def labelled(profiles):
        return int(profiles[(profiles.model_id == "clf") & (profiles.day == LATE_DAY)].n_labelled.sum())

    assert labelled(p0) == rows.label.notna().sum() - late
    assert labelled(p1) == rows.label.notna().sum()
    # the profile itself carries them: its confusion counts add up to the labelled rows
    text = p1[(p1.model_id == "clf") & (p1.day == LATE_DAY)].profile.iloc[0]
    b = Profile.from_dict(json.loads(text)).binary
    assert b.tp + b.fp + b.fn + b.tn == b.n_labelled
    week = LATE_DAY - dt.timedelta(days=LATE_DAY.weekday())
    _, w0 = _window(s0, "clf", "week", week)
    _, w1 = _window(s1, "clf", "week", week)
    # after the first run the week held two days, the late labels not among them; then all seven, with them
    assert w0.n_labelled.iloc[0] == _rows(world, "clf", week, FIRST_RUN_END).label.notna().sum() - late
    assert w1.n_labelled.iloc[0] == _rows(world, "clf", week, DAYS[-1]).label.notna().sum()
    assert not w0.complete.iloc[0] and w1.complete.iloc[0]


def test_the_broken_reference_skips_only_its_own_model(world):
    profiles, store, refs = world["after"]
    broken = profiles[profiles.model_id == "broken"]
    assert len(broken) == N_DAYS and broken.profile.isna().all()
    assert broken.error.str.contains("x1").all()
    assert "broken" not in set(store.model_id)
    ok = profiles[profiles.model_id != "broken"]
    assert ok.error.isna().all() and set(ok.model_id) == {"clf", "reg"}
    assert set(refs.model_id) == {"clf", "reg"}
    assert {"clf", "reg"} <= set(store.model_id)


def test_reports_for_closed_windows(world):
    folder = world["tmp"] / "reports" / "evaluation" / "clf"
    md = (folder / "week_2025-06-16.md").read_text()
    assert "accuracy" in md and "x0" in md
    html = (folder / "month_2025-05-01.html").read_text()
    assert html.startswith("<!doctype html>") and "region" in html
    # a month still open at the last day has no report
    assert not (folder / "month_2025-06-01.md").exists()


def test_window_drift_verdicts_pictures_and_warnings(world):
    # x0 moves by half a standard deviation from 2025-06-09: the week of 06-16 has drifted past the threshold, the
    # week of 06-02 has not (nor has any other feature of either)
    store = world["after"][1]
    late, _ = _window(store, "clf", "week", dt.date(2025, 6, 16))
    early, _ = _window(store, "clf", "week", dt.date(2025, 6, 2))
    assert late["drift.x0.drifted"] == 1.0 and late["drift.x0.evidence"] > 1
    assert late["drift.x0.evidence"] == pytest.approx(late["drift.x0.wasserstein"] / late["drift.x0.threshold"])
    assert {m: v for m, v in early.items() if m.startswith("drift.") and m.endswith(".drifted")} == {
        "drift.x0.drifted": 0.0, "drift.x1.drifted": 0.0, "drift.shop.drifted": 0.0}
    with connect(None, world["config"].lake_path) as con:
        pictures = con.execute(f"SELECT * FROM {WINDOW_PICTURES} WHERE model_id = 'clf'").df()
        # the threshold is the daily drift's: the noise scale comes from the stored fine reference counts
        ref = E.stored_references(con, [m for m in world["config"].models if m.id == "clf"])["clf"]
        scales = E.reference_scales(con, next(m for m in world["config"].models if m.id == "clf"), ref)
    assert set(scales) == {"x0", "x1"}
    week = pictures[(pictures.window_id == "week:2025-06-16") & (pictures.feature == "x0")]
    assert len(week) == 1 and week.method.iloc[0] == "wasserstein"
    buckets = Comparison.buckets_from_json(week.bins.iloc[0])
    rows = _rows(world, "clf", dt.date(2025, 6, 16), dt.date(2025, 6, 22))
    assert sum(b.current_count for b in buckets) == len(rows) == week.n_current.iloc[0]
    inner = [b for b in buckets if b.lo is not None and b.hi is not None]
    counts, _ = np.histogram(rows.x0, bins=np.r_[[b.lo for b in inner], inner[-1].hi])
    assert [b.current_count for b in inner] == counts.tolist()
    assert not len(pictures[pictures.window_id == "week:2025-06-02"])
    # the closed week's report shows it and says the check warned on drift; the check's failure names the window
    folder = world["tmp"] / "reports" / "evaluation" / "clf"
    html = (folder / "week_2025-06-16.html").read_text()
    assert "Drifted features: reference against the window" in html and "warned</strong> on drift" in html
    assert "nothing warned" in (folder / "week_2025-06-02.md").read_text()
    windows = [w for w in E.closed_windows(world["config"], DAYS) if w.spec.name == "week"]
    failures = E.window_failures(store, world["config"], windows)
    flagged = {(f["model_id"], str(f["partition_date"])): f for f in failures}
    assert ("clf", "2025-06-22") in flagged and ("clf", "2025-06-08") not in flagged
    assert flagged[("clf", "2025-06-22")]["message"].startswith("week 2025-06-16..06-22: ")
    assert "x0 (" in flagged[("clf", "2025-06-22")]["message"]
    # before the shift no week warns on performance or drift (clf's reference itself has a parity ratio near the
    # four-fifths bound, so a week may warn on fairness, judged as the daily fairness check judges a day)
    early_kinds = {x["kind"] for k, f in flagged.items() if k[1] < "2025-06-09"
                   for w in f["details"]["windows"] for x in w["warned"]}
    assert early_kinds <= {"fairness"}, [f["message"] for f in failures]
