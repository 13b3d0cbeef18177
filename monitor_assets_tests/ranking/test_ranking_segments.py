"""Rankers' segments (`segments:` on a `task: ranking` model): the config, the figures per segment (the whole
ranker's on the segment's own requests), their test against the floor adjusted across a ranker-day's segments,
and a ranker of one CSV row per impression with a CSV of purchases whose German mobile traffic degrades."""

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import ndcg_score

from monitor_assets.config import ConfigError, load_config
from monitor_assets.constants import RANKING_PERFORMANCE_CHECK, RANKING_SEGMENT_CHECK
from monitor_assets.ranking.logic import Reference, request_figures, segment_day_rows, segment_figures
from monitor_assets.segments.logic import ALPHA
from monitor_assets.stats import ranking as R
from monitor_assets.storage.sql import SEGMENT_COLUMN
from monitor_assets.storage.warehouse import open_warehouse

from ..conftest import CSV_WORLD, run_job, write
from ..test_ranking_task import CLASSIFIER, _classifier_files

CATALOGUE = [f"sku{i:03d}" for i in range(300)]


def _config(tmp_path, ranker: str, start: str = "2025-06-01", end: str = "2025-06-01"):
    return load_config(write(tmp_path / "mine.yaml", f"""
partitions: {{start_date: {start}, end_date: {end}}}
label_delay_days: 0
{CSV_WORLD.format(tmp=tmp_path)}models:{ranker}
"""))


# ---- config --------------------------------------------------------------------------------------------------

def test_a_ranker_takes_segments_as_a_model_does(tmp_path):
    """A list or a mapping; a JSON lines log of lists reads `context.<name>`, a CSV of impressions `<name>`,
    `source:` overrides both; min_rows counts labelled requests (default 100)."""
    config = _config(tmp_path, """
  - id: lists
    task: ranking
    source: recs/{date}.jsonl
    segments: [market, [market, device]]
  - id: rows
    task: ranking
    source: rows/{date}.csv
    segments: {by: [market, device], min_rows: 40, columns: {device: {source: platform}}}""")
    lists, rows = config.rankers
    assert lists.segments.by == (("market",), ("market", "device"))
    assert {c.name: c.source for c in lists.segments.columns} == {"market": "context.market",
                                                                  "device": "context.device"}
    assert lists.segments.min_rows == 100
    assert rows.segments.by == (("market",), ("device",)) and rows.segments.min_rows == 40
    assert {c.name: c.source for c in rows.segments.columns} == {"market": "market", "device": "platform"}
    assert config.models == ()


@pytest.mark.parametrize(("segments", "problem"), [
    ("{by: [market], min_class_rows: 5}", "models[0].segments.min_class_rows: a ranker has no classes"),
    ("{by: [market], min_rows: 0}", r"models[0].segments.min_rows: expected a whole number"),
    ("[]", r"models[0].segments.by: expected a list of segment columns"),
])
def test_ranker_segment_errors_name_the_key(tmp_path, segments, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")) as error:
        _config(tmp_path, f"""
  - id: recs
    task: ranking
    source: recs/{{date}}.csv
    segments: {segments}""")
    assert "\n" not in str(error.value).strip()


# ---- figures and their test ----------------------------------------------------------------------------------

def _ranker(tmp_path, k="[3]", min_rows=2, main="ndcg_at_3"):
    return _config(tmp_path, f"""
  - id: recs
    task: ranking
    source: recs/{{date}}.csv
    labels: events/{{date}}.csv
    main_metric: {main}
    ranking: {{k: {k}, relevance: {{click: 1, purchase: 2}}}}
    thresholds: {{min_metric_ratio: 0.9}}
    segments: {{by: [market, [market, device]], min_rows: {min_rows}}}""").rankers[0]


def _frame(rows: list[tuple]) -> pd.DataFrame:
    """Impressions (request, rank, grade, market, device) with their segment columns as day_impressions has them."""
    frame = pd.DataFrame(rows, columns=["request_id", "rank", "grade", "market", "device"])
    frame["item_id"] = [f"sku{i:03d}" for i in range(len(frame))]
    frame["score"] = 1.0 / frame["rank"]  # logged scores, falling with the rank
    frame["labelled"] = frame.groupby("request_id").grade.transform("max") > 0
    frame[SEGMENT_COLUMN + "market"] = "market=" + frame.market
    frame[SEGMENT_COLUMN + "market,device"] = "market=" + frame.market + ", device=" + frame.device
    return frame


def test_segment_figures_are_the_rankers_on_the_segments_own_requests(tmp_path):
    """Per segment, every per-request metric equals `request_figures` on that segment's requests alone, and on a
    hand-made segment NDCG@3 and precision@3 equal values computed by hand: tied grades, a list shorter than k,
    a request with no relevant item."""
    ranker = _ranker(tmp_path)
    de = [("a", 1, 0, "DE", "app"), ("a", 2, 2, "DE", "app"), ("a", 3, 2, "DE", "app"),  # tied grades
          ("b", 1, 1, "DE", "app"), ("b", 2, 0, "DE", "app"),  # two items for k = 3
          ("c", 1, 0, "DE", "web"), ("c", 2, 0, "DE", "web"), ("c", 3, 0, "DE", "web")]  # nothing relevant
    fr = [("d", 1, 2, "FR", "app"), ("d", 2, 1, "FR", "app"), ("d", 3, 0, "FR", "app"),
          ("e", 1, 0, "FR", "web"), ("e", 2, 0, "FR", "web"), ("e", 3, 1, "FR", "web")]
    frame = _frame(de + fr)
    found = segment_figures(frame, ranker, R.ItemCounts.of(frame.item_id.to_numpy()), ranker.segments.by, True)
    by_name = {f["segment"]: f for f in found}
    assert set(by_name) == {"market=DE", "market=FR", "market=DE, device=app", "market=DE, device=web",
                            "market=FR, device=app", "market=FR, device=web"}
    for f in found:
        column = SEGMENT_COLUMN + f["segment_by"]
        own = frame[frame[column] == f["segment"]]
        expected = request_figures(own, ranker)
        assert f["n_requests"] == own.request_id.nunique()
        assert f["n_labelled_requests"] == own.loc[own.labelled, "request_id"].nunique()
        for metric, (value, se) in f["figures"].items():
            if metric != "popularity_concentration":
                assert (value, se) == pytest.approx(expected[metric], nan_ok=True), metric
    # By hand, DE: a = (2/log2 3 + 2/log2 4) / (2 + 2/log2 3); b = 1 (the ideal is itself); c = 0.
    a = (2 / math.log2(3) + 2 / math.log2(4)) / (2 + 2 / math.log2(3))
    de_figures = by_name["market=DE"]["figures"]
    assert de_figures["ndcg_at_3"][0] == pytest.approx((a + 1 + 0) / 3, abs=1e-12)
    assert de_figures["precision_at_3"][0] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3, abs=1e-12)
    ndcg_a = ndcg_score([[0, 2, 2]], [[3, 2, 1]], k=3)  # scikit-learn on request a: same as by hand
    assert a == pytest.approx(ndcg_a, abs=1e-12)
    assert de_figures["ndcg_at_3"][1] == pytest.approx(np.std([a, 1, 0], ddof=1) / math.sqrt(3), abs=1e-12)
    assert by_name["market=DE"]["n_labelled_requests"] == 2 and by_name["market=DE, device=web"]["n_requests"] == 1
    # Popularity concentration: the top 1% of the catalogue (one item of 14) over the segment's impressions.
    assert de_figures["popularity_concentration"][0] == pytest.approx(1 / 8)


def _day(rng, market_means: dict[str, tuple[float, int]]) -> pd.DataFrame:
    """Requests of 5 items per market: a relevant item at a position drawn around the market's typical one."""
    rows = []
    for market, (hit_rate, n) in market_means.items():
        for k in range(n):
            top = rng.random() < hit_rate  # the relevant item first, else last
            for pos in range(1, 6):
                rows.append((f"{market}{k}", pos, int((pos == 1) == top and pos in (1, 5)), market,
                             "app" if k % 2 else "web"))
    frame = _frame(rows)
    frame["item_id"] = rng.choice(CATALOGUE, len(frame))
    return frame


def test_segments_are_tested_against_their_floor_and_adjusted_together(tmp_path):
    """The main metric per segment: one-sided z against min_metric_ratio x the segment's reference value (its own
    when the reference has >= min_rows of its requests, else the ranker's whole), adjusted across the ranker-day's
    segments exactly as scipy's false_discovery_control; below_floor at segments.logic.ALPHA; nothing is tested
    before the labels are complete or under min_rows labelled requests."""
    ranker = _ranker(tmp_path, k="[5]", min_rows=60, main="ndcg_at_5")
    rng = np.random.default_rng(3)
    frame = _day(rng, {"DE": (0.35, 300), "FR": (0.8, 300), "IT": (0.8, 50), "ES": (0.78, 200)})
    reference = pd.DataFrame({"segment_by": ["market", "market", "market"], "segment": ["market=DE", "market=FR",
                                                                                        "market=IT"],
                              "n": [500, 500, 10], "value": [0.85, 0.8, 0.1]})
    items = R.ItemCounts.of(np.array(CATALOGUE, dtype=object))
    ref = Reference(items, np.zeros(0), {"ndcg_at_5": 0.82}, 1500, 0, segments=reference)
    rows = pd.DataFrame(segment_day_rows(frame, ranker, pd.Timestamp("2025-06-01").date(), ref, complete=True))
    main = rows[rows.metric == "ndcg_at_5"].set_index("segment")
    assert main.loc["market=DE", "reference_source"] == "segment" and main.loc["market=DE", "reference_value"] == 0.85
    assert main.loc["market=IT", "reference_source"] == "model"  # 10 reference requests: under min_rows
    assert main.loc["market=ES", "reference_source"] == "model" and main.loc["market=ES", "reference_value"] == 0.82
    assert main.loc["market=DE", "floor"] == pytest.approx(0.9 * 0.85)
    # IT has 50 labelled requests (< 60): reported, not tested; so are the crosses under 60.
    assert math.isnan(main.loc["market=IT", "p_value"]) and not main.loc["market=IT", "below_floor"]
    tested = main[main.p_value.notna()]
    assert set(tested.index) >= {"market=DE", "market=FR", "market=ES"}
    z = (tested.value - tested.floor) / tested.standard_error
    assert tested.p_value.to_numpy() == pytest.approx(stats.norm.cdf(z.to_numpy()), rel=1e-9)
    assert tested.p_adjusted.to_numpy() == pytest.approx(
        stats.false_discovery_control(tested.p_value.to_numpy(), method="bh"), rel=1e-12)
    assert list(main.index[main.below_floor]) == list(tested.index[tested.p_adjusted < ALPHA])
    assert main.loc["market=DE", "below_floor"] and not main.loc["market=FR", "below_floor"]
    # Every other metric has no verdict; labels not yet complete: no segment is tested.
    assert rows[rows.metric != "ndcg_at_5"].p_value.isna().all()
    waiting = pd.DataFrame(segment_day_rows(frame, ranker, pd.Timestamp("2025-06-01").date(), ref, complete=False))
    assert waiting.p_value.isna().all() and not waiting.below_floor.fillna(False).any()



def test_each_segment_has_the_rankers_catalogue_and_drift_figures_against_the_reference(tmp_path):
    """With a reference, a segment's rows carry the whole ranker's catalogue figures on its own impressions:
    item drift (Jensen-Shannon over the top items, as the ranker's), score drift (the KS statistic, as scipy's
    ks_2samp), coverage and popularity concentration against the reference's items, with no verdict."""
    ranker = _ranker(tmp_path, k="[5]", min_rows=60, main="ndcg_at_5")
    rng = np.random.default_rng(5)
    frame = _day(rng, {"DE": (0.5, 120), "FR": (0.5, 120)})
    frame["score"] = rng.normal(0.5, 0.1, len(frame))
    de = frame.market == "DE"
    frame.loc[de, "item_id"] = rng.choice(CATALOGUE[:10], int(de.sum()))  # DE's lists collapse onto 10 items
    frame.loc[de, "score"] += 0.3
    ref_items = np.array(rng.choice(CATALOGUE, 5000), dtype=object)
    ref_scores = rng.normal(0.5, 0.1, 5000)
    ref = Reference(R.ItemCounts.of(ref_items), ref_scores, {"ndcg_at_5": 0.5}, 1000, 0)
    rows = pd.DataFrame(segment_day_rows(frame, ranker, pd.Timestamp("2025-06-01").date(), ref, complete=True))
    figures = rows[rows.segment_by == "market"].pivot(index="segment", columns="metric", values="value")
    for market in ("DE", "FR"):
        own = frame[frame.market == market]
        mine = figures.loc[f"market={market}"]
        items = R.ItemCounts.of(own.item_id.to_numpy())
        assert mine.item_drift_js == pytest.approx(R.item_distribution_drift(items, ref.items), abs=1e-12)
        assert mine.score_drift_ks == pytest.approx(stats.ks_2samp(own.score, ref_scores).statistic, abs=1e-12)
        assert mine.catalogue_coverage == pytest.approx(own.item_id.nunique() / len(CATALOGUE), abs=1e-12)
    assert figures.loc["market=DE", "item_drift_js"] > 2 * figures.loc["market=FR", "item_drift_js"]
    assert figures.loc["market=DE", "score_drift_ks"] > 0.5 > figures.loc["market=FR", "score_drift_ks"]
    drift = rows[rows.metric.isin(["item_drift_js", "score_drift_ks", "catalogue_coverage", "novelty"])]
    assert len(drift) and drift.p_value.isna().all() and not drift.below_floor.fillna(False).any()

# ---- bring your own data -------------------------------------------------------------------------------------

def _requests(rng, day, n, degraded=lambda market, device: False):
    """A recommender's day: each request shows 10 items, some later bought; its market and device. A degraded
    request's list is in an order unrelated to what the user buys."""
    out = []
    for k in range(n):
        market, device = rng.choice(["DE", "FR"]), rng.choice(["mobile", "desktop"], p=[0.2, 0.8])
        items = list(rng.choice(CATALOGUE, 10, replace=False))
        bought = rng.random(10) < 0.2
        noise = rng.normal(0, 5.0 if degraded(market, device) else 0.3, 10)
        order = np.argsort(-(bought + noise), kind="stable")
        out.append((f"{day:%m%d}-r{k}", market, device, [items[i] for i in order], [bool(bought[i]) for i in order]))
    return out


def test_a_csv_of_impressions_and_purchases_where_one_segment_degrades(tmp_path):
    """One CSV row per impression with market and device columns, a CSV of purchases as labels, a Parquet
    reference with the same columns: German mobile requests lose their order on day 2. The segment check names
    `market=DE, device=mobile` (WARN); the whole ranker stays within its baseline; day 1 flags nothing. The
    figures land in monitoring.ranking_segment_performance and in monitoring.history."""
    rng = np.random.default_rng(11)
    days = pd.date_range("2025-06-01", periods=2, freq="D")
    _classifier_files(tmp_path, rng, days)  # the pipeline's ordinary model beside the ranker
    for i, day in enumerate(days):
        bad = (lambda m, d: m == "DE" and d == "mobile") if i == 1 else (lambda m, d: False)
        requests = _requests(rng, day, 3000, bad)
        rows = [{"request": r, "product": item, "position": pos + 1, "market": m, "device": d}
                for r, m, d, items, _ in requests for pos, item in enumerate(items)]
        bought = [{"request": r, "product": item, "event": "purchase"}
                  for r, _, _, items, flags in requests for item, b in zip(items, flags, strict=True) if b]
        write(tmp_path / "recs" / f"{day:%Y-%m-%d}.csv", pd.DataFrame(rows).to_csv(index=False))
        write(tmp_path / "orders" / f"{day:%Y-%m-%d}.csv", pd.DataFrame(bought).to_csv(index=False))
    ref = _requests(rng, pd.Timestamp("2025-05-01"), 3000)
    pd.DataFrame([{"request": r, "product": item, "position": pos + 1, "market": m, "device": d,
                   "event": "purchase" if b else None}
                  for r, m, d, items, flags in ref for pos, (item, b) in enumerate(zip(items, flags, strict=True))]
                 ).to_parquet(tmp_path / "recs_ref.parquet")
    config = _config(tmp_path, CLASSIFIER + """
  - id: shop_recs
    task: ranking
    source: recs/{date}.csv
    labels: orders/{date}.csv
    reference: recs_ref.parquet
    ranking: {k: [10], request_id: request, item_id: product, rank: position, relevance: {purchase: 1}}
    thresholds: {min_metric_ratio: 0.9}
    segments: {by: [market, device, [market, device]], min_rows: 100}""", end="2025-06-02")
    result = run_job(config, "2025-06-01", "2025-06-02")
    assert result.success
    checks = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
    assert checks[(RANKING_SEGMENT_CHECK, "2025-06-01")].passed
    failed = checks[(RANKING_SEGMENT_CHECK, "2025-06-02")]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.WARN
    assert checks[(RANKING_PERFORMANCE_CHECK, "2025-06-02")].passed  # the whole ranker: within its baseline
    con = open_warehouse(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        seg = con.execute("""SELECT partition_date, segment, value, reference_source, p_adjusted, below_floor
                             FROM monitoring.ranking_segment_performance WHERE metric = 'ndcg_at_10'
                             ORDER BY 1, 2""").df()
        assert set(seg.reference_source) == {"segment"}  # the reference has every segment's columns
        below = seg[seg.below_floor]
        assert {(str(d.date()), s) for d, s in zip(below.partition_date, below.segment, strict=True)} >= {
            ("2025-06-02", "market=DE, device=mobile")}
        assert not seg[seg.partition_date == pd.Timestamp("2025-06-01")].below_floor.any()
        assert below.segment.str.contains("FR").sum() == 0
        message = con.execute(f"""SELECT message FROM monitoring.alerts WHERE check_name = '{RANKING_SEGMENT_CHECK}'
                                  AND partition_date = '2025-06-02' AND model_id = 'shop_recs'""").fetchone()[0]
        assert "market=DE, device=mobile: ndcg_at_10" in message
        # The impressions keep each request's segment values (one JSON column).
        values = con.execute("""SELECT DISTINCT json_extract_string(segments, '$.market'),
                                       json_extract_string(segments, '$.device') FROM raw.ranking_impressions""").fetchall()
        assert set(values) == {(m, d) for m in ("DE", "FR") for d in ("mobile", "desktop")}
        history = con.execute("""SELECT value FROM monitoring.history WHERE model_id = 'shop_recs'
                                 AND metric = 'ranking.ndcg_at_10' AND segment = 'market=DE, device=mobile'
                                 AND partition_date = '2025-06-02'""").fetchall()
        day2 = seg[(seg.partition_date == pd.Timestamp("2025-06-02")) & (seg.segment == "market=DE, device=mobile")]
        assert [v for (v,) in history] == pytest.approx(list(day2.value))
    finally:
        con.close()


# ---- dashboard -----------------------------------------------------------------------------------------------

def test_the_ranker_page_lists_its_segments_worst_first():
    """A segmented ranker's page has the models' segments table: the latest judged day, the smallest adjusted
    p-value first, then the furthest below its floor; untested segments last, 'not judged'."""
    from dataclasses import replace

    from monitor_assets.links import model_page
    from monitor_assets.reporting.dashboard import RANKER_COLUMNS, SEGMENT_COLUMNS, render_dashboard

    from ..ui.test_dashboard import tiny_report

    day = pd.Timestamp("2026-10-05")
    segments = pd.DataFrame([
        (day, "recs", "market=FR", 400, 300, "ndcg_at_10", 0.80, 0.82, 0.738, 0.9, False),
        (day, "recs", "market=DE", 400, 300, "ndcg_at_10", 0.50, 0.82, 0.738, 1e-6, True),
        (day, "recs", "market=IT", 90, 60, "ndcg_at_10", 0.30, 0.82, 0.738, None, False),  # under min_rows
        (day, "recs", "market=ES", 400, 300, "ndcg_at_10", 0.70, 0.82, 0.738, 0.04, False),
    ], columns=SEGMENT_COLUMNS)
    rankers = pd.DataFrame([{"model_id": "recs", "main_metric": "ndcg_at_10", "ks": [10], "labelled": True,
                             "check": RANKING_PERFORMANCE_CHECK}], columns=RANKER_COLUMNS)
    pages = render_dashboard(replace(tiny_report(["plain"]), rankers=rankers, ranker_segments=segments))
    page = pages[model_page("recs")]
    table = page[page.index('id="segment-table"'):]
    order = [table.index(s) for s in ("market=DE", "market=ES", "market=FR", "market=IT")]
    assert order == sorted(order)
    assert "1 of 4 segments below their floor on 2026-10-05" in page
    assert table.count("not judged") == 1 and '"id":"segment-lines"' in page.replace(" ", "")



def test_the_ranker_page_leaves_out_the_segments_of_days_still_waiting_for_clicks(tmp_path):
    """A day whose interactions are not all read counts the missing clicks as misses: its segments' NDCG is not
    drawn (as the ranker's own charts leave it out), while a label-free main metric is drawn every day."""
    import duckdb

    from monitor_assets.reporting.dashboard import _ranking_data
    from monitor_assets.storage.lake import TABLES

    config = _config(tmp_path, """
  - id: recs
    task: ranking
    source: recs/{date}.jsonl
    segments: [market]
  - id: pop
    task: ranking
    source: pop/{date}.jsonl
    main_metric: popularity_concentration
    segments: [market]""")
    con = duckdb.connect()
    con.execute("CREATE SCHEMA monitoring")
    for table in ("monitoring.ranking_performance", "monitoring.ranking_segment_performance"):
        columns = ", ".join(f'"{c}" {t}' for c, t in TABLES[table][0].items())
        con.execute(f"CREATE TABLE {table} ({columns})")
    days = pd.to_datetime(["2025-06-01", "2025-06-02", "2025-06-03"]).date
    for model, metric in (("recs", "ndcg_at_10"), ("pop", "popularity_concentration")):
        for day, complete in zip(days, (True, True, False), strict=True):
            con.execute("INSERT INTO monitoring.ranking_performance (partition_date, model_id, model_version, "
                        "metric, value, labels_complete) VALUES (?, ?, '*', ?, 0.4, ?)", [day, model, metric, complete])
            con.execute("INSERT INTO monitoring.ranking_segment_performance (partition_date, model_id, segment_by, "
                        "segment, metric, value) VALUES (?, ?, 'market', 'market=DE', ?, ?)",
                        [day, model, metric, 0.0 if not complete else 0.4])
    found = _ranking_data(con, config, days[-1])["ranker_segments"]
    shown = {m: sorted(pd.to_datetime(g.partition_date).dt.date) for m, g in found.groupby("model_id")}
    assert shown == {"recs": list(days[:2]), "pop": list(days)}

# ---- the demo ------------------------------------------------------------------------------------------------

def test_the_demo_rankers_segments_flag_only_its_collapse(demo_run, demo_db):
    """home_recommender's `segments: [market, device]` from each request's context: every day has its market and
    device segments; a segment is below its floor only on the popularity collapse's days (none on a stable day),
    and the check's failures are the alert rows, WARN, naming the segment."""
    from ..test_demo_incidents import incident

    collapse = incident("popularity_collapse")
    _, result = demo_run
    rows = demo_db.execute("""SELECT partition_date::VARCHAR AS day, segment, below_floor, p_adjusted
                              FROM monitoring.ranking_segment_performance WHERE model_id = ? AND metric = ?""",
                           [collapse["model_id"], collapse["metric"]]).df()
    assert set(rows.groupby("day").segment.apply(lambda s: {x.split("=")[0] for x in s}).map(frozenset)) == {
        frozenset({"market", "device"})}
    flagged = set(rows[rows.below_floor].day)
    assert flagged and flagged <= set(collapse["dates"])
    failed = {e.partition for e in result.get_asset_check_evaluations()
              if e.check_name == RANKING_SEGMENT_CHECK and not e.passed}
    assert failed == flagged
    alerts = demo_db.execute("""SELECT partition_date::VARCHAR, severity, message FROM monitoring.alerts
                                WHERE model_id = ? AND check_name = ?""",
                             [collapse["model_id"], RANKING_SEGMENT_CHECK]).fetchall()
    assert {d for d, _, _ in alerts} == failed and {s for _, s, _ in alerts} == {"WARN"}
    named = rows[rows.below_floor].segment
    assert all(any(f"{s}: {collapse['metric']}" in m for _, _, m in alerts) for s in named)
