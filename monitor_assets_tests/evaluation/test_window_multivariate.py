"""Multivariate drift per evaluation window, drawn from the days' stored samples (issue 24 item 3).

- statistics on samples written to a tiny lake: a correlation flip spread over a week of small days (each too
  small to be flagged reliably alone) is found by the week; a stable 90-day window stays quiet (seeded, and
  counted over several seeds);
- a window's sample takes each day in proportion to its rows (hand-computed counts);
- the pipeline: the samples table, a re-run of one day replaces only that day's rows, a shard only its models';
  the weekly window of the flipped week warns in the store and the check; the 90-day window is recomputed after
  every prediction file is deleted, with the same figures.
"""

import datetime as dt
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats

from monitor_assets import keys
from monitor_assets.config import FeatureConfig, load_config
from monitor_assets.definitions import build_definitions
from monitor_assets.evaluation import logic as E
from monitor_assets.multivariate import logic as MVL
from monitor_assets.stats import multivariate as MV
from monitor_assets.storage import per_model
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.warehouse import connect, replace_partitions_from_frame
from monitor_assets_tests.conftest import CSV_WORLD, write

AUC = MV.DOMAIN_CLASSIFIER
WEEK_START = dt.date(2026, 11, 2)  # a Monday


def _rows(rng, n, rho):
    # x0 and x1 standard normal whatever rho: only how they go together changes
    x0 = rng.normal(0, 1, n)
    x1 = rho * x0 + np.sqrt(1 - rho ** 2) * rng.normal(0, 1, n)
    return pd.DataFrame({"x0": x0, "x1": x1, "x2": rng.normal(5, 2, n),
                         "shop": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2])})


def _model(model_id):
    return type("M", (), {"id": model_id, "features": [FeatureConfig(n, k, n) for n, k in (
        ("x0", "numeric"), ("x1", "numeric"), ("x2", "numeric"), ("shop", "categorical"))]})()


def _store(con, model, frames: dict) -> None:
    sample = pa.concat_tables([MVL.day_sample(model, frame, day) for day, frame in frames.items()])
    replace_partitions_from_frame(con, MVL.SAMPLES, list(frames), sample, models=[model.id])


def _window_sample(con, model, days):
    rows, stored = E.sample_counts(con, [model.id], days)[model.id]
    quotas = E.window_quotas(rows, stored)
    return E.sample_frame(E.read_window_samples(con, {model.id: quotas}), MVL.feature_specs(model)), quotas


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("window_samples")
    rng = np.random.default_rng(11)
    reference = _rows(rng, 30_000, 0.25)
    fitted = MV.fit_reference(reference, MVL.feature_specs(_model("m")))
    with connect(None, str(tmp / "lake")) as con:
        yield con, reference, fitted, rng


def test_a_flip_spread_over_a_week_of_small_days_is_found_by_the_week(lake):
    con, reference, fitted, rng = lake
    model = _model("flip")
    days = [WEEK_START + dt.timedelta(days=i) for i in range(7)]
    frames = {d: _rows(rng, 400, -0.25) for d in days}
    _store(con, model, frames)
    week = pd.concat(frames.values(), ignore_index=True)
    for f in ("x0", "x1"):  # the premise: each marginal is as it was (scipy)
        assert stats.ks_2samp(week[f], reference[f]).pvalue > 0.01
    sample, quotas = _window_sample(con, model, days)
    assert quotas == {d: 400 for d in days} and len(sample) == 2800  # small days: every row
    found = {r.method: r for r in MVL.judged(fitted, sample, 1)}
    assert found[AUC].drifted and found[AUC].statistic >= found[AUC].threshold
    assert {f for f, _ in found[AUC].top_features[:2]} == {"x0", "x1"}
    alone = [{r.method: r for r in MVL.judged(fitted, frame, d.toordinal())}[AUC] for d, frame in frames.items()]
    assert sum(r.drifted for r in alone) < 4, [(r.statistic, r.threshold) for r in alone]
    # the day's threshold is wider than the week's: the week is judged at its own size
    assert alone[0].threshold > found[AUC].threshold


def test_a_stable_ninety_day_window_stays_quiet(lake):
    con, _, fitted, _ = lake
    days = [WEEK_START + dt.timedelta(days=i) for i in range(90)]
    alarms, statistics = 0, []
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        model = _model(f"stable{seed}")
        _store(con, model, {d: _rows(rng, 400, 0.25) for d in days})
        sample, quotas = _window_sample(con, model, days)
        # 36,000 rows: 5,000 drawn, 5,000 x 400 / 36,000 = 55.6 per day, by largest remainder 55 or 56
        assert len(sample) == MV.MAX_ROWS and set(quotas.values()) == {55, 56}
        found = {r.method: r for r in MVL.judged(fitted, sample, seed)}
        statistics.append(found[AUC].statistic)
        if seed == 0:
            assert not found[AUC].drifted, found[AUC]
        alarms += sum(r.drifted for r in found.values())
    assert alarms <= 1, statistics  # calibrated false-alarm rate 0.00135 per statistic and window


def test_the_sample_frame_reshape_equals_the_index_and_steps_aside_when_irregular():
    rng = np.random.default_rng(5)
    model = _model("m")
    frames = {}
    for i in range(3):
        frame = _rows(rng, 40 + i, 0.8)
        frame.loc[rng.random(len(frame)) < 0.1, "x2"] = np.nan
        frame.loc[rng.random(len(frame)) < 0.1, "shop"] = None
        frames[WEEK_START + dt.timedelta(days=i)] = frame
    long = pa.concat_tables([MVL.day_sample(model, f, d) for d, f in frames.items()]).to_pandas()
    long = long.sort_values(["partition_date", "sample_rank", "feature"], ignore_index=True)  # as the read orders it
    long["partition_date"] = pd.to_datetime(long.partition_date)
    specs = MVL.feature_specs(model) + [MVL.FeatureSpec("absent", "numeric"), MVL.FeatureSpec("gone", "categorical")]
    reshaped, indexed = E._reshaped(long, specs), E._reindexed(long, specs)
    assert reshaped is not None and len(reshaped) == sum(len(f) for f in frames.values())
    pd.testing.assert_frame_equal(reshaped, indexed)
    assert reshaped.x2.isna().sum() > 0 and reshaped.shop.isna().sum() > 0 and reshaped.absent.isna().all()
    # a feature's row missing on one sampled row, or a sampled row twice: the index's way, which knows
    irregular = long.drop(index=5).reset_index(drop=True)
    assert E._reshaped(irregular, specs) is None
    pd.testing.assert_frame_equal(E.sample_frame(irregular, specs), E._reindexed(irregular, specs))
    twice = pd.concat([long.iloc[:4], long], ignore_index=True)
    assert E._reshaped(twice, specs) is None


def test_window_quotas_by_hand():
    d = [WEEK_START + dt.timedelta(days=i) for i in range(7)]
    # every row stored: the whole window, up to MAX_ROWS
    assert E.window_quotas({d[0]: 400, d[1]: 300}, {d[0]: 400, d[1]: 300}) == {d[0]: 400, d[1]: 300}
    # a busy day's sample (1,000 of its 1,200 rows) bounds the size: 1,000 x 2,000 / 1,200 = 1,666 rows,
    # 1,666 x 0.2 = 333.2, 333.2, 1,666 x 0.6 = 999.6 -> 333, 333, 1,000 (largest remainder)
    assert E.window_quotas({d[0]: 400, d[1]: 400, d[2]: 1200}, {d[0]: 400, d[1]: 400, d[2]: 1000}) == {
        d[0]: 333, d[1]: 333, d[2]: 1000}
    # a week of busy days: 5,000 / 7 = 714.3 each; the two rows left go to the earliest days
    busy = E.window_quotas({x: 50_000 for x in d}, {x: MVL.SAMPLE_ROWS for x in d})
    assert list(busy.values()) == [715, 715, 714, 714, 714, 714, 714]
    assert E.window_quotas({}, {}) == {} and E.window_quotas({d[0]: 0}, {d[0]: 0}) == {}


def test_the_window_sample_takes_days_in_proportion_to_their_rows(lake):
    con, *_ = lake
    model = _model("volumes")
    rng = np.random.default_rng(5)
    days = [WEEK_START + dt.timedelta(days=i) for i in range(3)]
    frames = {day: _rows(rng, n, 0.25).assign(x2=float(i)) for i, (day, n) in enumerate(zip(days, (300, 600, 1500),
                                                                                               strict=True))}
    _store(con, model, frames)
    stored = con.execute(f"SELECT partition_date, count(DISTINCT sample_rank), max(n_day_rows) FROM {MVL.SAMPLES} "
                         "WHERE model_id = 'volumes' GROUP BY 1 ORDER BY 1").fetchall()
    assert [(n, rows) for _, n, rows in stored] == [(300, 300), (600, 600), (MVL.SAMPLE_ROWS, 1500)]
    sample, quotas = _window_sample(con, model, days)
    # 2,400 rows; the busy day's 1,000 of 1,500 bound the size at 1,000 x 2,400 / 1,500 = 1,600:
    # 1,600 x 300 / 2,400 = 200, x 600 / 2,400 = 400, x 1,500 / 2,400 = 1,000
    assert list(quotas.values()) == [200, 400, 1000]
    assert sample.x2.value_counts().sort_index().tolist() == [200, 400, 1000]  # x2 marks each row's day
    for i, day in enumerate(days):  # real rows of that day, numbers and categories as stored
        mine = sample[sample.x2 == i].merge(frames[day], on=["x0", "x1", "x2", "shop"], how="left", indicator=True)
        assert (mine._merge == "both").all()


# ---------------------------------------------------------------------------------------------------------------
# The pipeline

START = dt.date(2026, 8, 4)
N_DAYS = 90
DAYS = [START + dt.timedelta(days=i) for i in range(N_DAYS)]  # the last, 2026-11-01, a Sunday
FLIP_WEEK = DAYS[-7:]
ROWS = 60

CONFIG = """
partitions: {{start_date: 2026-08-04, end_date: 2026-11-01}}
label_delay_days: 0
evaluation: {{windows: [week, {{rolling_days: 90}}]}}
""" + CSV_WORLD + """models:
  - id: flip
    task: binary_classification
    reference: flip.parquet
    reference_fields: {{score: proba}}
    features: {{x0: numeric, x1: numeric, x2: numeric, shop: categorical}}
  - id: steady
    task: binary_classification
    reference: steady.parquet
    reference_fields: {{score: proba}}
    features: {{x0: numeric, x1: numeric, x2: numeric, shop: categorical}}
"""


def _scored(rng, n, rho):
    frame = _rows(rng, n, rho)
    return frame.assign(proba=1 / (1 + np.exp(-(frame.x0 + frame.x1))))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("window_multivariate")
    rng = np.random.default_rng(24)
    for name in ("flip", "steady"):
        ref = _scored(rng, 6000, 0.8)
        ref.assign(label=(rng.random(len(ref)) < ref.proba).astype(int)).to_parquet(tmp / f"{name}.parquet")
    for i, day in enumerate(DAYS):
        truth = []
        for name in ("flip", "steady"):
            frame = _scored(rng, ROWS, -0.8 if name == "flip" and day in FLIP_WEEK else 0.8)
            frame = frame.assign(request_id=[f"{name}{i}-{k}" for k in range(ROWS)], ts=f"{day:%Y-%m-%d} 09:00")
            write(tmp / "export" / f"{day:%Y-%m-%d}" / f"{name}.csv", frame.to_csv(index=False))
            truth.append(frame.assign(y=(rng.random(ROWS) < frame.proba).astype(int))[["request_id", "y"]])
        write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", pd.concat(truth).to_csv(index=False))
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    job = dg.define_asset_job("window_mv_job", selection=dg.AssetSelection.assets(keys.EVALUATION_STORE).upstream())
    defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[job]))
    # the windows of both models judged in worker processes, as a fleet's are (the model-at-a-time run below
    # judges them here: the two must agree)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(per_model, "PROCESS_MIN_ITEMS", 1)
        patch.setattr(per_model, "ANALYSIS_WORKERS", 2)
        result = defs.resolve_job_def("window_mv_job").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            tags={"dagster/asset_partition_range_start": str(DAYS[0]),
                  "dagster/asset_partition_range_end": str(DAYS[-1])})
    assert result.success
    with connect(None, config.lake_path) as con:
        store = _multivariate(con)
        everything = con.execute(f"SELECT * EXCLUDE (computed_at) FROM {E.STORE}").df()
        samples = con.execute(f"SELECT * FROM {MVL.SAMPLES}").df()
        # a re-run of one day, then one shard's run of another: only their rows are replaced
        MVL.write_multivariate(con, config, [DAYS[10]])
        MVL.write_multivariate(con, config.for_shard(1, 2), [DAYS[20]])
        rerun = con.execute(f"SELECT * FROM {MVL.SAMPLES}").df()
        # the same two steps a model at a time, as a fleet's go MODELS_AT_ONCE models at a time
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(per_model, "MODELS_AT_ONCE", 1)
            MVL.write_multivariate(con, config, DAYS[30:32])
            sliced_samples = con.execute(f"SELECT * FROM {MVL.SAMPLES}").df()
            sliced = E.write_store(con, config, [DAYS[-1]]).frame
    # every prediction file goes: the logs and the lake's predictions tables
    shutil.rmtree(tmp / "export")
    shutil.rmtree(f"{config.lake_path}/raw/predictions")
    with connect(None, config.lake_path) as con:
        rescan = E.write_store(con, config, [DAYS[-1]])
    return {"config": config, "store": store, "samples": samples, "rerun": rerun, "rescan": rescan,
            "sliced_samples": sliced_samples, "sliced": sliced, "everything": everything}


def _multivariate(con):
    store = con.execute(f"SELECT * EXCLUDE (computed_at) FROM {E.STORE} WHERE metric LIKE 'multivariate.%'").df()
    for c in ("window_start", "window_end"):
        store[c] = pd.to_datetime(store[c]).dt.date
    return store


def _values(store, model, window_id):
    part = store[(store.model_id == model) & (store.window_id == window_id)]
    return dict(zip(part.metric, part.value, strict=True)), part


def test_the_samples_table(world):
    samples = world["samples"]
    assert list(TABLES[MVL.SAMPLES][0]) == list(samples.columns)
    per_day = samples.groupby(["model_id", "partition_date"]).agg(n=("sample_rank", "nunique"),
                                                                  rows=("n_day_rows", "max"))
    assert len(per_day) == 2 * N_DAYS and (per_day.n == ROWS).all() and (per_day.rows == ROWS).all()
    assert set(samples.feature) == {"x0", "x1", "x2", "shop"}
    assert samples[samples.feature == "shop"].number.isna().all()
    assert set(samples[samples.feature == "shop"].category) == {"north", "south", "east"}


def test_a_rerun_replaces_its_day_and_a_shard_its_models(world):
    before, after = world["samples"], world["rerun"]
    key = ["model_id", "partition_date", "sample_rank", "feature"]
    merged = before.merge(after, on=key, suffixes=("", "_new"))
    assert len(merged) == len(before) == len(after)
    changed = merged[merged.computed_at != merged.computed_at_new]
    day = pd.to_datetime(changed.partition_date).dt.date
    shard_models = set(world["config"].for_shard(1, 2).model_ids)
    assert set(zip(changed.model_id, day, strict=True)) == {("flip", DAYS[10]), ("steady", DAYS[10])} | {
        (m, DAYS[20]) for m in shard_models}
    assert shard_models == {"steady"}
    # the same seeded rows: a re-run changes nothing but the time stamp
    assert (merged.number.fillna(-1) == merged.number_new.fillna(-1)).all()
    assert (merged.category.fillna("") == merged.category_new.fillna("")).all()


def test_a_model_at_a_time_writes_and_reads_the_same_rows(world):
    # samples: the first model's write clears the days, the second's adds to them; nothing lost or doubled
    before, after = world["rerun"], world["sliced_samples"]
    key = ["model_id", "partition_date", "sample_rank", "feature"]
    merged = before.merge(after, on=key, suffixes=("", "_new"), how="outer", indicator=True)
    assert (merged._merge == "both").all() and len(after) == len(before)
    changed = merged[merged.computed_at != merged.computed_at_new]
    day = pd.to_datetime(changed.partition_date).dt.date
    assert set(zip(changed.model_id, day, strict=True)) == {(m, d) for m in ("flip", "steady") for d in DAYS[30:32]}
    assert (merged.number.fillna(-1) == merged.number_new.fillna(-1)).all()
    assert (merged.category.fillna("") == merged.category_new.fillna("")).all()
    # the windows' multivariate rows: the same figures as the pipeline's run, which held both models at once
    # every other row of those windows too (profiles, performance, drift per feature)
    others = world["sliced"][~world["sliced"].metric.str.startswith(E.MULTIVARIATE_PREFIX)]
    key = ["model_id", "window_id", "model_version", "segment", "metric"]
    joined = others.merge(world["everything"], on=key, suffixes=("", "_store"))
    assert len(others) > 100 and len(joined) == len(others) and set(others.model_id) == {"flip", "steady"}
    assert np.allclose(joined.value.astype(float), joined.value_store.astype(float), equal_nan=True)
    sliced = world["sliced"]
    sliced = sliced[sliced.metric.str.startswith(E.MULTIVARIATE_PREFIX)]
    assert set(sliced.model_id) == {"flip", "steady"} and set(sliced.window_name) == {"week", "rolling_90d"}
    joined = sliced.merge(world["store"], on=["model_id", "window_id", "metric"], suffixes=("", "_store"))
    assert len(joined) == len(sliced)
    for c in ("value", "reference_value", "n_rows"):
        assert np.allclose(joined[c].astype(float), joined[f"{c}_store"].astype(float), equal_nan=True), c


def test_the_flipped_week_warns_and_the_stable_weeks_do_not(world):
    store = world["store"]
    week = f"week:{FLIP_WEEK[0].isoformat()}"
    flip, part = _values(store, "flip", week)
    name = f"multivariate.{AUC}"
    assert flip[f"{name}.drifted"] == 1.0
    threshold = part[part.metric == name].reference_value.iloc[0]
    assert flip[name] >= threshold
    assert (part.n_rows == 7 * ROWS).all() and flip[E.SAMPLE_ROWS_METRIC] == 7 * ROWS
    assert {m.split(".")[-1] for m in flip if m.startswith(f"{name}.feature.")} >= {"x0", "x1"}
    before = f"week:{(FLIP_WEEK[0] - dt.timedelta(days=7)).isoformat()}"
    assert part[part.metric == name].previous_value.iloc[0] == pytest.approx(_values(store, "flip", before)[0][name])
    flagged = store[store.metric.str.endswith(".drifted") & (store.value == 1.0)]
    # no other week of either model, and no window of the steady model
    assert set(zip(flagged.model_id, flagged.window_id, strict=True)) - {("flip", w) for w in flagged.window_id
                                                            if w.startswith("rolling_90d:")} == {("flip", week)}
    assert set(store.window_name) == {"week", "rolling_90d"}
    weeks = [w for w in E.closed_windows(world["config"], DAYS) if w.spec.name == "week"]
    failures = E.window_failures(store, world["config"], weeks)
    multivariate = [f for f in failures for w in f["details"]["windows"] for x in w["warned"]
                    if x["kind"] == "multivariate"]
    # one failure on the week's last day (both methods may warn in it)
    assert {(f["model_id"], f["partition_date"]) for f in multivariate} == {("flip", FLIP_WEEK[-1])}
    assert AUC in multivariate[0]["message"] and "x0" in multivariate[0]["message"]


def test_the_ninety_day_window_reads_no_prediction_file(world):
    frame = world["rescan"].frame
    part = frame[frame.metric.str.startswith("multivariate.") & (frame.window_name == "rolling_90d")]
    assert set(part.model_id) == {"flip", "steady"} and set(part.window_end) == {DAYS[-1]}
    assert (part.n_rows == N_DAYS * ROWS).all()
    stored = world["store"]
    for model in ("flip", "steady"):
        now, _ = _values(part, model, f"rolling_90d:{DAYS[0].isoformat()}")
        then, _ = _values(stored, model, f"rolling_90d:{DAYS[0].isoformat()}")
        assert now[E.SAMPLE_ROWS_METRIC] == MV.MAX_ROWS and now == pytest.approx(then, nan_ok=True)
