"""The multivariate_drift asset on a small world: one model's two features flip their correlation on the last days
while each marginal stays as it was; the table flags those days only and names the two features; a stable model is
never flagged; a model whose reference lacks a feature records why, and the others are still computed. The
reference fit is stored once per reference version and reused."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monitor_assets import keys
from monitor_assets.config import load_config
from monitor_assets.constants import MULTIVARIATE_DRIFT_CHECK
from monitor_assets.definitions import MONITORING_JOB, build_definitions
from monitor_assets.multivariate import logic as MVL
from monitor_assets.multivariate.defs import build_multivariate_definitions  # noqa: E402
from monitor_assets.multivariate.logic import MULTIVARIATE, REFERENCES  # noqa: E402
from monitor_assets.stats.multivariate import DOMAIN_CLASSIFIER, RECONSTRUCTION  # noqa: E402
from monitor_assets.storage import per_model
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import CSV_WORLD, write

DAYS = pd.date_range("2025-04-01", periods=6, freq="D")
FLIP = 4  # from the fifth day basket's x0 and x1 go together the other way round
REF_ROWS, DAY_ROWS = 6000, 2000
RHO = 0.8
CHECK = MULTIVARIATE_DRIFT_CHECK

CONFIG = """
partitions: {{start_date: 2025-04-01, end_date: 2025-04-06}}
""" + CSV_WORLD + """models:
  - id: basket
    task: binary_classification
    reference: basket.parquet
    reference_fields: {{score: proba}}
    features: {{x0: numeric, x1: numeric, x2: numeric, shop: categorical}}
  - id: stable
    task: binary_classification
    reference: stable.parquet
    reference_fields: {{score: proba}}
    features: {{a: numeric, b: numeric, c: numeric, shop: categorical}}
  - id: broken
    task: binary_classification
    reference: broken.parquet
    reference_fields: {{score: proba}}
    features: {{x0: numeric, x1: numeric}}
"""


def _basket(rng, n, rho=RHO):
    # x0, x1 standard normal either way: only their correlation changes
    x0 = rng.normal(0, 1, n)
    x1 = rho * x0 + np.sqrt(1 - rho ** 2) * rng.normal(0, 1, n)
    shop = rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2])
    proba = 1 / (1 + np.exp(-(x0 + x1)))
    return pd.DataFrame({"x0": x0, "x1": x1, "x2": rng.normal(5, 2, n), "shop": shop, "proba": proba})


def _stable(rng, n):
    a = rng.normal(0, 1, n)
    b = 0.9 * a + rng.normal(0, 0.5, n)
    return pd.DataFrame({"a": a, "b": b, "c": rng.exponential(1, n), "shop": rng.choice(["north", "south"], n),
                         "proba": 1 / (1 + np.exp(-a))})


def _labelled(frame, rng):
    return frame.assign(label=(rng.random(len(frame)) < frame.proba).astype(int))


def _wired(defs: dg.Definitions) -> bool:
    """Whether the pipeline itself has the multivariate asset (and then its check and history part)."""
    return keys.MULTIVARIATE_DRIFT in {key for asset in defs.assets or [] for key in asset.keys}


def _job_defs(config):
    """The pipeline (with the multivariate asset merged in until it is wired there) and a job of that asset and
    what it reads."""
    pipeline = build_definitions(config)
    job = dg.define_asset_job("multivariate_test_job",
                              selection=dg.AssetSelection.assets(keys.MULTIVARIATE_DRIFT).upstream())
    stage = [] if _wired(pipeline) else [build_multivariate_definitions(config)]
    return dg.Definitions.merge(pipeline, *stage, dg.Definitions(jobs=[job]))


def _run(defs, instance, start, end, job="multivariate_test_job"):
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end})


def _read(config, wired):
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        table = con.execute(f"SELECT * FROM {MULTIVARIATE} ORDER BY ALL").df()
        fits = con.execute(f"SELECT model_id, fit_key, reference_rows, computed_at FROM {REFERENCES} "
                           "ORDER BY 1").df()
        alerts = con.execute("SELECT * FROM monitoring.alerts WHERE check_name = ?", [CHECK]).df() if wired else None
        history = (con.execute("SELECT * FROM monitoring.history WHERE metric LIKE 'multivariate.%'").df()
                   if wired else None)
    table["day"] = pd.to_datetime(table.partition_date).dt.date
    return table, fits, alerts, history


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multivariate")
    rng = np.random.default_rng(24)
    basket_ref = _basket(rng, REF_ROWS)
    _labelled(basket_ref, rng).to_parquet(tmp / "basket.parquet")
    _labelled(_stable(rng, REF_ROWS), rng).to_parquet(tmp / "stable.parquet")
    _labelled(_basket(rng, REF_ROWS), rng).drop(columns="x1").to_parquet(tmp / "broken.parquet")
    days = {}
    for i, day in enumerate(DAYS):
        frames = {"basket": _basket(rng, DAY_ROWS, rho=-RHO if i >= FLIP else RHO), "stable": _stable(rng, DAY_ROWS),
                  "broken": _basket(rng, DAY_ROWS)}
        truth = []
        for name, frame in frames.items():
            frame = frame.assign(request_id=[f"{name}{i}-{k}" for k in range(len(frame))], ts=f"{day:%Y-%m-%d} 09:00")
            write(tmp / "export" / f"{day:%Y-%m-%d}" / f"{name}.csv", frame.to_csv(index=False))
            truth.append(_labelled(frame, rng)[["request_id", "label"]].rename(columns={"label": "y"}))
        write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", pd.concat(truth).to_csv(index=False))
        days[day.date()] = frames
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    defs = _job_defs(config)
    wired = _wired(build_definitions(config))
    instance = dg.DagsterInstance.ephemeral()
    # once the pipeline has the asset, the whole daily job runs: the check and history are judged too; the
    # references are fitted and the days computed in worker processes, as a fleet's are (here from 1 model and
    # 1 model-day, not PROCESS_MIN_ITEMS and PROCESS_MIN_MODEL_DAYS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(per_model, "PROCESS_MIN_ITEMS", 1)
        patch.setattr(MVL, "PROCESS_MIN_MODEL_DAYS", 1)
        patch.setattr(per_model, "ANALYSIS_WORKERS", 2)
        assert _run(defs, instance, "2025-04-01", "2025-04-06",
                    MONITORING_JOB if wired else "multivariate_test_job").success
    table, fits, alerts, history = _read(config, wired)
    # a second run of one day: the stored reference fits are reused, the figures are the same
    assert _run(defs, instance, "2025-04-06", "2025-04-06").success
    again, fits_again, _, _ = _read(config, False)
    return {"days": days, "basket_ref": basket_ref, "table": table, "fits": fits, "again": again,
            "fits_again": fits_again, "wired": wired, "alerts": alerts, "history": history}


def test_the_flip_leaves_each_marginal_as_it_was(world):
    # the premise, checked with scipy: a per-feature test sees nothing on the flipped days
    for day in list(world["days"])[FLIP:]:
        for feature in ("x0", "x1"):
            today = world["days"][day]["basket"][feature]
            assert stats.ks_2samp(today, world["basket_ref"][feature]).pvalue > 0.01
        r = np.corrcoef(world["days"][day]["basket"].x0, world["days"][day]["basket"].x1)[0, 1]
        assert r < -0.7


def test_the_flipped_days_alone_are_flagged_and_name_the_two_features(world):
    table = world["table"]
    basket = table[table.model_id == "basket"]
    flipped = {d.date() for d in DAYS[FLIP:]}
    domain = basket[basket.method == DOMAIN_CLASSIFIER]
    assert len(domain) == len(DAYS)
    assert set(domain[domain.drifted].day) == flipped
    pca = basket[basket.method == RECONSTRUCTION]
    # x0 and x1 share a component that carries 1.8 of 3 units of variance; the flip moves 1.8 units onto the
    # component (x0 - x1) / sqrt 2 the PCA leaves out (0.2 in the reference)
    assert set(pca[pca.drifted].day) == flipped
    for r in basket[basket.drifted].itertuples():
        named = [part.split(" (")[0] for part in r.top_features.split(", ")]
        assert set(named[:2]) == {"x0", "x1"}, r
        assert r.statistic >= r.threshold
    for r in basket[~basket.drifted.astype(bool)].itertuples():
        assert r.statistic < r.threshold
    assert (basket.n_current == DAY_ROWS).all() and (basket.n_reference == REF_ROWS).all()
    assert basket.analysis_error.isna().all()


def test_the_stable_model_is_never_flagged(world):
    stable = world["table"][world["table"].model_id == "stable"]
    assert set(stable.method) == {DOMAIN_CLASSIFIER, RECONSTRUCTION}
    assert len(stable) == 2 * len(DAYS)
    assert not stable.drifted.astype(bool).any()
    assert stable.statistic.notna().all() and stable.analysis_error.isna().all()
    assert stable.top_features.isna().all()  # named on flagged rows only
    # a domain classifier that cannot tell the days apart scores about one half
    domain = stable[stable.method == DOMAIN_CLASSIFIER].statistic
    assert ((domain - 0.5).abs() < 0.05).all()


def test_a_broken_reference_records_why_and_the_others_are_computed(world):
    table = world["table"]
    broken = table[table.model_id == "broken"]
    assert len(broken) == len(DAYS)
    assert broken.method.isna().all() and broken.statistic.isna().all()
    assert broken.analysis_error.str.contains("x1").all(), broken.analysis_error.iloc[0]
    assert {"basket", "stable"} <= set(table[table.analysis_error.isna()].model_id)


def test_the_reference_fit_is_stored_once_and_reused(world):
    fits, again = world["fits"], world["fits_again"]
    assert list(fits.model_id) == ["basket", "stable"]
    assert (fits.reference_rows == REF_ROWS).all()
    pd.testing.assert_frame_equal(fits, again)  # not refitted: same key, same time stamp
    last = DAYS[-1].date()
    cols = ["model_id", "method", "statistic", "threshold", "drifted", "top_features", "analysis_error"]
    before = world["table"][world["table"].day == last][cols].reset_index(drop=True)
    after = world["again"][world["again"].day == last][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    # the other days were left alone by the one-day run
    assert len(world["again"]) == len(world["table"])


def test_the_table_has_the_lake_schema(world):
    assert list(TABLES[MULTIVARIATE][0]) == [c for c in world["table"].columns if c != "day"]


def test_the_check_fails_on_the_flipped_days_naming_method_and_features(world):
    if not world["wired"]:
        pytest.skip("the pipeline does not have the multivariate asset yet (definitions.py)")
    alerts = world["alerts"]
    basket = alerts[alerts.model_id == "basket"]
    assert {pd.Timestamp(d).date() for d in basket.partition_date} == {d.date() for d in DAYS[FLIP:]}
    assert (basket.severity == "WARN").all()
    for message in basket.message:
        assert "domain_classifier_auc" in message and "x0" in message and "x1" in message, message
    assert "stable" not in set(alerts.model_id)
    broken = alerts[alerts.model_id == "broken"]
    assert len(broken) == len(DAYS) and broken.message.str.contains("x1").all()
    table = world["table"]
    for r in world["history"].itertuples():
        match = table[(table.model_id == r.model_id) & (table.day == pd.Timestamp(r.partition_date).date())
                      & ("multivariate." + table.method == r.metric)]
        assert r.segment == "" and r.value == pytest.approx(match.statistic.iloc[0])
    assert len(world["history"]) == table.statistic.notna().sum()


def test_no_reconstruction_error_when_the_pca_keeps_every_component():
    # two independent numeric features: 90% of the variance needs both components, every row is reconstructed
    # exactly, and the error would be rounding noise judged against rounding noise
    from monitor_assets.config import FeatureConfig
    from monitor_assets.multivariate.logic import drift_rows, feature_specs, keeps_every_component
    from monitor_assets.stats.multivariate import fit_reference

    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"u": rng.normal(0, 1, 3000), "v": rng.normal(0, 1, 3000)})
    model = type("M", (), {"id": "m", "features": [FeatureConfig("u", "numeric", "u"),
                                                   FeatureConfig("v", "numeric", "v")]})()
    fitted = fit_reference(ref, feature_specs(model), chunk_rows=500)
    assert keeps_every_component(fitted)
    rows = drift_rows(model, fitted, ref.sample(800, random_state=1), pd.Timestamp("2025-04-01").date())
    assert [r["method"] for r in rows] == [DOMAIN_CLASSIFIER]
