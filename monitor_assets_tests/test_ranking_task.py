"""The ranking task end to end on a user's own data: ranked lists and interactions in the shapes users have
(one CSV row per impression with a CSV of clicks and purchases; one JSON line per request with its list), through
the whole monitoring job beside an ordinary classifier."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from monitor_assets.config import ConfigError, load_config
from monitor_assets.constants import RANKING_DRIFT_CHECK, RANKING_PERFORMANCE_CHECK
from monitor_assets.keys import RANKING_PERFORMANCE
from monitor_assets.storage.warehouse import open_warehouse

from .conftest import CSV_WORLD, run_job, write

CATALOGUE = [f"sku{i:03d}" for i in range(300)]
EVENT_GRADE = {"click": 1, "purchase": 3}


def _requests(rng, day, n, collapse=False, per_list=10):
    """A day of a recommender: each request shows `per_list` items; some are later clicked or bought. A good day
    puts the items the user will act on near the top; a collapsed day shows the same few popular items in an
    order unrelated to what the user wants."""
    out = []
    for k in range(n):
        pool = CATALOGUE[:15] if collapse else CATALOGUE
        items = list(rng.choice(pool, per_list, replace=False))
        grades = rng.choice([0, 0, 0, 0, 1, 1, 3], per_list)
        noise = rng.normal(0, 0.3 if not collapse else 5.0, per_list)
        order = np.argsort(-(grades + noise), kind="stable")
        out.append((f"{day:%m%d}-r{k}", [items[i] for i in order], [int(grades[i]) for i in order]))
    return out


def _classifier_files(tmp_path, rng, days):
    """An ordinary binary classifier in the same config: CSV predictions and labels, a Parquet reference."""
    truth = {}
    for day in days:
        n = 300
        y = rng.binomial(1, 0.3, n)
        frame = pd.DataFrame({"request_id": [f"c{day:%m%d}-{k}" for k in range(n)],
                              "ts": f"{day:%Y-%m-%d} 10:00:00",
                              "proba": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1).round(4),
                              "tenure": rng.gamma(3, 10, n).round(1)})
        write(tmp_path / "export" / f"{day:%Y-%m-%d}" / "churn.csv", frame.to_csv(index=False))
        write(tmp_path / "truth" / f"{day:%Y-%m-%d}.csv", pd.DataFrame({"request_id": frame.request_id, "y": y})
              .to_csv(index=False))
        truth[day.date()] = (frame, y)
    y = rng.binomial(1, 0.3, 2000)
    pd.DataFrame({"tenure": rng.gamma(3, 10, 2000), "proba": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 2000), 0, 1),
                  "y": y}).to_parquet(tmp_path / "churn_ref.parquet")
    return truth


CLASSIFIER = """
  - id: churn
    task: binary_classification
    reference: churn_ref.parquet
    reference_fields: {score: proba, label: y}
    features: {tenure: numeric}"""


def _config(tmp_path, rankers: str, delay: int = 0):
    return load_config(write(tmp_path / "mine.yaml", f"""
partitions: {{start_date: 2025-06-01, end_date: 2025-06-03}}
label_delay_days: {delay}
{CSV_WORLD.format(tmp=tmp_path)}models:{CLASSIFIER}
{rankers}
"""))


def _sklearn_ndcg(requests, k):
    """scikit-learn's NDCG@k averaged over requests (all lists of one length here), the logged order as scores."""
    y_true = np.array([g for _, _, g in requests], dtype=float)
    y_score = -np.tile(np.arange(y_true.shape[1], dtype=float), (len(requests), 1))
    return ndcg_score(y_true, y_score, k=k)


def _precision(requests, k):
    return float(np.mean([sum(g > 0 for g in grades[:k]) / k for _, _, grades in requests]))


def _performance(con, model_id, version="*"):
    return con.execute("""SELECT partition_date, metric, value, standard_error, n_requests, n_labelled_requests,
                                 label_coverage, unmatched_interactions, labels_complete, reference_value, floor,
                                 p_value, below_baseline
                          FROM monitoring.ranking_performance WHERE model_id = ? AND model_version = ?
                          ORDER BY partition_date, metric""", [model_id, version]).df()


def test_impression_rows_and_a_csv_of_clicks_and_purchases(tmp_path):
    """One CSV row per impression (rank and score), a CSV of interactions as labels, a Parquet reference of
    impressions with their events; a collapse on day 2 fails the baseline check, day 1 passes; bad rows are
    quarantined with their reasons and the counts add up; the classifier beside it is judged as before."""
    rng = np.random.default_rng(5)
    days = pd.date_range("2025-06-01", periods=2, freq="D")
    truth = _classifier_files(tmp_path, rng, days)
    shown = {}
    for i, day in enumerate(days):
        requests = _requests(rng, day, 250, collapse=i == 1)
        shown[day.date()] = requests
        rows = [{"request": r, "product": item, "position": pos + 1, "relevance_score": round(1 - pos / 10, 2),
                 "served": f"{day:%Y-%m-%d}"} for r, items, _ in requests for pos, item in enumerate(items)]
        acts = [{"request": r, "product": item, "action": a}
                for r, items, grades in requests for item, g in zip(items, grades, strict=True) if g
                for a in (["click", "purchase"] if g == 3 else ["click"])]  # a purchase follows a click
        if i == 0:
            first = requests[0][0]
            rows += [{"request": "", "product": "sku001", "position": 1, "relevance_score": 0.5},  # no request id
                     {"request": first, "product": "skuX", "position": 11, "relevance_score": "high"},  # not a number
                     {"request": first, "product": requests[0][1][0], "position": 12, "relevance_score": 0.1},  # twice
                     {"request": requests[1][0], "product": "skuY", "position": 0, "relevance_score": 0.2}]  # rank 0
            acts += [{"request": first, "product": "sku299x", "action": "click"},  # an item that was not shown
                     {"request": first, "product": requests[0][1][1], "action": "hover"}]  # not a graded event
        write(tmp_path / "recs" / f"{day:%Y-%m-%d}.csv", pd.DataFrame(rows).to_csv(index=False))
        write(tmp_path / "events" / f"{day:%Y-%m-%d}.csv", pd.DataFrame(acts).to_csv(index=False))
    ref = _requests(rng, pd.Timestamp("2025-05-01"), 400)
    reference = pd.DataFrame([{"request": r, "product": item, "position": pos + 1, "relevance_score": 1 - pos / 10,
                               "action": {0: None, 1: "click", 3: "purchase"}[g]}
                              for r, items, grades in ref for pos, (item, g) in enumerate(zip(items, grades, strict=True))])
    reference.to_parquet(tmp_path / "recs_ref.parquet")
    config = _config(tmp_path, """
  - id: home_recs
    task: ranking
    version: v7
    source: recs/{date}.csv
    labels: events/{date}.csv
    reference: recs_ref.parquet
    ranking: {k: [5, 10], request_id: request, item_id: product, rank: position, score: relevance_score,
              event: action, relevance: {click: 1, purchase: 3}}
    thresholds: {min_metric_ratio: 0.9}""")
    assert [m.id for m in config.models] == ["churn"] and [r.id for r in config.rankers] == ["home_recs"]
    assert config.rankers[0].main_metric == "ndcg_at_10" and config.rankers[0].ranking.shape == "impressions"
    result = run_job(config, "2025-06-01", "2025-06-02")
    assert result.success
    con = open_warehouse(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        perf = _performance(con, "home_recs")
        day1 = perf[perf.partition_date == pd.Timestamp("2025-06-01")].set_index("metric")
        requests = shown[days[0].date()]
        # Interactions are graded by their best event (a purchase beats the click before it).
        for k in (5, 10):
            assert day1.value[f"ndcg_at_{k}"] == pytest.approx(_sklearn_ndcg(requests, k), abs=1e-12)
            assert day1.value[f"precision_at_{k}"] == pytest.approx(_precision(requests, k), abs=1e-12)
        assert day1.n_requests.iloc[0] == 250
        labelled = sum(any(g) for _, _, g in requests)
        assert day1.n_labelled_requests.iloc[0] == labelled
        assert day1.label_coverage.iloc[0] == pytest.approx(labelled / 250)
        assert day1.unmatched_interactions.iloc[0] == 1  # the click on an item not shown is counted, not lost
        ndcg_each = [ndcg_score([g], [-np.arange(10.0)], k=10) if any(g) else 0.0 for _, _, g in requests]
        assert day1.value["mean_loss"] == pytest.approx(1 - np.mean(ndcg_each), abs=1e-12)
        assert day1.standard_error["ndcg_at_10"] == pytest.approx(np.std(ndcg_each, ddof=1) / np.sqrt(250), rel=1e-9)
        # The reference's own NDCG@10 is the baseline; day 1 is within it, day 2's collapse is far below.
        assert day1.reference_value["ndcg_at_10"] == pytest.approx(_sklearn_ndcg(ref, 10), abs=1e-12)
        assert not day1.below_baseline["ndcg_at_10"]
        day2 = perf[perf.partition_date == pd.Timestamp("2025-06-02")].set_index("metric")
        assert day2.below_baseline["ndcg_at_10"] and day2.p_value["ndcg_at_10"] < 1e-6
        # Popularity: day 2 shows 15 items of 300, day 1 nearly all.
        assert day2.value["catalogue_coverage"] == pytest.approx(15 / 300)
        assert day2.value["popularity_concentration"] > 3 * day1.value["popularity_concentration"]
        assert day2.value["item_drift_js"] > 0.5 > day1.value["item_drift_js"]
        assert day2.value["novelty"] < day1.value["novelty"]
        # A version's rows beside the whole day's.
        assert _performance(con, "home_recs", "v7").shape[0] == perf.shape[0]
        # Quarantine: one row each, with its reason; loaded + quarantined = read.
        q = con.execute("""SELECT source, reason, count(*) FROM raw.quarantine WHERE model_id = 'home_recs'
                           AND line_no IS NOT NULL GROUP BY ALL ORDER BY 1, 2""").fetchall()
        assert q == [("ranking", "bad_type", 1), ("ranking", "duplicate", 1), ("ranking", "missing_field", 1),
                     ("ranking", "out_of_range", 1), ("ranking_labels", "unknown_category", 1)]
        log = con.execute("""SELECT source, records_read, records_loaded, records_quarantined FROM raw.ingestion_log
                             WHERE partition_date = '2025-06-01' AND source LIKE 'ranking%' ORDER BY 1""").fetchall()
        assert log[0] == ("ranking", 2504, 2500, 4)
        assert log[1][0] == "ranking_labels" and log[1][1] == log[1][2] + log[1][3] and log[1][3] == 1
        assert con.execute("SELECT count(*) FROM raw.ranking_impressions WHERE partition_date = '2025-06-01'"
                           ).fetchone()[0] == 2500
        # The classifier: its figures as scikit-learn has them, and no trace of the ranker in its tables.
        churn = con.execute("""SELECT partition_date, volume, roc_auc FROM monitoring.performance_daily
                               ORDER BY 1""").df()
        assert list(churn.volume) == [300, 300]
        frame, y = truth[days[0].date()]
        assert churn.roc_auc[0] == pytest.approx(roc_auc_score(y, frame.proba), abs=1e-12)
        for table in ("monitoring.performance_daily", "monitoring.feature_drift", "monitoring.drift_summary"):
            assert {m for (m,) in con.execute(f"SELECT DISTINCT model_id FROM {table}").fetchall()} == {"churn"}
    finally:
        con.close()
    # The check: day 1 passes, day 2 fails with ERROR, each on its own partition.
    evaluations = {e.partition: e for e in result.get_asset_check_evaluations()
                   if e.check_name == RANKING_PERFORMANCE_CHECK}
    assert evaluations["2025-06-01"].passed
    assert not evaluations["2025-06-02"].passed
    assert evaluations["2025-06-02"].severity == dg.AssetCheckSeverity.ERROR
    assert evaluations["2025-06-02"].asset_key == RANKING_PERFORMANCE


def test_json_lines_with_a_list_per_request_and_late_interactions(tmp_path):
    """One JSON line per request, `items: [{item_id, score}]` or ids with a `scores` list; interactions arriving
    on the day and the day after; bad records (no request id, an empty list, a score that is not a number, an
    item twice, a request logged twice) quarantined whole with their reasons."""
    rng = np.random.default_rng(9)
    days = pd.date_range("2025-06-01", periods=3, freq="D")
    _classifier_files(tmp_path, rng, days)
    shown = {}
    for i, day in enumerate(days):
        requests = _requests(rng, day, 120, per_list=8)
        shown[day.date()] = requests
        lines = []
        for j, (r, items, _) in enumerate(requests):
            scores = [round(1 - p / 8, 3) for p in range(len(items))]
            if j % 2:
                lines.append({"rid": r, "version": "v2" if j % 3 == 0 else "v1",
                              "recs": [{"sku": s, "p": p} for s, p in zip(items, scores, strict=True)]})
            else:
                lines.append({"rid": r, "version": "v1", "recs": items, "recs_scores": scores})
        if i == 0:
            lines += [{"version": "v1", "recs": ["a", "b"]},  # no request id
                      {"rid": "empty", "recs": []},  # an empty list
                      {"rid": "bad-score", "recs": [{"sku": "a", "p": "high"}, {"sku": "b", "p": 0.1}]},
                      {"rid": "twice", "recs": ["a", "b", "a"]},
                      {"rid": requests[0][0], "recs": ["z"]}]  # the request again
        write(tmp_path / "lists" / f"{day:%Y-%m-%d}.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    # Interactions of day d come in the files of day d (half) and day d + 1 (the rest).
    events = {d.date(): [] for d in pd.date_range("2025-06-01", periods=4, freq="D")}
    for day in days:
        for j, (r, items, grades) in enumerate(shown[day.date()]):
            for item, g in zip(items, grades, strict=True):
                if g:
                    late = (day + pd.Timedelta(days=j % 2)).date()
                    events[late].append({"request_id": r, "item": item, "kind": "purchase" if g == 3 else "click"})
    for d, rows in events.items():
        write(tmp_path / "acts" / f"{d}.jsonl", "\n".join(json.dumps(x) for x in rows) + "\n")
    config = _config(tmp_path, """
  - id: search
    task: ranking
    source: lists/{date}.jsonl
    labels: {path: "acts/{date}.jsonl", fields: {request_id: request_id, item_id: item}}
    main_metric: map_at_5
    ranking: {k: 5, request_id: rid, items: recs, scores: recs_scores, item_id: sku, score: p, model_version: version,
              event: kind}""", delay=1)
    assert config.rankers[0].ranking.shape == "lists" and config.rankers[0].main_k == 5
    assert run_job(config, "2025-06-01", "2025-06-03").success
    con = open_warehouse(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        perf = _performance(con, "search")
        day1 = perf[perf.partition_date == pd.Timestamp("2025-06-01")].set_index("metric")
        requests = shown[days[0].date()]
        # Both halves of day 1's interactions (its own file and the next day's) are matched.
        assert day1.value["ndcg_at_5"] == pytest.approx(_sklearn_ndcg(requests, 5), abs=1e-12)
        assert day1.value["precision_at_5"] == pytest.approx(_precision(requests, 5), abs=1e-12)
        assert bool(day1.labels_complete.iloc[0])
        day3 = perf[perf.partition_date == pd.Timestamp("2025-06-03")]
        assert not day3.labels_complete.iloc[0]  # day 4's file, with the rest of its interactions, is not read yet
        # Versions: each version's requests on their own rows.
        v2 = _performance(con, "search", "v2")
        v2_day1 = v2[v2.partition_date == pd.Timestamp("2025-06-01")].set_index("metric")
        v2_requests = [r for j, r in enumerate(requests) if j % 2 and j % 3 == 0]
        assert v2_day1.n_requests.iloc[0] == len(v2_requests)
        assert v2_day1.value["ndcg_at_5"] == pytest.approx(_sklearn_ndcg(v2_requests, 5), abs=1e-12)
        details = dict(con.execute("""SELECT detail, reason FROM raw.quarantine WHERE source = 'ranking'
                                      AND line_no IS NOT NULL""").fetchall())
        assert sorted(details.values()) == ["bad_type", "duplicate", "duplicate", "missing_field", "missing_field"]
        assert any("twice in the list of request twice" in d for d in details)
        log = con.execute("""SELECT records_read, records_loaded, records_quarantined FROM raw.ingestion_log
                             WHERE source = 'ranking' AND partition_date = '2025-06-01'""").fetchone()
        assert log == (125, 120, 5)
        assert con.execute("SELECT count(*) FROM raw.ranking_impressions WHERE partition_date = '2025-06-01'"
                           ).fetchone()[0] == 120 * 8
    finally:
        con.close()


@pytest.mark.parametrize(("ranking", "main", "problem"), [
    ("{k: [5, 10]}", "ndcg_at_20", "models[1].main_metric: expected one of ndcg_at_5"),
    ("{k: 0}", None, "models[1].ranking.k[0]: expected an integer in [1, 1000]"),
    ("{shape: rows}", None, "models[1].ranking.shape: expected one of lists, impressions"),
    ("{relevance: {click: -1}}", None, "models[1].ranking.relevance.click: expected a number in [0, 1000]"),
    ("{gain: log}", None, "models[1].ranking.gain: expected one of linear, exponential"),
])
def test_ranker_config_errors_name_the_key(tmp_path, ranking, main, problem):
    line = f"\n    main_metric: {main}" if main else ""
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        _config(tmp_path, f"""
  - id: recs
    task: ranking
    source: recs/{{date}}.csv
    ranking: {ranking}{line}""")


def test_ranker_defaults_and_without_a_date_in_its_path(tmp_path):
    config = _config(tmp_path, """
  - id: recs
    task: ranking
    source: recs/{date}.jsonl""")
    ranker = config.rankers[0]
    assert (ranker.ranking.ks, ranker.main_metric, ranker.ranking.shape, ranker.labels) == ((5, 10), "ndcg_at_10",
                                                                                            "lists", None)
    assert dict(ranker.ranking.relevance) == {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
    with pytest.raises(ConfigError, match=r"models\[1\].source.path: expected a \{date\} placeholder"):
        _config(tmp_path, """
  - id: recs
    task: ranking
    source: recs/all.csv""")
    with pytest.raises(ConfigError, match=r"models\[1\].id: duplicate model id 'churn'"):
        _config(tmp_path, """
  - id: churn
    task: ranking
    source: recs/{date}.csv""")


SMALL_CATALOGUE = CATALOGUE[:90]  # under the drift's 100 top items: every item has its own bin
POPULARITY = 1 / np.arange(1, 91) ** 0.8


def _shown(rng, n, collapse=False):
    """The lists of `n` requests (the drift check needs no label): 10 of 90 items by a long-tailed popularity, or
    (collapsed) 10 of the 15 most popular ones."""
    pool, p = (SMALL_CATALOGUE[:15], None) if collapse else (SMALL_CATALOGUE, POPULARITY / POPULARITY.sum())
    return [list(rng.choice(pool, 10, replace=False, p=p)) for _ in range(n)]


def test_drift_thresholds_by_hand_and_no_false_alarm_on_stable_days():
    """The thresholds are the upper prediction bound over the reference's day-sized chunks (scipy's t), the
    chunk's drift is scipy's Jensen-Shannon distance against the rest of the reference, and 300 stable days drawn
    like the reference raise nothing while every collapsed day's drift is above its threshold (its concentration
    is not: 15 items shown evenly give the top item less of the impressions than a stable day's bestseller)."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import t as student_t

    from monitor_assets.ranking import drift as D
    from monitor_assets.stats import ranking as R

    rng = np.random.default_rng(11)
    ref = _shown(rng, 3000)
    request_index = np.repeat(np.arange(len(ref)), 10)
    items = np.array([i for lst in ref for i in lst], dtype=object)
    thresholds = D.calibrate(request_index, items, 250)
    js = thresholds["item_drift_js"]
    assert js.chunk_requests == 250 and len(js.values) == 12  # 3,000 requests in chunks of 250
    m, values = len(js.values), np.array(js.values)
    by_hand = values.mean() + student_t.isf(D.ALPHA, m - 1) * values.std(ddof=1) * np.sqrt(1 + 1 / m)
    assert js.value == pytest.approx(by_hand, rel=1e-12)
    # chunk 0 against the rest: shares of impressions per item (90 items: each its own bin, the other bucket empty)
    chunk, rest = pd.Series(items[:2500]).value_counts(), pd.Series(items[2500:]).value_counts()
    p, q = [chunk.get(b, 0) for b in SMALL_CATALOGUE], [rest.get(b, 0) for b in SMALL_CATALOGUE]
    assert js.values[0] == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    # concentration of chunk 0: its most shown item (1% of the 90 items the reference shows, at least one)
    assert thresholds["popularity_concentration"].values[0] == pytest.approx(chunk.iloc[0] / 2500)
    whole = R.ItemCounts.of(items)

    def above(day):
        counts = R.ItemCounts.of(np.array([i for lst in day for i in lst], dtype=object))
        return (R.item_distribution_drift(counts, whole) > js.value,
                R.catalogue_metrics(counts, whole)["concentration"] > thresholds["popularity_concentration"].value)

    assert sum(any(above(_shown(rng, 250))) for _ in range(300)) == 0
    assert all(above(_shown(rng, 250, collapse=True)) == (True, False) for _ in range(20))
    with pytest.raises(ValueError, match="too small to calibrate"):
        D.calibrate(request_index[:500], items[:500], 250)  # 50 requests: chunks of 10


def test_drift_check_finds_a_collapse_on_its_day_without_any_label(tmp_path):
    """A ranker with a reference and no interactions at all: the label-based check judges nothing, the drift
    check (WARN) passes the stable day and fails the collapsed one, naming the statistic and the day's size."""

    rng = np.random.default_rng(13)
    days = pd.date_range("2025-06-01", periods=2, freq="D")
    _classifier_files(tmp_path, rng, days)
    for i, day in enumerate(days):
        lines = [{"request_id": f"{day:%m%d}-{k}", "items": items}
                 for k, items in enumerate(_shown(rng, 250, collapse=i == 1))]
        write(tmp_path / "lists" / f"{day:%Y-%m-%d}.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    ref = _shown(rng, 2500)
    pd.DataFrame([{"request_id": f"ref-{k}", "item_id": item, "rank": pos + 1}
                  for k, items in enumerate(ref) for pos, item in enumerate(items)]).to_parquet(tmp_path / "ref.parquet")
    config = _config(tmp_path, """
  - id: home_recs
    task: ranking
    source: lists/{date}.jsonl
    reference: ref.parquet""")
    result = run_job(config, "2025-06-01", "2025-06-02")
    assert result.success
    evaluations = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
    assert evaluations[(RANKING_DRIFT_CHECK, "2025-06-01")].passed
    collapsed = evaluations[(RANKING_DRIFT_CHECK, "2025-06-02")]
    assert not collapsed.passed and collapsed.severity == dg.AssetCheckSeverity.WARN
    message = collapsed.metadata["reason"].value
    assert message.startswith("item_drift_js") and message.endswith("on 250 requests")
    assert collapsed.metadata["evaluated"].value == 1
    assert evaluations[(RANKING_PERFORMANCE_CHECK, "2025-06-02")].metadata["evaluated"].value == 0  # no labels


def test_many_days_load_in_one_commit_and_a_day_without_its_file_keeps_its_rows(tmp_path):
    """A run's days of a ranker go in one Delta commit per table (not one a day); re-run with one day's file gone,
    that day keeps the rows loaded before (a typo must not wipe a day) and the other days are replaced."""
    from deltalake import DeltaTable

    from monitor_assets.ranking.logic import IMPRESSIONS, ingest_rankers
    from monitor_assets.storage.warehouse import connect, lake_of

    rng = np.random.default_rng(4)
    days = pd.date_range("2025-06-01", periods=3, freq="D")
    for day in days:
        lines = [{"rid": r, "recs": items} for r, items, _ in _requests(rng, day, 50, per_list=5)]
        write(tmp_path / "lists" / f"{day:%Y-%m-%d}.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    _classifier_files(tmp_path, rng, days)
    config = _config(tmp_path, """
  - id: search
    task: ranking
    source: lists/{date}.jsonl
    ranking: {k: 5, request_id: rid, items: recs}""")
    dates = [d.date() for d in days]
    with connect(config.warehouse_path) as con:
        lake = lake_of(con)
        ingest_rankers(con, config, dates)
        path = lake.path(IMPRESSIONS)
        first = DeltaTable(str(path)).version()
        counts = dict(con.execute("SELECT partition_date, count(*) FROM raw.ranking_impressions GROUP BY 1").fetchall())
        assert [counts[d] for d in dates] == [250, 250, 250]
        (tmp_path / "lists" / "2025-06-02.jsonl").unlink()
        per_day = ingest_rankers(con, config, dates)
        assert DeltaTable(str(path)).version() == first + 1  # days 1 and 3 replaced in one commit
        assert per_day[dates[1]]["search"]["records_read"] == 0 and per_day[dates[0]]["search"]["records_read"] == 50
        again = dict(con.execute("SELECT partition_date, count(*) FROM raw.ranking_impressions GROUP BY 1").fetchall())
        assert again == counts  # day 2 kept its rows
