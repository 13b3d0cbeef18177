"""Which shard runs to launch next, from the runs that exist: no Dagster here, plain records in and out.

A day of a sharded pipeline is a *plan* (a successful run of the plan job for that day) followed by three
stages: every shard's ingestion, then every shard's analysis (labels are matched to any shard's predictions,
so after all of them), then one fleet run (alerts, history, retraining, dashboard, export). A stage of a day
starts when the stage before it succeeded on every shard, and when the same stage of every earlier planned
day has succeeded: days go through each stage in date order, as a single-run backfill would take them, so
late labels find the predictions of earlier days and the fleet's state moves forward one day at a time.
A later plan of the same day (a re-run from the UI) replaces the earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

STAGES = ("ingest", "analysis", "fleet")
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass(frozen=True)
class PlanRun:
    run_id: str
    day: str  # the partition, YYYY-MM-DD
    created: float  # seconds since the epoch: the newer plan of a day wins


@dataclass(frozen=True)
class StageRun:
    run_id: str
    plan: str  # the plan run's id (run tag)
    stage: str  # one of STAGES (run tag)
    shard: str  # "i/N"; "" for the fleet stage
    status: str  # a DagsterRunStatus name
    will_retry: bool = False  # failed, and run retries will start another attempt


@dataclass(frozen=True)
class Launch:
    plan: str
    day: str
    stage: str
    shard: str  # "" for the fleet stage

    @property
    def run_key(self) -> str:
        """One launch per plan, stage and shard however often the sensor looks."""
        return f"{self.plan}:{self.stage}:{self.shard or 'all'}"


@dataclass
class Decision:
    launches: list[Launch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # per day: what it waits for, which shard failed
    done_days: list[str] = field(default_factory=list)


def shard_labels(count: int) -> list[str]:
    return [f"{i}/{count}" for i in range(count)]


def _shard_state(runs: list[StageRun]) -> str:
    """missing | running | done | failed, over every attempt (retries and re-executions) of one shard."""
    if not runs:
        return "missing"
    if any(r.status == "SUCCESS" for r in runs):
        return "done"
    if any(r.status not in FINISHED or r.will_retry for r in runs):
        return "running"
    return "failed"


def stage_states(plan: str, stage: str, count: int, runs: Iterable[StageRun]) -> dict[str, str]:
    """Each shard's state in one stage of one plan (the fleet stage has one 'shard', '')."""
    shards = [""] if stage == "fleet" else shard_labels(count)
    mine: dict[str, list[StageRun]] = {s: [] for s in shards}
    for run in runs:
        if run.plan == plan and run.stage == stage and run.shard in mine:
            mine[run.shard].append(run)
    return {s: _shard_state(rs) for s, rs in mine.items()}


def decide(plans: Iterable[PlanRun], runs: Iterable[StageRun], count: int) -> Decision:
    """The launches due now and a note per day that is not through, for `count` shards."""
    runs = list(runs)
    latest: dict[str, PlanRun] = {}
    for plan in plans:
        if plan.day not in latest or plan.created > latest[plan.day].created:
            latest[plan.day] = plan
    decision = Decision()
    # The first stage each earlier day has not finished: a later day may not pass it.
    barrier = len(STAGES)
    for day in sorted(latest):
        plan = latest[day]
        for k, stage in enumerate(STAGES):
            states = stage_states(plan.run_id, stage, count, runs)
            if all(s == "done" for s in states.values()):
                continue
            failed = [s for s, v in states.items() if v == "failed"]
            missing = [s for s, v in states.items() if v == "missing"]
            if failed:
                who = ", ".join(f"shard {s}" for s in failed) if stage != "fleet" else "the fleet run"
                decision.notes.append(f"{day}: {stage} failed on {who} and has no retry left; the day waits "
                                      "(re-execute the failed run to go on)")
            elif missing and k >= barrier:
                decision.notes.append(f"{day}: {stage} waits for an earlier day's {STAGES[barrier]}")
            elif missing:
                decision.launches += [Launch(plan.run_id, day, stage, s) for s in missing]
            else:
                decision.notes.append(f"{day}: {stage} running")
            barrier = min(barrier, k)
            break
        else:
            decision.done_days.append(day)
    return decision
