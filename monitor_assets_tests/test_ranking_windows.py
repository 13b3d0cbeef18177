"""Rankers in the evaluation store (monitor_assets/ranking/windows.py): a window's per-request metrics merged
from the days equal the metrics over the window's requests themselves."""

import datetime as dt
import math
from dataclasses import replace

import pandas as pd
import pytest

from monitor_assets.ranking.logic import day_frame, labels_complete, request_figures
from monitor_assets.ranking.windows import merge


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
    assert len(store) and {"ndcg_at_10", "mrr", "label_coverage"} <= set(store.metric)
    assert not ({"catalogue_coverage", "novelty"} & set(store.metric))
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
    assert mine.n_rows.iloc[0] == sum(int(f.request_id.nunique()) for f in frames)
    assert mine.days_profiled.iloc[0] == 7
    assert math.isfinite(mine.reference_value["ndcg_at_10"])
