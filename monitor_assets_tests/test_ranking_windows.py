"""Rankers in the evaluation store (monitor_assets/ranking/windows.py): a window's per-request metrics merged
from the days equal the metrics over the window's requests themselves, and its catalogue figures merged from the
days' item counts (monitoring.ranking_item_counts) equal those of the window's impressions."""

import datetime as dt
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from monitor_assets.config import RANKING_AT_K
from monitor_assets.evaluation.logic import (
    RANKER_PER_REQUEST,
    WINDOW_CHECK,
    closed_windows,
    ranker_window_warnings,
    report_path,
)
from monitor_assets.evaluation.settings import DEFAULT as EVALUATION_DEFAULT
from monitor_assets.ranking.logic import _catalogue, day_frame, labels_complete, reference_of, request_figures
from monitor_assets.ranking.windows import CATALOGUE, STANDARD_ERROR, merge
from monitor_assets.stats import ranking as R
from monitor_assets.storage.warehouse import lake_of
from monitor_assets_tests.ui.browser import browser_page


def _day(day: int, value: float, requests: int, relevant: int, complete: bool = True) -> list[dict]:
    common = {"partition_date": dt.date(2026, 10, day), "n_requests": requests, "n_labelled_requests": relevant + 1,
              "labels_complete": complete}
    return [{**common, "metric": "ndcg_at_10", "value": value},
            {**common, "metric": "relevant_requests", "value": float(relevant)},
            {**common, "metric": "popularity_concentration", "value": 0.5}]


@pytest.fixture
def ranker(demo_config):
    return demo_config.rankers[0]


def test_merged_means_weigh_each_day_by_the_requests_its_mean_is_over(ranker):
    days = pd.DataFrame(_day(1, 0.5, 100, 40) + _day(2, 0.2, 300, 60) + _day(3, 0.9, 50, 10, complete=False))
    zero = replace(ranker, ranking=replace(ranker.ranking, no_relevant="zero"))
    exclude = replace(ranker, ranking=replace(ranker.ranking, no_relevant="exclude"))
    values, requests, labelled, n_days = merge(days, zero)
    # the incomplete day counts in the requests, not in the label-based figures
    assert (requests, labelled, n_days) == (450, 41 + 61 + 11, 3)
    assert values["ndcg_at_10"] == pytest.approx((0.5 * 100 + 0.2 * 300) / 400)
    assert values["label_coverage"] == pytest.approx((41 + 61) / 400)
    assert "popularity_concentration" not in values  # needs the window's item counts: not merged
    values, *_ = merge(days, exclude)
    assert values["ndcg_at_10"] == pytest.approx((0.5 * 40 + 0.2 * 60) / 100)


def test_the_demo_rankers_windows_equal_their_requests(demo_run, demo_db, ranker):
    config, _ = demo_run
    store = demo_db.execute("""SELECT window_id, window_start, window_end, metric, value, n_rows, days_profiled,
                                      reference_value
                               FROM monitoring.evaluation_store WHERE model_id = ? AND model_version = '*'""",
                            [ranker.id]).df()
    assert len(store) and {"ndcg_at_10", "mrr", "label_coverage", *CATALOGUE} <= set(store.metric)
    assert "score_drift_ks" not in set(store.metric)  # needs the window's scores: not merged
    # The first week inside the demo: its requests' metrics, from the impressions and interactions of its days.
    weeks = store[store.window_id.str.startswith("week:") & (store.days_profiled == 7)]
    week = weeks.sort_values("window_start").iloc[0]
    days = [week.window_start.date() + dt.timedelta(days=k) for k in range(7)]
    frames = [day_frame(demo_db, ranker, d, config.label_delay_days)[0].assign(request_id=lambda f, d=d: f"{d}:"
                                                                                + f.request_id.astype(str))
              for d in days if labels_complete(demo_db, ranker, d, config.label_delay_days)]
    assert len(frames) == 7
    direct = request_figures(pd.concat(frames, ignore_index=True), ranker)
    mine = store[store.window_id == week.window_id].set_index("metric")
    for metric in ("ndcg_at_10", "precision_at_5", "mrr", "mean_loss"):
        assert mine.value[metric] == pytest.approx(direct[metric][0], rel=1e-9), metric
    # the main metric's standard error over the week's requests, merged from the days' (sd / sqrt(requests))
    assert mine.value[ranker.main_metric + STANDARD_ERROR] == pytest.approx(direct[ranker.main_metric][1], rel=1e-9)
    assert mine.n_rows.iloc[0] == sum(int(f.request_id.nunique()) for f in frames)
    assert mine.days_profiled.iloc[0] == 7
    assert math.isfinite(mine.reference_value["ndcg_at_10"])

    # the catalogue figures: the daily functions on the week's impressions themselves, in their logged order
    impressions = pd.concat([day_frame(demo_db, ranker, d, config.label_delay_days)[0] for d in days],
                            ignore_index=True)
    ref = reference_of(config, ranker)
    direct = _catalogue(R.ItemCounts.of(impressions.item_id.to_numpy()), ref.items, impressions.score.to_numpy(), ref)
    for metric in CATALOGUE:
        assert math.isfinite(direct[metric]) and mine.value[metric] == pytest.approx(direct[metric], rel=1e-9), metric
        assert mine.reference_value[metric] == pytest.approx(ref.values[metric], rel=1e-12)


def test_item_counts_cost_per_ranker_day(demo_run, demo_db, ranker):
    """What monitoring.ranking_item_counts costs on the demo (docs/tables.md quotes it): its files' bytes per
    ranker-day, and its rows equal the distinct items shown per version and day."""
    config, _ = demo_run
    counted = demo_db.execute("""SELECT partition_date, model_version, count(*) AS items, sum(impressions) AS n
                                 FROM monitoring.ranking_item_counts WHERE model_id = ? GROUP BY ALL""",
                              [ranker.id]).df()
    shown = demo_db.execute("""SELECT partition_date, model_version, count(DISTINCT item_id) AS items, count(*) AS n
                               FROM raw.ranking_impressions WHERE model_id = ? GROUP BY ALL""", [ranker.id]).df()
    key = ["partition_date", "model_version"]
    pd.testing.assert_frame_equal(counted.sort_values(key).reset_index(drop=True),
                                  shown.sort_values(key).reset_index(drop=True), check_dtype=False)
    root = Path(lake_of(demo_db).path("monitoring.ranking_item_counts"))
    # the current version's files, not those replaced by later runs
    files = [Path(u.removeprefix("file://")) for u in DeltaTable(str(root)).file_uris()]
    ranker_days = demo_db.execute("SELECT count(DISTINCT (model_id, partition_date)) FROM "
                                  "monitoring.ranking_item_counts").fetchone()[0]
    per_day = sum(f.stat().st_size for f in files) / ranker_days
    print(f"ranking_item_counts: {per_day / 1024:.1f} KiB per ranker-day, "
          f"{counted['items'].mean():.0f} rows per ranker-day ({len(files)} files, {ranker_days} ranker-days)")
    assert 0 < per_day < 200_000


def test_the_window_check_warns_on_the_popularity_collapse_week_only(demo_run, demo_db, ranker):
    """data/demo/incidents.yaml: home_recommender's popularity collapse on 2026-10-17 and 10-18 (the week of
    2026-10-12). That week warns on its NDCG@10 below the floor beyond sampling error and on its concentration
    above `evaluation.concentration_ratio` (default) x the reference's; the week before does not; a ratio above
    the week's own silences the popularity warning."""
    store = demo_db.execute("""SELECT * FROM monitoring.evaluation_store WHERE model_id = ? AND model_version = '*'
                               AND window_name = 'week' AND days_profiled = 7""", [ranker.id]).df()
    store["start"] = pd.to_datetime(store.window_start).dt.date
    limit = EVALUATION_DEFAULT.concentration_ratio
    warned = {start: ranker_window_warnings(part, ranker, limit) for start, part in store.groupby("start")}
    collapse, stable = dt.date(2026, 10, 12), dt.date(2026, 10, 5)
    assert {w.kind for w in warned[collapse]} == {"performance", "popularity"}, warned[collapse]
    week = store[store.start == collapse].set_index("metric")
    ratio = week.value["popularity_concentration"] / week.reference_value["popularity_concentration"]
    assert ratio > limit
    assert warned[stable] == []
    looser = ranker_window_warnings(store[store.start == collapse], ranker, ratio + 0.01)
    assert {w.kind for w in looser} == {"performance"}


def _week(config, start: dt.date):
    return next(w for w in closed_windows(config, [start + dt.timedelta(days=6)]) if w.spec.name == "week")


def _main_row(md: str) -> dict[str, str]:
    """The markdown report's main-metric table (header and its one row) as a dict."""
    lines = md.split("## Main metric", 1)[1].splitlines()
    header, _, row = (line.strip("|").split("|") for line in [x for x in lines if x.startswith("|")][:3])
    return {h.strip(): v.strip() for h, v in zip(header, row, strict=True)}


def test_the_collapse_weeks_report_has_the_stores_figures_and_what_warned(demo_run, demo_db, ranker):
    """The ranker's report of its popularity-collapse week (2026-10-12, data/demo/incidents.yaml), written by
    evaluation_store once the week closed: its NDCG@10 value, reference, previous week, requests and floor are the
    store's row of that week, it names both warnings with the concentration's alert line (1.25 x the reference's),
    and the check's failure for the ranker on the week's last day points to it."""
    config, result = demo_run
    week = _week(config, dt.date(2026, 10, 12))
    store = demo_db.execute("""SELECT metric, value, reference_value, previous_value, n_rows, n_labelled
                               FROM monitoring.evaluation_store WHERE model_id = ? AND model_version = '*'
                               AND window_id = ?""", [ranker.id, week.key]).df().set_index("metric")
    md_path, html_path = (report_path(config, ranker.id, week, ext) for ext in ("md", "html"))
    md = md_path.read_text()
    main = _main_row(md)
    assert main["metric"] == "ndcg_at_10"
    row = store.loc["ndcg_at_10"]
    for column, expected in (("window", row.value), ("reference", row.reference_value),
                             ("previous window", row.previous_value),
                             ("floor", ranker.thresholds.min_metric_ratio * row.reference_value),
                             ("standard error", store.value["ndcg_at_10" + STANDARD_ERROR])):
        assert float(main[column]) == pytest.approx(expected, rel=5e-4), column  # 4 significant digits
    assert (int(main["requests"]), int(main["labelled requests"])) == (row.n_rows, row.n_labelled)
    assert f"{int(row.n_rows)} requests" in md
    # every per-request metric at each k and the catalogue figures are listed
    for k in ranker.ranking.ks:
        assert f"| precision_at_{k} | " in md and f"| hit_rate_at_{k} | " in md
    concentration = store.loc["popularity_concentration"]
    line = next(x for x in md.splitlines() if x.startswith("| popularity_concentration |"))
    alert = float(line.strip("|").split("|")[4])
    assert alert == pytest.approx(EVALUATION_DEFAULT.concentration_ratio * concentration.reference_value, rel=5e-4)
    assert concentration.value > alert
    assert "warned** on performance, popularity:" in md
    assert "- popularity: popularity_concentration" in md and "- performance: ndcg_at_10" in md

    # the check's failure for the ranker, as the alert sensor reads it, carries the report's path
    evaluation = next(e for e in result.get_asset_check_evaluations()
                      if e.check_name == WINDOW_CHECK and e.partition == str(week.end))
    failures = [f for f in evaluation.metadata["failures"].value if f["model_id"] == ranker.id]
    assert len(failures) == 1
    assert f"report: {report_path(config, ranker.id, week)}" in failures[0]["message"]
    assert [w["report"] for w in failures[0]["details"]["windows"]] == [str(html_path)]

    # the HTML, as Chromium renders it: the same figures, the warning box
    with browser_page(1100, 900) as (page, errors):
        page.goto(html_path.as_uri())
        cells = page.locator("#main tr").nth(1).locator("td").all_inner_texts()
        assert cells[:4] == [main["metric"], main["window"], main["reference"], main["previous window"]]
        assert page.locator("#checks.warned li").count() == 2
        assert page.locator("#per-request tr").count() == 1 + len(ranker.ranking.ks) * len(RANKING_AT_K) + len(RANKER_PER_REQUEST)
        assert errors == []


def test_a_stable_weeks_report_says_nothing_warned(demo_run, ranker):
    config, result = demo_run
    week = _week(config, dt.date(2026, 10, 5))
    md = report_path(config, ranker.id, week, "md").read_text()
    assert "nothing warned on this window" in md and "warned**" not in md
    assert "nothing warned" in report_path(config, ranker.id, week, "html").read_text()
    evaluation = next(e for e in result.get_asset_check_evaluations()
                      if e.check_name == WINDOW_CHECK and e.partition == str(week.end))
    assert ranker.id not in {f["model_id"] for f in evaluation.metadata["failures"].value}
