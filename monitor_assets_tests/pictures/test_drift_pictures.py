"""The drift_distributions asset on a small world: one model's amount and channel shift on the last days while a
second model stays as it was. The pictures of each drifted feature-day equal a direct numpy / pandas count of the
raw rows (CSV logs and the reference file); stable days and the stable model get none; a model whose reference
turns unreadable skips only its own pictures (logged, its earlier rows kept)."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from monitor_assets import keys
from monitor_assets.config import load_config
from monitor_assets.definitions import build_definitions
from monitor_assets.pictures.defs import build_pictures_definitions
from monitor_assets.pictures.logic import DISTRIBUTIONS
from monitor_assets.stats.distributions import ABOVE, BELOW, MAX_BINS, MISSING, OTHER, Comparison
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import CSV_WORLD, write

DAYS = pd.date_range("2025-05-01", periods=5, freq="D")
SHIFT = 3  # from the fourth day, shop's amount and channel move (and so does its score)
REF_ROWS, DAY_ROWS = 4000, 1500
CHANNELS = ["web", "app", "store", "phone"]

CONFIG = """
partitions: {{start_date: 2025-05-01, end_date: 2025-05-05}}
""" + CSV_WORLD + """models:
  - id: shop
    task: binary_classification
    reference: shop.parquet
    reference_fields: {{score: proba}}
    features: {{amount: numeric, channel: categorical, age: numeric}}
  - id: quiet
    task: binary_classification
    reference: quiet.parquet
    reference_fields: {{score: proba}}
    features: {{amount: numeric, channel: categorical}}
  - id: fragile
    task: binary_classification
    reference: fragile.parquet
    reference_fields: {{score: proba}}
    features: {{amount: numeric, channel: categorical}}
"""


def _rows(rng, n, shifted=False):
    amount = rng.lognormal(3.0 + (0.6 if shifted else 0.0), 0.5, n)
    channel = rng.choice(CHANNELS, n, p=[0.1, 0.2, 0.3, 0.4] if shifted else [0.4, 0.3, 0.2, 0.1]).astype(object)
    channel[rng.random(n) < 0.02] = None  # a few missing
    age = rng.normal(40, 10, n)
    proba = 1 / (1 + np.exp(-(np.log(amount) - 3.0)))
    return pd.DataFrame({"amount": amount, "channel": channel, "age": age, "proba": proba})


def _labelled(frame, rng):
    return frame.assign(label=(rng.random(len(frame)) < frame.proba).astype(int))


def _defs(config):
    """The pipeline (with the pictures stage merged in until definitions.py wires it) and a job of the asset and
    what it reads."""
    pipeline = build_definitions(config)
    wired = keys.DRIFT_DISTRIBUTIONS in {k for a in pipeline.assets or [] for k in a.keys}
    job = dg.define_asset_job("pictures_test_job", selection=dg.AssetSelection.assets(keys.DRIFT_DISTRIBUTIONS)
                              .upstream())
    only = dg.define_asset_job("pictures_only_job", selection=dg.AssetSelection.assets(keys.DRIFT_DISTRIBUTIONS))
    stage = [] if wired else [build_pictures_definitions(config)]
    return dg.Definitions.merge(pipeline, *stage, dg.Definitions(jobs=[job, only]))


def _run(defs, instance, job, start, end):
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end})


def _read(config):
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        pictures = con.execute(f"SELECT * FROM {DISTRIBUTIONS} ORDER BY ALL").df()
        drift = con.execute("SELECT partition_date, model_id, feature, role, kind, drifted FROM monitoring.feature_drift"
                            ).df()
    for frame in (pictures, drift):
        frame["day"] = pd.to_datetime(frame.partition_date).dt.date
    return pictures, drift


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(7)
    refs = {m: _labelled(_rows(rng, REF_ROWS), rng) for m in ("shop", "quiet", "fragile")}
    for m, ref in refs.items():
        ref.to_parquet(tmp / f"{m}.parquet")
    days = {}
    for i, day in enumerate(DAYS):
        frames = {"shop": _rows(rng, DAY_ROWS, i >= SHIFT), "quiet": _rows(rng, DAY_ROWS),
                  "fragile": _rows(rng, DAY_ROWS, i >= SHIFT)}
        truth = []
        for name, frame in frames.items():
            frame = frame.assign(request_id=[f"{name}{i}-{k}" for k in range(len(frame))], ts=f"{day:%Y-%m-%d} 09:00")
            write(tmp / "export" / f"{day:%Y-%m-%d}" / f"{name}.csv", frame.to_csv(index=False))
            truth.append(_labelled(frame, rng)[["request_id", "label"]].rename(columns={"label": "y"}))
            frames[name] = frame
        write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", pd.concat(truth).to_csv(index=False))
        days[day.date()] = frames
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    defs = _defs(config)
    instance = dg.DagsterInstance.ephemeral()
    assert _run(defs, instance, "pictures_test_job", "2025-05-01", "2025-05-05").success
    pictures, drift = _read(config)
    last = _metadata(instance, DAYS[-1].date())
    # fragile's reference turns unreadable: a run of the pictures alone skips it and draws the others again
    (tmp / "fragile.parquet").write_bytes(b"not a parquet file")
    again = _run(defs, instance, "pictures_only_job", "2025-05-01", "2025-05-05")
    assert again.success
    pictures_again, _ = _read(config)
    warned = [e.user_message for e in instance.all_logs(again.run_id)
              if "drift pictures not drawn" in (e.user_message or "")]
    return {"refs": refs, "days": days, "pictures": pictures, "drift": drift, "again": pictures_again,
            "metadata": last, "metadata_again": _metadata(instance, DAYS[-1].date()), "warned": warned}


def _metadata(instance, day) -> dict:
    """The latest materialization's metadata of one partition."""
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=keys.DRIFT_DISTRIBUTIONS, asset_partitions=[str(day)]),
        limit=1).records[0].asset_materialization.metadata


def _picture(pictures, day, model, feature) -> list:
    row = pictures[(pictures.day == day) & (pictures.model_id == model) & (pictures.feature == feature)]
    assert len(row) == 1, (day, model, feature)
    return Comparison.buckets_from_json(row.bins.iloc[0])


def test_pictures_are_the_flagged_feature_days_and_only_on_shifted_days(world):
    pictures, drift = world["pictures"], world["drift"]
    shifted = {d.date() for d in DAYS[SHIFT:]}
    flagged = {(r.day, r.model_id, r.feature) for r in drift[drift.drifted.astype(bool)].itertuples()}
    drawn = {(r.day, r.model_id, r.feature) for r in pictures.itertuples()}
    assert drawn == flagged  # fewer than the cap per model-day here
    for day in shifted:  # the premise: the shift is flagged on each of its days
        assert {(day, "shop", "amount"), (day, "shop", "channel")} <= drawn
    assert {d for d, _, _ in drawn} <= shifted
    assert "quiet" not in set(pictures.model_id)
    assert not ({(d, "shop", "age") for d in world["days"]} & drawn)  # age never moved


def test_a_numeric_picture_equals_numpy_on_the_raw_rows(world):
    ref = world["refs"]["shop"].amount.to_numpy()
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, MAX_BINS + 1)))
    for day in (d.date() for d in DAYS[SHIFT:]):
        today = world["days"][day]["shop"].amount.to_numpy()
        buckets = _picture(world["pictures"], day, "shop", "amount")
        bins = [b for b in buckets if b.label not in (BELOW, ABOVE, MISSING)]
        assert [b.current_count for b in bins] == np.histogram(today, edges)[0].tolist()
        assert [b.reference_count for b in bins] == np.histogram(ref, edges)[0].tolist()
        above = {b.label: b for b in buckets}[ABOVE]
        assert above.current_count == int((today > ref.max()).sum()) > 0  # the shift pushes values past it
        assert above.current_share == pytest.approx((today > ref.max()).mean())
        row = world["pictures"][(world["pictures"].day == day) & (world["pictures"].feature == "amount")
                                & (world["pictures"].model_id == "shop")].iloc[0]
        assert (row.n_current, row.n_reference, row.kind, row.role) == (DAY_ROWS, REF_ROWS, "numeric", "feature")
        assert row.method and row.threshold > 0 and row.evidence >= 1


def test_a_categorical_picture_equals_value_counts_on_the_raw_rows(world):
    ref = world["refs"]["shop"].channel
    for day in (d.date() for d in DAYS[SHIFT:]):
        today = world["days"][day]["shop"].channel
        got = {b.label: b for b in _picture(world["pictures"], day, "shop", "channel")}
        assert set(got) == {*CHANNELS, MISSING} and OTHER not in got
        for c in CHANNELS:
            assert got[c].current_count == today.value_counts()[c]
            assert got[c].reference_count == ref.value_counts()[c]
            assert got[c].current_share == pytest.approx(today.value_counts()[c] / len(today))
        assert got[MISSING].current_count == today.isna().sum() and got[MISSING].reference_count == ref.isna().sum()


def test_an_unreadable_reference_skips_only_its_model_and_keeps_its_earlier_rows(world):
    before, after = world["pictures"], world["again"]
    assert "fragile" in set(before.model_id)  # drawn while its reference was readable
    cols = ["day", "model_id", "feature", "bins", "n_current", "n_reference"]
    pd.testing.assert_frame_equal(before[cols].reset_index(drop=True), after[cols].reset_index(drop=True))
    assert world["warned"] and all("fragile" in w for w in world["warned"])
    assert "fragile" in world["metadata_again"]["models_not_drawn"].value
    assert "fragile" not in world["metadata"]["models_not_drawn"].value


def test_partition_metadata_holds_a_table_per_drifted_feature(world):
    meta = world["metadata"]
    table = meta["shop / amount"].value
    assert "| bin | reference share | current share |" in table
    assert table.count("\n| [") >= 10 and "above range" in table
    assert meta["pictures"].value == len(world["pictures"][world["pictures"].day == DAYS[-1].date()])
    assert "quiet / amount" not in meta


def test_the_table_has_the_lake_schema(world):
    assert list(TABLES[DISTRIBUTIONS][0]) == [c for c in world["pictures"].columns if c != "day"]
