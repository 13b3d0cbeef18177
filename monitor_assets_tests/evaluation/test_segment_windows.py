"""The evaluation store per segment (issue 24 item 1, segments of issue 23): a classifier segmented by market,
device and market x device over two weeks, run twice on the same data: with `segments:` and without.

- the merged window profile of 'market=DE, device=mobile' has the counts of exactly those raw rows, and its
  metrics equal scikit-learn's / fairlearn's on them; its reference value is scikit-learn's on the reference's
  DE mobile rows (the segment's own reference);
- the whole model's profiles and store rows are the same with segments as without;
- a segment below `min_rows` in the window has its n_rows and no metric, judged against nothing;
- profile rows written before the `segment` column existed read as the whole model's and still merge;
- the cap pools the smaller segments as '<column>=(other)'.
"""

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from fairlearn.metrics import demographic_parity_ratio
from sklearn import metrics as skm

from monitor_assets import keys
from monitor_assets.config import load_config
from monitor_assets.definitions import build_definitions
from monitor_assets.evaluation import logic as E
from monitor_assets.evaluation.logic import ALL_VERSIONS, PROFILES, STORE
from monitor_assets.stats import profiles as P
from monitor_assets.storage.warehouse import connect, replace_partitions_from_frame
from monitor_assets_tests.conftest import CSV_WORLD, write

START = dt.date(2025, 3, 3)  # a Monday: two whole weeks
DAYS = [START + dt.timedelta(days=i) for i in range(14)]
MIN_ROWS = 100
MARKETS, MARKET_P = ["DE", "FR", "UK"], [0.3, 0.35, 0.35]
DEVICES, DEVICE_P = ["mobile", "desktop"], [0.4, 0.6]
TINY = 3  # rows of market LU per day: 21 a week, below MIN_ROWS

CONFIG = """
partitions: {{start_date: 2025-03-03, end_date: 2025-03-16}}
label_delay_days: 1
fairness: {{min_group_size: 20}}
evaluation: {{windows: [week]}}
""" + CSV_WORLD + """models:
  - id: checkout
    task: binary_classification
    reference: ref.parquet
    reference_fields: {{score: proba}}
    features: {{x: numeric, shop: categorical}}
    sensitive_attributes: [region]
"""
SEGMENTS = "    segments: {{by: [market, device, [market, device]], min_rows: " + str(MIN_ROWS) + "}}\n"
DE_MOBILE = "market=DE, device=mobile"


def _rows(rng, n, tiny=0):
    market = np.r_[rng.choice(MARKETS, n, p=MARKET_P), ["LU"] * tiny]
    n += tiny
    device = rng.choice(DEVICES, n, p=DEVICE_P)
    # DE scores differently from the others, so its own reference differs from the model's
    x = rng.normal(0, 2.0, n) + np.where(market == "DE", 1.0, 0.0)
    x[rng.random(n) < 0.03] = np.nan
    shop = rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2])
    region = rng.choice(["a", "b"], n, p=[0.6, 0.4])
    p = 1 / (1 + np.exp(-(1.2 * np.nan_to_num(x) + 0.2 - 0.8 * (device == "mobile"))))
    y = (rng.random(n) < p).astype(int)
    return pd.DataFrame({"x": x, "shop": shop, "region": region, "proba": p, "market": market,
                         "device": device}), y


def _run(config, tmp):
    job = dg.define_asset_job("segment_windows_job", selection=dg.AssetSelection.assets(keys.EVALUATION_STORE).upstream())
    defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[job]))
    result = defs.resolve_job_def("segment_windows_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), tags={"dagster/asset_partition_range_start": str(DAYS[0]),
                                                       "dagster/asset_partition_range_end": str(DAYS[-1])})
    assert result.success
    with connect(None, config.lake_path) as con:
        profiles = con.execute(f"SELECT * EXCLUDE (computed_at) FROM {PROFILES} ORDER BY ALL").df()
        store = con.execute(f"SELECT * EXCLUDE (computed_at) FROM {STORE} ORDER BY ALL").df()
    profiles["day"] = pd.to_datetime(profiles.partition_date).dt.date
    store["window_start"] = pd.to_datetime(store.window_start).dt.date
    return profiles, store


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rng = np.random.default_rng(7)
    ref, y = _rows(rng, 6000, tiny=5)
    ref = ref.assign(label=y)
    days = []
    for i, day in enumerate(DAYS):
        frame, y = _rows(rng, 1500, tiny=TINY)
        frame = frame.assign(request_id=[f"r{i}-{k}" for k in range(len(frame))], ts=f"{day:%Y-%m-%d} 10:00",
                             y=y, labelled=rng.random(len(frame)) < 0.9, day=day)
        days.append(frame)
    raw = pd.concat(days, ignore_index=True)
    out = {"raw": raw, "ref": ref}
    for name, segments in (("segmented", SEGMENTS), ("whole", "")):
        tmp = tmp_path_factory.mktemp(name)
        ref.to_parquet(tmp / "ref.parquet")
        for day, frame in zip(DAYS, days, strict=True):
            frame.drop(columns=["y", "labelled", "day"]).to_csv(
                write(tmp / "export" / f"{day:%Y-%m-%d}" / "checkout.csv", ""), index=False)
            frame.loc[frame.labelled, ["request_id", "y"]].to_csv(write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", ""),
                                                                    index=False)
        config = load_config(write(tmp / "monitor.yaml", (CONFIG + segments).format(tmp=tmp)))
        out[name] = (config, *_run(config, tmp))
    return out


def _segment(store, segment, start):
    part = store[(store.segment == segment) & (store.window_start == start) & (store.model_version == ALL_VERSIONS)]
    return dict(zip(part.metric, part.value, strict=True)), part


@pytest.mark.parametrize("start", DAYS[::7])
def test_de_mobile_window_equals_scikit_learn_on_exactly_its_rows(world, start):
    _, profiles, store = world["segmented"]
    raw = world["raw"]
    end = start + dt.timedelta(days=6)
    rows = raw[(raw.day >= start) & (raw.day <= end) & (raw.market == "DE") & (raw.device == "mobile")]
    lab = rows[rows.labelled]
    # the merged daily profiles of the segment count exactly its rows
    mine = profiles[(profiles.segment == DE_MOBILE) & (profiles.day >= start) & (profiles.day <= end)]
    assert len(mine) == 7
    merged = P.merge([P.Profile.from_dict(json.loads(t)) for t in mine.profile])
    assert merged.n_rows == len(rows) and merged.n_labelled == len(lab)
    assert merged.numeric["x"].n_missing == rows.x.isna().sum()
    shop = merged.categorical["shop"]
    assert shop.counts == rows.shop.value_counts().to_dict() and shop.other == shop.unseen == 0
    b = merged.binary
    tn, fp, fn, tp = skm.confusion_matrix(lab.y, lab.proba >= 0.5).ravel()
    assert (b.tp, b.fp, b.fn, b.tn) == (tp, fp, fn, tn)
    # and the store's rows of the segment's window are its metrics
    values, part = _segment(store, DE_MOBILE, start)
    assert set(part.n_rows) == {len(rows)} and set(part.n_labelled) == {len(lab)}
    assert values["n_rows"] == len(rows)
    d = (lab.proba >= 0.5).astype(int)
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(lab.y, d), abs=1e-12)
    assert values["precision"] == pytest.approx(skm.precision_score(lab.y, d), abs=1e-12)
    assert values["recall"] == pytest.approx(skm.recall_score(lab.y, d), abs=1e-12)
    assert values["f1"] == pytest.approx(skm.f1_score(lab.y, d), abs=1e-12)
    assert values["log_loss"] == pytest.approx(skm.log_loss(lab.y, lab.proba), rel=1e-9)
    assert abs(values["roc_auc"] - skm.roc_auc_score(lab.y, lab.proba)) <= values["roc_auc_bound"] + 1e-12
    assert values["drift.x.missing_share"] == pytest.approx(rows.x.isna().mean(), abs=1e-12)
    pred = (rows.proba >= 0.5).astype(int)
    assert values["fairness.region.demographic_parity_ratio"] == pytest.approx(
        demographic_parity_ratio(pred, pred, sensitive_features=rows.region), abs=1e-12)
    # judged against the segment's own reference rows (6000 reference rows hold about 720 of DE mobile)
    ref = world["ref"]
    own = ref[(ref.market == "DE") & (ref.device == "mobile")]
    assert set(part.reference_source) == {"segment"}
    reference = dict(zip(part.metric, part.reference_value, strict=True))
    assert reference["n_rows"] == len(own)
    assert reference["accuracy"] == pytest.approx(skm.accuracy_score(own.label, own.proba >= 0.5), abs=1e-12)
    assert reference["accuracy"] != pytest.approx(skm.accuracy_score(ref.label, ref.proba >= 0.5), abs=1e-6)
    if start == DAYS[7]:  # the previous week's value beside it
        before, _ = _segment(store, DE_MOBILE, DAYS[0])
        assert part[part.metric == "accuracy"].previous_value.iloc[0] == pytest.approx(before["accuracy"])


def test_segment_drift_is_against_its_own_reference(world):
    # DE's x sits one unit above the other markets' in the reference and in production alike: against DE's own
    # reference rows it has not drifted, while the whole reference would see a shift of about half a std
    _, _, store = world["segmented"]
    values, _ = _segment(store, "market=DE", DAYS[0])
    assert values["drift.x.drifted"] == 0.0
    raw, ref = world["raw"], world["ref"]
    de = raw[(raw.market == "DE") & (raw.day <= DAYS[6])].x.dropna()
    assert de.mean() - ref.x.mean() > 0.4  # what the model's reference would have judged


def test_whole_model_rows_are_unchanged_by_segments(world):
    _, p_seg, s_seg = world["segmented"]
    _, p_whole, s_whole = world["whole"]
    assert set(p_whole.segment) == {""} and set(s_whole.segment) == {""}
    # DuckDB returns a day's rows in no fixed order, so float sums may differ in the last bit and groups come in
    # another order: the profiles are compared as data (counts exactly, sums to 1e-12)
    whole_profiles = p_seg[p_seg.segment == ""].reset_index(drop=True)
    assert len(whole_profiles) == len(p_whole) == len(DAYS)
    for a, b in zip(whole_profiles.profile, p_whole.profile, strict=True):
        _same(json.loads(a), json.loads(b))
    assert (whole_profiles.bytes - p_whole.bytes).abs().max() <= 2  # a float's last digit in the JSON
    columns = [c for c in p_whole.columns if c not in ("profile", "bytes")]
    pd.testing.assert_frame_equal(whole_profiles[columns], p_whole[columns].reset_index(drop=True))
    whole_store = s_seg[s_seg.segment == ""].reset_index(drop=True)
    pd.testing.assert_frame_equal(whole_store, s_whole.reset_index(drop=True), check_exact=False, rtol=1e-12)
    # every other row is a segment's: the three segmentations, LU included
    segments = set(s_seg.segment) - {""}
    assert {"market=DE", "market=LU", "device=mobile", DE_MOBILE, "market=LU, device=desktop"} <= segments
    assert len(segments) == 4 + 2 + 8


def test_a_segment_below_min_rows_has_its_rows_and_no_metric(world):
    _, _, store = world["segmented"]
    raw = world["raw"]
    for start in DAYS[::7]:
        values, part = _segment(store, "market=LU", start)
        rows = raw[(raw.market == "LU") & (raw.day >= start) & (raw.day <= start + dt.timedelta(days=6))]
        assert len(rows) == 7 * TINY < MIN_ROWS
        assert values == {"n_rows": len(rows)}
        assert part.n_labelled.iloc[0] == rows.labelled.sum()
        # the reference holds 5 LU rows: too few for its own reference
        assert part.reference_source.iloc[0] == "model" and part.reference_value.iloc[0] == 5


def test_profile_rows_without_a_segment_column_still_merge(world, tmp_path):
    """Rows written before the column existed (a Delta table without `segment`) read as the whole model's, beside
    a day written now, and merge into the same week as the store's."""
    config, profiles, store = world["whole"]
    week = profiles[(profiles.day <= DAYS[6])].drop(columns=["day", "segment"])
    old, new = week[week.partition_date != week.partition_date.max()], week[week.partition_date == week.partition_date.max()]
    lake_path = tmp_path / "lake"
    schema = pa.schema([("partition_date", pa.date32()), ("model_id", pa.string()), ("model_version", pa.string()),
                        ("layout", pa.string()), ("n_rows", pa.int64()), ("n_labelled", pa.int64()),
                        ("bytes", pa.int64()), ("profile", pa.string()), ("error", pa.string()),
                        ("computed_at", pa.timestamp("us", tz="UTC"))])  # the table as the last release wrote it
    data = old.assign(partition_date=pd.to_datetime(old.partition_date).dt.date, computed_at=pd.Timestamp.now(tz="UTC"))
    write_deltalake(str(lake_path / "monitoring" / "daily_profiles"),
                    pa.Table.from_pandas(data[schema.names], schema=schema, preserve_index=False),
                    partition_by=["partition_date"])
    with connect(None, str(lake_path)) as con:
        assert con.execute(f"SELECT count(*), count(segment) FROM {PROFILES}").fetchall() == [(6, 0)]
        replace_partitions_from_frame(con, PROFILES, [DAYS[6]], new.assign(segment=""), models=["checkout"])
        assert con.execute(f"SELECT count(*), count(segment) FROM {PROFILES}").fetchall() == [(7, 1)]
        found = E.load_profiles(con, ["checkout"], DAYS[:7])
    assert list(found) == ["checkout"] and list(found["checkout"]) == [""]
    merged = P.merge([p for day in DAYS[:7] for p in found["checkout"][""][day]])
    values, part = _segment(store, "", DAYS[0])
    assert merged.days == 7 and merged.n_rows == part.n_rows.iloc[0]
    assert merged.metrics()["accuracy"] == values["accuracy"]


def test_the_cap_pools_the_smaller_segments(monkeypatch):
    monkeypatch.setattr(E, "SEGMENT_CAP", 2)
    names = pd.Series(["market=DE"] * 5 + ["market=FR"] * 3 + ["market=UK"] * 4 + ["market=LU"])
    # the reference keeps DE and FR: UK and LU pool, however large UK is today
    assert cap_counts(E.cap_segments(names, ("market",), ["market=DE", "market=FR"])) == {
        "market=DE": 5, "market=FR": 3, "market=(other)": 5}
    # one kept from the reference leaves room for the day's largest new one
    assert cap_counts(E.cap_segments(names, ("market",), ["market=FR"])) == {
        "market=DE": 5, "market=FR": 3, "market=(other)": 5}
    # no reference for it: the day's two largest
    assert cap_counts(E.cap_segments(names, ("market",), None)) == {"market=DE": 5, "market=UK": 4,
                                                                    "market=(other)": 4}
    assert E.other_segment(("market", "device")) == "market=(other), device=(other)"


def _same(a, b):
    """Equal JSON data: dicts by key, ints exactly, floats to 1e-12."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-12, abs=1e-12)
    else:
        assert a == b


def cap_counts(series: pd.Series) -> dict:
    return series.value_counts().to_dict()


@pytest.mark.parametrize("classifier", [True, False])
def test_fairness_summary_equals_fairness_table(classifier):
    """The profiles' pandas-free disparities are stats.fairness' figures: groups below the minimum size, groups
    without labelled positives or negatives, a single eligible group, ties."""
    from monitor_assets.stats.fairness import fairness_table

    rng = np.random.default_rng(3)
    counts = {}
    for a in range(60):
        groups = {}
        for g in range(int(rng.integers(1, 5))):
            n = int(rng.choice([5, 40, 300]))
            lab = int(rng.integers(0, n + 1))
            pos = int(rng.integers(0, lab + 1)) if rng.random() > 0.15 else 0
            tp, fp = int(rng.integers(0, pos + 1)), int(rng.integers(0, lab - pos + 1))
            sel = tp + fp + int(rng.integers(0, n - lab + 1))
            groups[f"g{g}"] = [n, sel, lab, tp, fp, pos - tp, lab - pos - fp, float(rng.random() * lab)]
        counts[f"a{a}"] = groups
    counts["tie"] = {"x": [100, 50, 100, 30, 20, 20, 30, 0.0], "y": [100, 40, 100, 20, 20, 30, 30, 0.0]}
    summary = P.fairness_summary(counts, classifier, 30)
    table = fairness_table(P.fairness_frame(counts), classifier, 30)
    for attribute, part in table.groupby("attribute"):
        first = part.iloc[0]
        if classifier:
            for metric, value in summary[attribute].items():
                assert value == pytest.approx(first[metric], rel=0, abs=0, nan_ok=True), (attribute, metric)
        else:
            eligible = part[~part.below_min_size.astype(bool)]
            lo, hi = eligible.mae.min(), eligible.mae.max()
            expected = lo / hi if len(eligible) > 1 and hi > 0 else np.nan
            assert summary[attribute]["mae_ratio"] == pytest.approx(expected, rel=0, abs=0, nan_ok=True)
    assert set(summary) == set(counts)
    assert sum(np.isfinite(v) for s in summary.values() for v in s.values()) > 20  # not a comparison of NaNs


def test_the_window_report_lists_the_segments(world):
    config, _, store = world["segmented"]
    md = (Path(config.reports_dir) / "evaluation" / "checkout" / "week_2025-03-10.md").read_text()
    values, part = _segment(store, DE_MOBILE, DAYS[7])
    line = next(x for x in md.splitlines() if x.startswith(f"| {DE_MOBILE} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == str(int(values["n_rows"])) and cells[3] == f"{values['roc_auc']:.4g}"
    lu = next(x for x in md.splitlines() if x.startswith("| market=LU |"))
    assert "too few rows" in lu
    assert "| market=DE |" in md and "| device=mobile |" in md


def test_a_multiclass_models_segments(tmp_path):
    """A multiclass model segmented by channel: the web segment's week is scikit-learn's on its rows."""
    from monitor_assets_tests.evaluation import test_multiclass_windows as M

    rng = np.random.default_rng(5)
    raw = []
    for day in M.DAYS[:7]:
        frame, y = M._day(rng, day, 200)
        write(tmp_path / "export" / f"{day}" / "categoriser.csv", frame.to_csv(index=False))
        write(tmp_path / "truth" / f"{day}.csv",
              pd.DataFrame({"request_id": frame.request_id, "y": [M.CLASSES[k] for k in y]}).to_csv(index=False))
        raw.append(frame.assign(label=y))
    ref, y_ref = M._day(rng, M.DAYS[0], 1500)
    ref.assign(y=[M.CLASSES[k] for k in y_ref]).to_parquet(tmp_path / "ref.parquet")
    config = load_config(write(tmp_path / "monitor.yaml", M.CONFIG.replace(
        "end_date: 2025-06-10", "end_date: 2025-06-08").format(tmp=tmp_path)
        + "    segments: {by: [channel], min_rows: 50}\n"))
    store, profiles = M._run(config, M.DAYS[0], M.DAYS[6])
    assert set(profiles.segment) == {"", "channel=web", "channel=app"}
    values, part = _segment(store, "channel=web", M.START)
    rows = pd.concat(raw)
    rows = rows[rows.channel == "web"]
    assert values["n_rows"] == len(rows) == part.n_labelled.iloc[0]
    assert values["accuracy"] == pytest.approx(
        skm.accuracy_score(rows.label, rows.category.map(M.CLASSES.index)), abs=1e-12)
    assert set(part.reference_source) == {"segment"}


def test_segment_names_are_spelt_as_segment_performance_spells_them():
    """One spelling (storage.sql.segment_sql) for the profiles, monitoring.segment_performance and history:
    `name=value` joined by ', ', NULL as (missing), quotes kept."""
    import duckdb

    from monitor_assets.storage.sql import segment_sql

    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('DE', 'mobile'), (NULL, 'app'), ('O''Hara', NULL)) "
                "AS v(market, device)")
    names = {cross: sorted(r[0] for r in con.execute(
        f"SELECT {segment_sql(cross, {n: f'{chr(34)}{n}{chr(34)}' for n in cross})} FROM t").fetchall())
        for cross in [("market",), ("market", "device")]}
    assert names[("market",)] == ["market=(missing)", "market=DE", "market=O'Hara"]
    assert names[("market", "device")] == ["market=(missing), device=app", "market=DE, device=mobile",
                                          "market=O'Hara, device=(missing)"]
