"""The closed loop for rankers: the per-request loss 1 - NDCG@k (checked against scikit-learn), the reference loss
batch from the ranker's reference file, the daily trigger on the days whose interactions are all read (a popularity
collapse opens a request, stable rankers none), and the one family of models and rankers a day."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from monitor_assets.config import ConfigError, load_config
from monitor_assets.ranking import logic as RL
from monitor_assets.retraining import logic as L
from monitor_assets.stats import ranking as R
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import CSV_WORLD, write

START = dt.date(2025, 6, 1)
CATALOGUE = np.array([f"sku{i:03d}" for i in range(400)])
EVENTS = {1: "click", 3: "purchase"}


# -- the per-request loss ---------------------------------------------------------------------------------


def _sklearn_loss(grades, scores, k):
    """1 - scikit-learn's NDCG@k of one request (its own list, any length), ties averaged as `ndcg_score` does."""
    return 1.0 - ndcg_score(np.asarray([grades], float), np.asarray([scores], float), k=k)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_request_loss_is_one_minus_sklearn_ndcg(k):
    """Per request, with tied scores, requests without a relevant item, and lists shorter than k."""
    rng = np.random.default_rng(11)
    rows, expected = [], {}
    for r in range(300):
        n = int(rng.integers(2, 13))  # lists of 2..12 items: many shorter than k = 10
        grades = rng.choice([0, 0, 0, 1, 2, 3], n) if r % 5 else np.zeros(n, int)  # every fifth: nothing relevant
        scores = rng.integers(0, 4, n).astype(float)  # few distinct scores: ties in most lists
        expected[f"q{r}"] = _sklearn_loss(grades, scores, k)
        rows += [(f"q{r}", g, s) for g, s in zip(grades, scores, strict=True)]
    frame = pd.DataFrame(rows, columns=["request", "grade", "score"])
    requests, loss = R.request_losses(frame.request, frame.grade, k, score=frame.score, ties="average")
    assert list(requests) == list(expected)
    np.testing.assert_allclose(loss, [expected[q] for q in requests], rtol=0, atol=1e-12)
    none = frame.groupby("request", sort=False).grade.max().reindex(requests).to_numpy() == 0
    assert none.sum() >= 60 and (loss[none] == 1.0).all()  # no relevant item: NDCG 0, loss 1 (as scikit-learn)
    _, excluded = R.request_losses(frame.request, frame.grade, k, score=frame.score, ties="average",
                                   no_relevant="exclude")
    assert np.isnan(excluded[none]).all()
    np.testing.assert_array_equal(excluded[~none], loss[~none])
    assert ((loss >= 0) & (loss <= 1)).all()


def test_frame_losses_use_the_logged_rank_and_the_ranker_settings(tmp_path):
    """The stage's per-request loss (`ranking.logic.frame_losses`): logged ranks (scikit-learn's scores: -rank),
    the main metric's k, `no_relevant`, each request's version; a list shorter than k."""
    frame = pd.DataFrame({
        "model_version": ["a"] * 3 + ["b"] * 4 + ["a"] * 2,
        "request_id": ["r1"] * 3 + ["r2"] * 4 + ["r3"] * 2,
        "rank": [1, 2, 3, 2, 1, 4, 3, 1, 2],
        "grade": [0.0, 3.0, np.nan, 1.0, 0.0, 3.0, 0.0, 0.0, np.nan]})  # NaN: no interaction
    for no_relevant in ("zero", "exclude"):
        ranker = _config(tmp_path, [("r", "ndcg_at_5")], no_relevant=no_relevant).rankers[0]
        out = RL.frame_losses(frame, ranker)
        expected = {r: _sklearn_loss(g.grade.fillna(0), -g["rank"], 5) for r, g in frame.groupby("request_id")}
        keep = ["r1", "r2"] + (["r3"] if no_relevant == "zero" else [])
        assert list(out.request_id) == keep and list(out.model_version) == ["a", "b", "a"][:len(keep)]
        np.testing.assert_allclose(out.loss, [expected[r] for r in keep], atol=1e-12)
    assert expected["r3"] == 1.0


# -- a tiny world of rankers --------------------------------------------------------------------------------


def _requests(rng, n, collapsed=False, per_list=10):
    """n requests of `per_list` items. A good ranker puts what the user will act on near the top; a collapsed
    one shows the same dozen bestsellers to everyone, in an order unrelated to what the user wants."""
    out = []
    for _ in range(n):
        pool = CATALOGUE[:12] if collapsed else CATALOGUE
        items = rng.choice(pool, per_list, replace=False)
        grades = rng.choice([0, 0, 0, 0, 0, 1, 1, 3], per_list)
        key = rng.normal(0, 1, per_list) + (0 if collapsed else 1.2 * grades)
        order = np.argsort(-key, kind="stable")
        out.append((list(items[order]), [int(g) for g in grades[order]]))
    return out


def _world(tmp_path, rankers: dict[str, set[int]], days: int, per_day: int = 300, seed: int = 0,
           reference: int = 2000, canary: tuple[int, bool] | None = None):
    """Each ranker's lists (JSON lines), interactions (CSV; half on the day, half the day after: label delay 1)
    and reference file (impressions with their event). `rankers`: id -> the day indexes it is collapsed.
    `canary` (first day, collapsed): from that day a challenger version v2 serves every third request."""
    rng = np.random.default_rng(seed)
    for ranker, collapsed in rankers.items():
        ref = _requests(rng, reference)
        pd.DataFrame([(f"ref{i}", item, rank + 1, EVENTS.get(g)) for i, (items, grades) in enumerate(ref)
                      for rank, (item, g) in enumerate(zip(items, grades, strict=True))],
                     columns=["request_id", "item_id", "rank", "event"]).to_parquet(tmp_path / f"ref_{ranker}.parquet")
        acts: dict[int, list] = {n: [] for n in range(days + 1)}
        for n in range(days):
            day = START + dt.timedelta(days=n)
            lines = []
            size = int(per_day * rng.normal(1, 0.05))
            on_canary = canary is not None and n >= canary[0]
            lists = _requests(rng, size, n in collapsed)
            if on_canary:
                challenger = _requests(rng, size, canary[1])
                lists = [challenger[i] if i % 3 == 0 else lists[i] for i in range(size)]
            for i, (items, grades) in enumerate(lists):
                rid = f"{ranker}-{day:%m%d}-{i}"
                version = "v2" if on_canary and i % 3 == 0 else "v1"
                lines.append(json.dumps({"request_id": rid, "model_version": version, "items": items,
                                         "scores": [round(1 - p / 20, 3) for p in range(len(items))]}))
                acts[n + i % 2] += [(rid, item, EVENTS[g]) for item, g in zip(items, grades, strict=True) if g]
            write(tmp_path / "lists" / f"{day}" / f"{ranker}.jsonl", "\n".join(lines) + "\n")
        for n, rows in acts.items():
            write(tmp_path / "acts" / f"{START + dt.timedelta(days=n)}" / f"{ranker}.csv",
                  pd.DataFrame(rows, columns=["request_id", "item_id", "event"]).to_csv(index=False))


def _config(tmp_path, rankers: list[tuple[str, str]], no_relevant: str = "zero", retraining: str = ""):
    entries = "".join(f"""
  - id: {ranker}
    task: ranking
    version: v1
    source: lists/{{date}}/{ranker}.jsonl
    labels: acts/{{date}}/{ranker}.csv
    reference: ref_{ranker}.parquet
    main_metric: {main}
    ranking: {{k: [5, 10], relevance: {{click: 1, purchase: 3}}, no_relevant: {no_relevant}}}{retraining}""" for ranker, main
                      in rankers)
    return load_config(write(tmp_path / "mine.yaml", f"""
partitions: {{start_date: {START}}}
label_delay_days: 1
{CSV_WORLD.format(tmp=tmp_path)}models:{entries}
"""))


def _days(n: int) -> list[dt.date]:
    return [START + dt.timedelta(days=i) for i in range(n)]


def _run(config, days: list[dt.date]) -> L.TriggerRun:
    """What the monitoring job does for the rankers' part of the loop: load, figures, versions, trigger."""
    with connect(config.warehouse_path, config.lake_path) as con:
        RL.ingest_rankers(con, config, days)
        RL.write_performance(con, config, days)
        L.refresh_versions(con, config, days)
        return L.run_trigger(con, config, days)


def test_a_popularity_collapse_opens_a_request_within_two_days_and_a_stable_ranker_none(tmp_path):
    collapse = 12
    _world(tmp_path, {"steady": set(), "collapsing": set(range(collapse, 30))}, days=18)
    config = _config(tmp_path, [("steady", "ndcg_at_10"), ("collapsing", "map_at_5")])
    run = _run(config, _days(18))
    rows = run.rows
    opened = {r["model_id"]: r["opened_on"] for r in run.opened}
    assert set(opened) == {"collapsing"}
    # the CUSUM crosses on the collapse's first day, persistence (2 of 3 days) opens the request on the second
    assert opened["collapsing"] == START + dt.timedelta(days=collapse + 1)
    day = rows.set_index(["model_id", "partition_date"])
    first = day.loc[("collapsing", START + dt.timedelta(days=collapse))]
    assert first.flagged and first.loss == "1-ndcg@5"  # the loss follows the main metric's k
    assert day.loc[("steady", START + dt.timedelta(days=collapse))].loss == "1-ndcg@10"
    assert not rows[rows.model_id == "steady"].flagged.any()
    # the day's mean loss is the mean of the requests' 1 - NDCG@k, computed again from the stored rows
    with connect(config.warehouse_path, config.lake_path) as con:
        frame, _ = RL.day_frame(con, config.rankers[1], START + dt.timedelta(days=3), 1)
        requests = con.execute("""SELECT * FROM monitoring.retraining_requests""").df()
        ref = con.execute("""SELECT model_id, model_version, count(*) AS n, avg(loss) AS mean, bool_and(complete) AS c,
                                    count(partition_date) AS dated
                             FROM monitoring.reference_losses GROUP BY ALL ORDER BY 1""").df()
    by_request = [_sklearn_loss(g.grade, -g["rank"], 5) for _, g in frame.groupby("request_id", sort=False)]
    assert day.loc[("collapsing", START + dt.timedelta(days=3))].mean_loss_day == pytest.approx(np.mean(by_request))
    assert day.loc[("collapsing", START + dt.timedelta(days=3))].n_day == len(by_request)
    # the last day's interactions are not all read (its next day's file is): no losses yet, and a note says so
    last = day.loc[("collapsing", START + dt.timedelta(days=17))]
    assert last.n_day == 0 and "interactions are not all read" in last.note
    # the reference batch: every request of the reference file (2,000 < reference_rows), tested from day 1
    assert list(ref.model_id) == ["collapsing", "steady"] and (ref.n == 2000).all() and ref.c.all()
    assert (ref.dated == 0).all() and (ref.model_version == "v1").all()
    assert rows[rows.model_id == "steady"].reference_anchor.eq(START).all()
    assert requests.status.tolist() == ["proposed"] and "1-ndcg@5" in requests.reason.iloc[0]
    assert "across the day's 2 models" in requests.reason.iloc[0]  # one family: both rankers tested that day


def test_stable_rankers_over_many_days_open_no_request(tmp_path):
    """Six stable rankers, 40 days each (240 ranker-days tested against a reference file of 6,000 requests, as
    the demo's). The trigger is calibrated to 0.5% of lone stable models opening a (false) request within 90
    days (ranker-like losses, simulated: 5 of 1,000 with this reference size), so the expected count here is
    6 x 0.005 x 40/90 = 0.013: none opens. Every ranker is tested on every day whose interactions are in, one
    family of six."""
    ids = [f"stable_{i}" for i in range(6)]
    _world(tmp_path, {i: set() for i in ids}, days=40, per_day=250, seed=3, reference=6000)
    config = _config(tmp_path, [(i, "ndcg_at_10") for i in ids])
    run = _run(config, _days(40))
    assert run.opened == []
    rows = run.rows
    tested = rows[rows.p_value.notna()].groupby("partition_date").size()
    # tested from the first day (a reference file: no reference days to wait), every day: the last one, whose
    # interactions are not all read, carries the CUSUM of the days before
    assert list(tested.index) == _days(40) and (tested == 6).all() and rows.flagged.sum() <= 1
    with connect(config.warehouse_path, config.lake_path) as con:
        assert L.models_tested(con, _days(40))[START + dt.timedelta(days=20)] == 6


def test_day_by_day_runs_count_each_day_once_its_interactions_are_in(tmp_path):
    """As the schedule runs it: one day a run, each run refreshing the label delay's days before it. A day's
    losses enter on the run after it (its interactions' second half), and the request opens on the same day as
    in one backfill run."""
    collapse = 8
    _world(tmp_path, {"collapsing": set(range(collapse, 30))}, days=12)
    config = _config(tmp_path, [("collapsing", "ndcg_at_10")])
    from monitor_assets.wiring import days_with_label_refresh

    opened = []
    for day in _days(12):
        opened += _run(config, days_with_label_refresh([day], config)).opened
    assert [(r["model_id"], r["opened_on"]) for r in opened] == [("collapsing", START + dt.timedelta(days=collapse + 1))]
    with connect(config.warehouse_path, config.lake_path) as con:
        stored = con.execute("""SELECT partition_date, n_day FROM monitoring.retraining_trigger
                                ORDER BY partition_date""").df()
    assert (stored.n_day.iloc[:-1] > 200).all() and stored.n_day.iloc[-1] == 0


def test_ranker_retraining_settings_and_cli_listing(tmp_path, capsys):
    config = _config(tmp_path, [("r", "ndcg_at_10")], retraining="\n    retraining: {window_days: 3, "
                                                                   "entry_point: 'pkg.mod:fn'}")
    assert config.rankers[0].retraining.window_days == 3
    assert config.rankers[0].retraining.entry_point == "pkg.mod:fn"
    with pytest.raises(ConfigError, match=r"models\[0\].retraining.loss: a ranker's loss is fixed"):
        _config(tmp_path, [("r", "ndcg_at_10")], retraining="\n    retraining: {loss: squared_error}")
    with pytest.raises(ConfigError, match=r"models\[0\].retraining.window_days"):
        _config(tmp_path, [("r", "ndcg_at_10")], retraining="\n    retraining: {window_days: 0}")


@pytest.mark.parametrize("collapsed", [True, False])
def test_ranker_versions_and_canary_on_the_main_metric(tmp_path, collapsed):
    """A challenger serving a third of the requests from day 3: the versions' roles from the impressions, and the
    comparison on the requests whose interactions are in: the main metric's per-request means with Welch's
    one-sided test (checked against scipy on scikit-learn's per-request NDCG), no latency or error gate. A
    collapsed challenger is rolled back; a sound one is promoted once it has canary_min_labelled requests."""
    from scipy import stats

    _world(tmp_path, {"reco": set()}, days=7, canary=(3, collapsed))
    config = _config(tmp_path, [("reco", "ndcg_at_10")], retraining="\n    retraining: {canary_min_labelled: 200}")
    days = _days(7)
    _run(config, days)
    with connect(config.warehouse_path, config.lake_path) as con:
        frame = L.run_comparison(con, config, days)
        versions = con.execute("SELECT model_version, role FROM monitoring.model_versions ORDER BY 1").fetchall()
        daily = con.execute("""SELECT partition_date, model_version, volume, n_errors, latency_p95_ms
                               FROM monitoring.version_daily ORDER BY 1, 2""").df()
        compared = [START + dt.timedelta(days=d) for d in range(3, 6)]  # day 7's interactions are not all read
        shown = pd.concat([RL.day_frame(con, config.rankers[0], d, 1)[0] for d in compared])
    assert versions == [("v1", "champion"), ("v2", "challenger")]
    assert daily.n_errors.eq(0).all() and daily.latency_p95_ms.isna().all()
    assert daily[daily.model_version == "v2"].partition_date.min() == pd.Timestamp(START + dt.timedelta(days=3))
    last = frame[pd.to_datetime(frame.partition_date).dt.date == days[-1]].set_index("metric")
    assert set(last.index) == {"mean_loss", "ndcg_at_10"}  # no latency or error-rate gate for a ranker
    ndcg = {v: [1 - _sklearn_loss(g.grade, -g["rank"], 10) for _, g in part.groupby("request_id", sort=False)]
            for v, part in shown.groupby("model_version")}
    row = last.loc["ndcg_at_10"]
    assert row.champion_value == pytest.approx(np.mean(ndcg["v1"])) and row.challenger_value == pytest.approx(
        np.mean(ndcg["v2"]))
    expected_p = stats.ttest_ind(ndcg["v2"], ndcg["v1"], equal_var=False, alternative="less").pvalue
    assert row.p_value == pytest.approx(expected_p, rel=1e-9, abs=1e-300)
    assert last.verdict.iloc[0] == ("rollback" if collapsed else "promote")
    assert (row.gate == "fail") == collapsed


def test_models_and_rankers_are_one_family_in_the_monitoring_job(tmp_path, monkeypatch):
    """The whole job over a classifier and a collapsing ranker: both in monitoring.retraining_trigger, each day's
    p-values adjusted across the models and rankers tested that day (one family of two), and the ranker's request
    says so."""
    from monitor_assets_tests.conftest import run_job
    from monitor_assets_tests.test_ranking_task import CLASSIFIER, _classifier_files

    collapse = 7
    _world(tmp_path, {"reco": set(range(collapse, 30))}, days=10)
    _classifier_files(tmp_path, np.random.default_rng(4), pd.date_range(str(START), periods=10, freq="D"))
    config = load_config(write(tmp_path / "both.yaml", f"""
partitions: {{start_date: {START}, end_date: {START + dt.timedelta(days=9)}}}
label_delay_days: 1
{CSV_WORLD.format(tmp=tmp_path)}models:{CLASSIFIER}
    retraining: {{reference_days: 3, min_rows: 100}}
  - id: reco
    task: ranking
    version: v1
    source: lists/{{date}}/reco.jsonl
    labels: acts/{{date}}/reco.csv
    reference: ref_reco.parquet
    ranking: {{k: [5, 10], relevance: {{click: 1, purchase: 3}}}}
"""))
    assert run_job(config, str(START), str(START + dt.timedelta(days=9))).success
    with connect(config.warehouse_path, config.lake_path) as con:
        trigger = con.execute("SELECT * FROM monitoring.retraining_trigger ORDER BY partition_date, model_id").df()
        requests = con.execute("SELECT * FROM monitoring.retraining_requests").df()
        tested = L.models_tested(con, _days(10))
    both = trigger[trigger.p_value.notna()].groupby("partition_date").model_id.apply(set)
    assert {"churn", "reco"} in list(both)  # days with both tested (the classifier after its 3 reference days)
    assert all(tested[pd.Timestamp(d).date()] == len(ids) for d, ids in both.items())
    assert list(requests.model_id) == ["reco"]
    assert pd.Timestamp(requests.opened_on.iloc[0]).date() == START + dt.timedelta(days=collapse + 1)
    assert "across the day's 2 models" in requests.reason.iloc[0]
    # Bonferroni counts the family beyond fleet_alpha / alpha members (40): with a fleet level equal to alpha each
    # member counts, and a day with both tested doubles every p-value: the family is the models and the rankers.
    from monitor_assets.stats.trigger import TriggerSettings

    monkeypatch.setattr(L, "FAMILY", TriggerSettings(fleet_alpha=TriggerSettings().alpha))
    with connect(config.warehouse_path, config.lake_path) as con:
        rows = L.run_trigger(con, config, _days(10)).rows
    rows = rows[rows.p_value.notna()]
    size = rows.groupby("partition_date").model_id.transform("size")
    assert (size == 2).any()
    np.testing.assert_allclose(rows.p_adjusted, np.minimum(rows.p_value * size, 1.0), rtol=1e-12)


def test_a_reanchored_ranker_takes_its_own_days_as_reference(tmp_path):
    """Re-anchored by hand, a ranker version's reference batch is its own requests of the anchor day and the next
    reference_days - 1 days (whose interactions are in), as a model's; testing starts after them."""
    _world(tmp_path, {"reco": set()}, days=9)
    config = _config(tmp_path, [("reco", "ndcg_at_10")], retraining="\n    retraining: {reference_days: 3}")
    days = _days(9)
    _run(config, days)
    with connect(config.warehouse_path, config.lake_path) as con:
        message = L.reanchor(con, config, "reco", "v1", str(START + dt.timedelta(days=2)), "ana", "new catalogue")
        assert "re-anchored on 2025-06-03 (3 days)" in message
        rows = L.run_trigger(con, config, days).rows.set_index("partition_date")
        ref = con.execute("""SELECT anchor_day, partition_date, count(*) AS n, sum(loss) AS s, bool_and(complete) AS c
                             FROM monitoring.reference_losses GROUP BY ALL ORDER BY partition_date""").df()
        own = [RL.request_losses(con, config, config.rankers[0], START + dt.timedelta(days=d)) for d in (2, 3, 4)]
    assert list(pd.to_datetime(ref.partition_date).dt.date) == [START + dt.timedelta(days=d) for d in (2, 3, 4)]
    assert (pd.to_datetime(ref.anchor_day).dt.date == START + dt.timedelta(days=2)).all() and ref.c.all()
    assert list(ref.n) == [len(o) for o in own]
    np.testing.assert_allclose(ref.s, [o.loss.sum() for o in own])
    first_test = START + dt.timedelta(days=5)
    assert rows.loc[:first_test - dt.timedelta(days=1)].p_value.isna().all()
    assert rows.loc[first_test:START + dt.timedelta(days=7)].p_value.notna().all()
    assert rows.loc[first_test].mean_reference == pytest.approx(ref.s.sum() / ref.n.sum())
