"""Drift per segment where users read it (issue 23): `monitoring.history`, the Prometheus export, the model page of
the dashboard and the segment_drift asset's per-day metadata, after one monitoring run of the segment drift tests'
world (checkout's market=DE feature x shifts on the last two of four days; basket is stable), on a persistent
DAGSTER_HOME. Each place must say what `monitoring.segment_drift` says, and name the drifted segment and feature.
"""

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor_assets import keys
from monitor_assets.config import load_config
from monitor_assets.export.prometheus import export_metrics
from monitor_assets.links import model_page
from monitor_assets.reporting.dashboard import SEGMENT_DRIFT_COLUMNS, _segment_drift_view, render_dashboard
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import persistent_home, run_job, write
from monitor_assets_tests.segments.test_segment_drift import CONFIG, DAY, _rows

DAYS = [DAY + dt.timedelta(days=i) for i in range(4)]
SHIFTED = DAYS[2:]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segment_drift_reports")
    rng = np.random.default_rng(5)
    _rows(rng, {"DE": 1000, "FR": 3000, "UK": 3000, "NL": 3000}).rename(columns={"y": "label"}).to_parquet(
        tmp / "ref.parquet")
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    rng = np.random.default_rng(8)
    for i, d in enumerate(DAYS):
        truth = []
        for model_id in ("checkout", "basket"):
            frame = _rows(rng, {"DE": 400, "FR": 800, "UK": 800, "NL": 800},
                          shift={"DE": 1.0} if d in SHIFTED and model_id == "checkout" else None)
            frame = frame.assign(request_id=[f"{model_id}{i}-{k}" for k in range(len(frame))], ts=f"{d} 10:00")
            frame.drop(columns="y").to_csv(write(tmp / "export" / str(d) / f"{model_id}.csv", ""), index=False)
            truth.append(frame[["request_id", "y"]])
        pd.concat(truth).to_csv(write(tmp / "truth" / f"{d}.csv", ""), index=False)
    with dg.DagsterInstance.from_config(str(persistent_home(tmp / "home"))) as instance:
        assert run_job(config, str(DAYS[0]), str(DAYS[-1]), instance=instance).success
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=keys.SEGMENT_DRIFT), limit=100)
        metadata = {r.partition_key: r.asset_materialization.metadata for r in records.records}
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        table = con.execute("SELECT * FROM monitoring.segment_drift ORDER BY ALL").df()
        history = con.execute("SELECT * FROM monitoring.history WHERE metric LIKE 'segment_drift.%'").df()
        performance = con.execute("SELECT * FROM monitoring.segment_performance").df()
    for frame in (table, history, performance):
        frame["partition_date"] = pd.to_datetime(frame.partition_date).dt.date
    drifted = table[table.drifted.fillna(False).astype(bool)]
    # the world's premise, as the segment drift tests check it: checkout's DE x alone drifts, on the shifted days
    assert set(zip(drifted.model_id, drifted.segment, drifted.feature, drifted.partition_date, strict=True)) == {
        ("checkout", "market=DE", "x", d) for d in SHIFTED}
    return {"config": config, "tmp": tmp, "table": table, "history": history, "performance": performance,
            "metadata": metadata}


def test_history_holds_each_judged_segment_features_evidence_and_drifted_count(world):
    table, history = world["table"], world["history"]
    judged = table[table.judged.astype(bool)]
    expected = {(r.partition_date, r.model_id, f"segment_drift.{r.feature}", r.segment): r.evidence
                for r in judged.itertuples()}
    for (day, model, segment), g in judged.groupby(["partition_date", "model_id", "segment"]):
        expected[(day, model, "segment_drift.drifted_features", segment)] = float(g.drifted.astype(bool).sum())
    found = {(r.partition_date, r.model_id, r.metric, r.segment): r.value for r in history.itertuples()}
    assert len(found) == len(history)  # one row per day, model, metric and segment
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-12), key
    # every segment named as segment_performance names it (`market=DE`), both models, 4 markets
    assert set(history.segment) == set(world["performance"].segment) == {f"market={m}" for m in
                                                                          ("DE", "FR", "UK", "NL")}
    counts = history[history.metric == "segment_drift.drifted_features"]
    assert {(r.partition_date, r.model_id, r.segment) for r in counts.itertuples() if r.value > 0} == {
        (d, "checkout", "market=DE") for d in SHIFTED}
    shifted_x = history[(history.metric == "segment_drift.x") & (history.segment == "market=DE")
                        & (history.model_id == "checkout")].set_index("partition_date").value
    assert all(shifted_x[d] >= 1 for d in SHIFTED)  # at or over its threshold on the shifted days


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _of(series: dict, name: str) -> dict[tuple, float]:
    """{label values sorted by label name: value} of one series."""
    return {tuple(v for _, v in sorted(labels)): value for (n, labels), value in series.items() if n == name}


@pytest.mark.parametrize("day", [DAYS[1], DAYS[3]])
def test_prometheus_exports_the_days_segment_drift_and_latest_tested_segment_performance(world, tmp_path, day):
    config, table, performance = world["config"], world["table"], world["performance"]
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        text = export_metrics(con, config, day, tmp_path).path.read_text()
    series = _samples(text)
    today = table[(table.partition_date == day) & table.judged.astype(bool)]
    # labels sorted by name: (feature, model_id, segment)
    assert _of(series, "monitor_segment_drift_evidence") == pytest.approx(
        {(r.feature, r.model_id, r.segment): r.evidence for r in today.itertuples()}, rel=1e-12)
    shifted = day in SHIFTED
    assert _of(series, "monitor_segment_drifted_features") == {
        (model, segment): float(shifted and (model, segment) == ("checkout", "market=DE"))
        for model in ("checkout", "basket") for segment in set(today.segment)}
    # segment performance: each model's latest day up to the export's with a tested segment (labels all landed)
    tested = performance[(performance.partition_date == day) & performance.p_adjusted.notna()]
    assert set(tested.model_id) == {"checkout", "basket"}
    assert _of(series, "monitor_segment_main_metric") == pytest.approx(
        {(r.metric, r.model_id, r.segment): r.value for r in tested.itertuples()}, rel=1e-12)
    assert _of(series, "monitor_segment_main_metric_floor") == pytest.approx(
        {(r.metric, r.model_id, r.segment): r.floor for r in tested.itertuples()}, rel=1e-12)
    assert _of(series, "monitor_segment_below_floor") == {
        (r.model_id, r.segment): float(r.below_floor) for r in tested.itertuples()}
    midnight = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
    assert _of(series, "monitor_segment_day_timestamp_seconds") == {("checkout",): midnight, ("basket",): midnight}
    promtool = shutil.which("promtool")
    if promtool:  # Prometheus' linter: names, units, help texts
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def _drift_section(page: str) -> str | None:
    found = re.search(r'<section id="segment-drift">(.*?)</section>', page, re.S)
    return found[1] if found else None


def test_model_page_lists_the_drifted_segment_and_feature_and_not_the_stable_ones(world):
    reports = Path(world["config"].reports_dir)
    checkout = _drift_section((reports / model_page("checkout")).read_text())
    basket = _drift_section((reports / model_page("basket")).read_text())
    assert checkout is not None and basket is not None
    table = re.search(r'<table id="segment-drift-table">(.*?)</table>', checkout, re.S)[1]
    rows = re.findall(r"<tr class=\"segment-below\"><td>([^<]*)</td>.*?</tr>", table, re.S)
    assert rows == ["market=DE"]
    assert re.findall(r'<span class="drifted-feature"[^>]*>([^<]*)</span>', table) == ["x"]
    assert f"1 of 4 judged segments with drifted features on {DAYS[-1]}" in " ".join(checkout.split())
    for stable in ("market=FR", "market=UK", "market=NL"):
        assert stable not in checkout
    assert "segment-drift-table" not in basket and f"No segment had a drifted feature on {DAYS[-1]}" in basket


def _drift_rows(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["segment", "feature", "method", "statistic", "threshold", "evidence",
                                        "drifted"])
    return frame.assign(partition_date=pd.Timestamp("2026-10-05"), model_id="m", n_rows=500)[SEGMENT_DRIFT_COLUMNS]


def test_segments_are_ordered_by_drifted_features_then_evidence_and_old_days_are_ignored():
    rows = _drift_rows([
        ("market=FR", "price", "psi", 0.9, 0.1, 9.0, True),  # the strongest single drift
        ("market=DE", "price", "psi", 0.3, 0.1, 3.0, True),
        ("market=DE", "shop", "chisquare", 40.0, 0.001, 2.0, True),
        ("market=DE", "age", "wasserstein", 0.01, 0.1, 0.1, False),
        ("market=UK", "price", "psi", 0.5, 0.1, 5.0, True),
        ("market=NL", "price", "psi", 0.05, 0.1, 0.5, False),
    ])
    old = _drift_rows([("market=NL", "price", "psi", 0.9, 0.1, 9.0, True)]).assign(
        partition_date=pd.Timestamp("2026-10-04"))
    view = _segment_drift_view(pd.concat([old, rows], ignore_index=True))
    assert (view["day"], view["judged"], view["drifted"]) == ("2026-10-05", 4, 3)
    assert [(r["segment"], r["n_drifted"], r["n_features"]) for r in view["rows"]] == [
        ("market=DE", 2, 3), ("market=FR", 1, 1), ("market=UK", 1, 1)]
    assert [f["feature"] for f in view["rows"][0]["features"]] == ["price", "shop"]  # strongest first
    assert view["rows"][0]["evidence"] == 3.0
    assert _segment_drift_view(None) is None and _segment_drift_view(rows.iloc[0:0]) is None


def test_a_model_without_segments_shows_nothing_new():
    from monitor_assets_tests.ui.test_dashboard import tiny_report

    data = tiny_report(["plain", "segmented"])
    data.segment_drift = _drift_rows([("market=DE", "price", "psi", 0.3, 0.1, 3.0, True)]).assign(
        model_id="segmented")
    pages = render_dashboard(data)
    assert 'id="segment-drift"' not in pages[model_page("plain")]
    assert 'id="segment-drift"' in pages[model_page("segmented")] and "market=DE" in pages[model_page("segmented")]


def test_segment_drift_metadata_per_day_counts_segments_and_names_the_worst(world):
    metadata, table = world["metadata"], world["table"]
    assert sorted(metadata) == [str(d) for d in DAYS]
    for day in DAYS:
        md = metadata[str(day)]
        today = table[table.partition_date == day]
        judged = today[today.judged.astype(bool)]
        assert md["segments_judged"].value == len(judged.groupby(["model_id", "segment"])) == 2 * 4
        assert md["segments_too_small"].value == 0
        assert md["segments_drifted"].value == md["features_drifted"].value == int(day in SHIFTED)
        worst = md["worst_segments"].value
        header, _, first, *_ = worst.splitlines()  # the header, the rule, then the worst segment-feature
        assert header.startswith("| model_id | segment | feature |")
        if day in SHIFTED:
            assert first.startswith("| checkout | market=DE | x |") and first.endswith("| True | 400 | segment |")
        else:
            assert "| True |" not in worst
