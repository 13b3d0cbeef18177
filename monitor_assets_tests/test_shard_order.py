"""The shard sensor's order (monitor_assets.sharding.logic): which runs are due, given the runs that exist."""

from monitor_assets.sharding.logic import Launch, PlanRun, StageRun, decide

P1, P2, P3 = PlanRun("p1", "2026-10-01", 1.0), PlanRun("p2", "2026-10-02", 2.0), PlanRun("p3", "2026-10-03", 3.0)


def ok(plan: str, stage: str, *shards: str, status: str = "SUCCESS") -> list[StageRun]:
    return [StageRun(f"{plan}-{stage}-{s}", plan, stage, s, status) for s in shards]


def keys(decision) -> list[tuple[str, str, str]]:
    return [(x.day, x.stage, x.shard) for x in decision.launches]


def test_a_new_plan_starts_every_shards_ingestion_and_only_that():
    d = decide([P1], [], 3)
    assert keys(d) == [("2026-10-01", "ingest", s) for s in ("0/3", "1/3", "2/3")]
    assert d.launches[0].run_key == "p1:ingest:0/3"


def test_analysis_waits_for_every_shard_of_ingestion_then_the_fleet_for_every_analysis():
    # shard 1's run is missing (a launch lost): it is launched, and nothing of the next stage
    assert keys(decide([P1], ok("p1", "ingest", "0/2"), 2)) == [("2026-10-01", "ingest", "1/2")]
    running = ok("p1", "ingest", "0/2") + ok("p1", "ingest", "1/2", status="STARTED")
    d = decide([P1], running, 2)
    assert keys(d) == [] and d.notes == ["2026-10-01: ingest running"]
    ingested = ok("p1", "ingest", "0/2", "1/2")
    assert keys(decide([P1], ingested, 2)) == [("2026-10-01", "analysis", "0/2"), ("2026-10-01", "analysis", "1/2")]
    analysed = ingested + ok("p1", "analysis", "0/2", "1/2")
    assert keys(decide([P1], analysed, 2)) == [("2026-10-01", "fleet", "")]
    d = decide([P1], analysed + ok("p1", "fleet", ""), 2)
    assert keys(d) == [] and d.done_days == ["2026-10-01"]


def test_a_shard_lost_for_good_holds_its_day_and_names_the_shard():
    runs = ok("p1", "ingest", "0/2", "1/2") + ok("p1", "analysis", "0/2") + ok("p1", "analysis", "1/2", status="FAILURE")
    d = decide([P1], runs, 2)
    assert keys(d) == []
    assert d.notes == ["2026-10-01: analysis failed on shard 1/2 and has no retry left; the day waits "
                       "(re-execute the failed run to go on)"]


def test_a_failure_with_a_retry_coming_waits_and_the_retry_that_succeeds_counts():
    base = ok("p1", "ingest", "0/2") + [StageRun("k", "p1", "ingest", "1/2", "FAILURE", will_retry=True)]
    d = decide([P1], base, 2)
    assert keys(d) == [] and d.notes == ["2026-10-01: ingest running"]
    retried = base + ok("p1", "ingest", "1/2")  # the retry run carries the same tags
    assert [x.stage for x in decide([P1], retried, 2).launches] == ["analysis", "analysis"]


def test_days_pass_each_stage_in_date_order():
    # Day 1 still ingesting: day 2 may ingest too, and no day analyses before day 1's ingestion is through.
    runs = ok("p1", "ingest", "0/2") + ok("p1", "ingest", "1/2", status="STARTED") + ok("p2", "ingest", "0/2", "1/2")
    d = decide([P2, P1], runs, 2)
    assert keys(d) == []
    assert d.notes == ["2026-10-01: ingest running", "2026-10-02: analysis waits for an earlier day's ingest"]
    # Day 1 analysing: day 2 waits for its analysis; day 3 may ingest.
    runs = ok("p1", "ingest", "0/2", "1/2") + ok("p1", "analysis", "0/2", "1/2", status="STARTED") \
        + ok("p2", "ingest", "0/2", "1/2")
    assert keys(decide([P1, P2, P3], runs, 2)) == [("2026-10-03", "ingest", "0/2"), ("2026-10-03", "ingest", "1/2")]


def test_a_newer_plan_of_the_same_day_replaces_the_older():
    again = PlanRun("p1b", "2026-10-01", 9.0)
    runs = ok("p1", "ingest", "0/2", "1/2") + ok("p1", "analysis", "0/2", "1/2") + ok("p1", "fleet", "")
    d = decide([P1, again], runs, 2)
    assert d.launches == [Launch("p1b", "2026-10-01", "ingest", "0/2"), Launch("p1b", "2026-10-01", "ingest", "1/2")]
