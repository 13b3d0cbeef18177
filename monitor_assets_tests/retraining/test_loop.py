"""The closed loop on the demo: requests after the concept drift, rows for the canary, and the approval
job on a persistent Dagster instance running the demo's retraining entry point."""

import datetime as dt
import json
import shutil
from dataclasses import replace
from pathlib import Path

import dagster as dg
import joblib
import pandas as pd
import pytest

from monitor_assets.definitions import build_definitions
from monitor_assets.demo.generate import RETRAINED_VERSION
from monitor_assets.retraining import logic as L
from monitor_assets.retraining.__main__ import main as cli
from monitor_assets.retraining.defs import APPROVE_JOB, REJECT_JOB
from monitor_assets.stats.versions import champions
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import persistent_home

DRIFT_DAY = dt.date(2026, 10, 21)  # purchase_propensity's concept drift (demo/generate.py CONCEPT_FROM)


def test_demo_opens_a_request_after_the_concept_drift_and_none_before(demo_db):
    requests = demo_db.sql("SELECT * FROM monitoring.retraining_requests").df()
    conversion = requests[requests.model_id == "purchase_propensity"]
    assert len(conversion) >= 1
    opened = pd.to_datetime(conversion.opened_on).dt.date
    assert (opened >= DRIFT_DAY).all() and (opened <= DRIFT_DAY + dt.timedelta(days=3)).any()
    assert (conversion.model_version == "2026.08.1").all()  # the drifted version, not the retrained one
    # the stable model is never flagged, and the trigger waits for its reference batch (14 days)
    assert not (requests.model_id == "demand_forecaster").any()
    trigger = demo_db.sql("SELECT * FROM monitoring.retraining_trigger").df()
    assert not trigger[trigger.model_id == "demand_forecaster"].flagged.any()
    early = trigger[(pd.to_datetime(trigger.partition_date).dt.date < dt.date(2026, 10, 15))
                    & (trigger.model_id != "home_recommender")]  # a ranker is tested against its reference file from day 1
    assert early.p_value.isna().all() and early.note.str.contains("reference batch builds").all()
    reco = requests[requests.model_id == "home_recommender"]
    assert list(pd.to_datetime(reco.opened_on).dt.date) == [dt.date(2026, 10, 18)]  # the collapse: 10-17..18
    ranker = trigger[trigger.model_id == "home_recommender"]
    assert not ranker[pd.to_datetime(ranker.partition_date).dt.date < dt.date(2026, 10, 17)].flagged.any()
    assert not trigger[(trigger.model_id == "purchase_propensity")
                       & (pd.to_datetime(trigger.partition_date).dt.date < DRIFT_DAY)].flagged.any()


def test_demo_versions_and_canary_comparison(demo_db):
    versions = demo_db.sql("SELECT * FROM monitoring.model_versions WHERE model_id = 'purchase_propensity'").df()
    roles = dict(zip(versions.model_version, versions.role, strict=True))
    assert roles == {"2026.08.1": "retired", RETRAINED_VERSION: "champion"}
    cmp = demo_db.sql("SELECT * FROM monitoring.version_comparison ORDER BY partition_date").df()
    assert len(cmp) and set(cmp.challenger_version) == {RETRAINED_VERSION}
    assert set(pd.to_datetime(cmp.partition_date).dt.date) == {dt.date(2026, 10, d) for d in (24, 25, 26, 27)}
    assert {"mean_loss", "error_rate", "latency_p95_ms", "accuracy"} <= set(cmp.metric)
    # the retrained version fits the new concept: lower loss, and promoted once it has enough labels
    loss = cmp[cmp.metric == "mean_loss"]
    assert (loss.challenger_value < loss.champion_value).all()
    assert cmp[pd.to_datetime(cmp.partition_date).dt.date == dt.date(2026, 10, 27)].verdict.eq("promote").all()
    # The only rollback is the latency gate on 2026-10-25: in this seeded demo the canary's first 368 requests
    # happen to have 8.7% over the champion's p95 (binomial p = 0.002), a chance excess the gate cannot
    # tell from a slower build; the next day's data clears it. It shows the rollback alert path works.
    rollback = cmp[cmp.verdict.eq("rollback")]
    assert set(pd.to_datetime(rollback.partition_date).dt.date) <= {dt.date(2026, 10, 25)}
    assert set(rollback[rollback.gate == "fail"].metric) <= {"latency_p95_ms"}


@pytest.fixture
def loop_copy(demo_run, tmp_path):
    """The demo's lake copied, so decisions here do not change what other tests read."""
    config, _ = demo_run
    source = Path(config.warehouse_path)
    target = tmp_path / "wh" / "monitor.duckdb"
    target.parent.mkdir()
    shutil.copytree(source.with_name(f"{source.stem}_lake"), target.with_name("monitor_lake"))
    return replace(config, warehouse_path=str(target), lake_dir="", reports_dir=str(tmp_path / "reports"))


def test_approval_job_on_a_persistent_instance_runs_the_demo_retraining(loop_copy, tmp_path):
    config = loop_copy
    with connect(config.warehouse_path, config.lake_path, models=[]) as con:
        request = L.open_by_hand(con, config, "purchase_propensity", "ana", "accuracy dropped after the sale",
                                 version="2026.08.1", day=dt.date(2026, 10, 27))
    home = persistent_home(tmp_path / "dagster_home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        job = build_definitions(config).resolve_job_def(APPROVE_JOB)
        result = job.execute_in_process(instance=instance, run_config={"ops": {"approve_retraining_request": {
            "config": {"request_id": request["request_id"], "by": "ana", "note": "go"}}}})
        assert result.success
        stored = instance.get_run_by_id(result.run_id)
        assert stored is not None and stored.status == dg.DagsterRunStatus.SUCCESS
    with connect(config.warehouse_path, config.lake_path, models=[]) as con:
        after = L.get_request(con, request["request_id"])
    assert after["status"] == "done" and after["decided_by"] == "ana" and after["run_id"] == result.run_id
    assert after["outcome"].startswith("succeeded")
    folder = L.output_dir(config, "purchase_propensity", request["request_id"])
    info = json.loads((folder / "model.json").read_text())
    assert info["trained_on"] == "2026-10-21..2026-10-27" and info["rows"] > 5000
    model = joblib.load(folder / "model.joblib")  # a real fitted scikit-learn pipeline
    frame = pd.DataFrame({"price": [30.0], "discount_pct": [10.0], "product_rating": [4.0], "session_views": [4],
                          "days_since_last_visit": [3.0], "category": ["home"], "device": ["app"]})
    assert 0 < model.predict_proba(frame)[0, 1] < 1
    # trained on data after the drift, it beats the old model's reference on its holdout
    assert info["holdout_roc_auc"] > 0.6


def test_reject_is_recorded_and_a_rejected_request_cannot_be_approved(loop_copy, tmp_path, monkeypatch, capsys):
    config = loop_copy
    with connect(config.warehouse_path, config.lake_path, models=[]) as con:
        request = L.open_by_hand(con, config, "fraud_detector", "bo", "manual check")
    home = persistent_home(tmp_path / "home2")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        defs = build_definitions(config)
        result = defs.resolve_job_def(REJECT_JOB).execute_in_process(instance=instance, run_config={"ops": {
            "reject_retraining_request": {"config": {"request_id": request["request_id"], "by": "bo",
                                                     "note": "seasonal, expected"}}}})
        assert result.success
        again = defs.resolve_job_def(APPROVE_JOB).execute_in_process(instance=instance, raise_on_error=False,
                                                                      run_config={"ops": {"approve_retraining_request": {
                                                                          "config": {"request_id": request["request_id"],
                                                                                     "by": "bo"}}}})
        assert not again.success
    with connect(config.warehouse_path, config.lake_path, models=[]) as con:
        after = L.get_request(con, request["request_id"])
    assert after["status"] == "rejected" and after["note"] == "seasonal, expected" and after["outcome"] is None
    # the command line reads the same table; a wrong model is one line and exit 2
    monkeypatch.setenv("MONITOR_WAREHOUSE", config.warehouse_path)
    assert cli(["list", "requests"]) == 0
    assert "seasonal, expected" in capsys.readouterr().out
    assert cli(["open", "--model", "nope", "--by", "x", "--reason", "y"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_roles_and_champions_from_daily_traffic():
    d = [dt.date(2026, 1, i) for i in (1, 2, 3)]
    daily = pd.DataFrame({
        "partition_date": [d[0], d[1], d[1], d[2], d[2]], "model_id": ["m"] * 5,
        "model_version": ["v1", "v1", "v2", "v1", "v2"], "volume": [100, 90, 10, 20, 80],
        "n_errors": [0] * 5, "latency_p95_ms": [10.0] * 5})
    champ = champions(daily)
    assert list(champ.model_version) == ["v1", "v1", "v2"]
    versions = L.model_versions(daily).set_index("model_version")
    assert versions.loc["v2", "role"] == "champion" and versions.loc["v1", "role"] == "challenger"
    assert versions.loc["v2", "traffic_share"] == pytest.approx(0.8)
    assert versions.loc["v2", "champion_since"] == d[2] and versions.loc["v1", "first_seen"] == d[0]


def test_requests_and_rollbacks_reach_the_alert_outbox(demo_run, demo_instance, tmp_path):
    """Requests notify through the alert channels: the sensor's own reading of check evaluations puts the
    request's failure into the outbox, once per channel of the model."""
    from monitor_assets.notify.defs import read_evaluations, record_evaluations
    from monitor_assets.retraining.defs import CANARY_CHECK, RETRAINING_CHECK
    from monitor_assets.storage.alert_state import AlertState

    config, _ = demo_run
    defs = build_definitions(config)
    keys = [k for c in defs.asset_checks for k in c.check_keys if k.name in (RETRAINING_CHECK, CANARY_CHECK)]
    assert len(keys) == 2
    state = AlertState(tmp_path / "state.sqlite")
    record_evaluations(state, config, read_evaluations(demo_instance, keys, 0.0))
    rows = state.table("monitoring.alert_deliveries")
    request = rows[(rows.model_id == "purchase_propensity") & (rows.check_name == RETRAINING_CHECK)]
    assert len(request) == 1 and request.channel.iloc[0] == "file" and request.severity.iloc[0] == "WARN"
    assert "retraining request #" in request.message.iloc[0] and "approve" in request.message.iloc[0]
    assert request.partition_date.iloc[0] >= str(DRIFT_DAY)
    rollback = rows[rows.check_name == CANARY_CHECK]
    assert set(rollback.severity) <= {"ERROR"} and set(rollback.model_id) <= {"purchase_propensity"}
