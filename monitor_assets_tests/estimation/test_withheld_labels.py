"""Estimated performance as users run it: `python -m monitor_assets.run_pipeline` in a subprocess on a persistent
DAGSTER_HOME (SQLite storage, the repo's instance template). A classifier's inputs shift on day 6 and the labels
of the shifted days are withheld: the check `estimated_performance_within_baseline` passes on every day before the
shift and fails within 7 days of it, with no label of those days in the warehouse. Ingesting the withheld labels
later fills in the reconciliation columns, and the realized metric lands inside the band on most days."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets import keys
from monitor_assets.constants import ESTIMATED_PERFORMANCE_CHECK
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import CSV_WORLD, persistent_home, write

REPO = Path(__file__).parents[2]
FIRST = dt.date(2025, 3, 1)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(12)]
SHIFT = 5  # from DAYS[5] on, the inputs move toward the decision boundary
LANDED = FIRST + dt.timedelta(days=12)  # the withheld labels land on the day after the last one
ROWS = 600
WITHIN = 7  # the check must fail within this many days of the shift

CONFIG = """
partitions: {{start_date: {first}, end_date: {landed}}}
label_delay_days: 7
""" + CSV_WORLD + """models:
  - id: risk
    task: binary_classification
    main_metric: accuracy
    reference: risk.parquet
    reference_fields: {{score: proba}}
    features: {{x: numeric}}
"""


def _risk(rng, n, shifted=False):
    """A calibrated classifier; the shift narrows x (sd 2.0 -> 1.2), so more rows sit where it is unsure and its
    accuracy falls from about 0.87 to 0.80 while P(y | x) stays the same: the case the estimate can see."""
    x = rng.normal(0, 1.2 if shifted else 2.0, n)
    p = 1 / (1 + np.exp(-(2.0 * x + 0.3)))
    return pd.DataFrame({"x": x, "proba": p}), (rng.random(n) < p).astype(int)


def _run(env: dict, start: dt.date, end: dt.date) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "monitor_assets.run_pipeline", "--start", str(start), "--end", str(end)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _latest_by_partition(instance: dg.DagsterInstance) -> dict[str, str]:
    """The newest evaluation of the check per partition, read back from the instance's storage."""
    key = dg.AssetCheckKey(keys.ESTIMATED_PERFORMANCE, ESTIMATED_PERFORMANCE_CHECK)
    out: dict = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=500):  # newest first
        out.setdefault(record.partition, record.status.value)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("withheld")
    rng = np.random.default_rng(11)
    ref, y = _risk(rng, 4000)
    ref.assign(label=y).to_parquet(tmp / "risk.parquet")
    truth, withheld = {}, []
    for i, day in enumerate(DAYS):
        frame, y = _risk(rng, ROWS, shifted=i >= SHIFT)
        ids = [f"r{i}-{k}" for k in range(ROWS)]
        write(tmp / "export" / f"{day}" / "risk.csv",
              frame.assign(request_id=ids, ts=f"{day} 12:00").to_csv(index=False))
        truth[day] = pd.DataFrame({"request_id": ids, "y": y, "proba": frame.proba})
        if i < SHIFT:  # before the shift, a day's labels land the next day
            truth[day][["request_id", "y"]].to_csv(write(tmp / "truth" / f"{day + dt.timedelta(days=1)}.csv", ""),
                                                   index=False)
        else:
            withheld.append(truth[day][["request_id", "y"]])
    # The last day still has predictions of its own (and no labels), as a real day would.
    write(tmp / "export" / f"{LANDED}" / "risk.csv",
          _risk(rng, ROWS, shifted=True)[0].assign(request_id=[f"r12-{k}" for k in range(ROWS)],
                                                   ts=f"{LANDED} 12:00").to_csv(index=False))
    write(tmp / "monitor.yaml", CONFIG.format(first=FIRST, landed=LANDED, tmp=tmp))
    home = persistent_home(tmp / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "DAGSTER_HOME"))}
    env.update(DAGSTER_HOME=str(home), MONITOR_CONFIG=str(tmp / "monitor.yaml"), PYTHONPATH=str(REPO))

    _run(env, DAYS[0], DAYS[-1])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        checks = _latest_by_partition(instance)
    with open_warehouse(str(tmp / "wh.duckdb"), read_only=True) as con:
        before = con.execute("""SELECT * FROM monitoring.estimated_performance WHERE metric = 'accuracy'
                                ORDER BY partition_date""").df()
        labelled = dict(con.execute("""SELECT prediction_date, count(*) FROM raw.labels GROUP BY 1""").fetchall())

    pd.concat(withheld).to_csv(write(tmp / "truth" / f"{LANDED}.csv", ""), index=False)
    _run(env, LANDED, LANDED)  # the day the withheld labels land: its run refreshes the 7 days before it
    with open_warehouse(str(tmp / "wh.duckdb"), read_only=True) as con:
        after = con.execute("""SELECT * FROM monitoring.estimated_performance WHERE metric = 'accuracy'
                               ORDER BY partition_date""").df()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        checks_after = _latest_by_partition(instance)
    return {"checks": checks, "checks_after": checks_after, "before": before, "after": after, "truth": truth,
            "labelled": labelled}


def _day(value) -> dt.date:
    return pd.Timestamp(value).date()


def test_the_check_fails_within_seven_days_of_the_shift_and_not_before(world):
    status = world["checks"]
    assert set(status) >= {str(d) for d in DAYS}  # one evaluation per partition, none stored without one
    passed, failed = "SUCCEEDED", "FAILED"  # AssetCheckExecutionRecordStatus: the check passed, or failed
    assert all(status[str(d)] == passed for d in DAYS[:SHIFT])
    failing = [d for d in DAYS[SHIFT:] if status[str(d)] == failed]
    assert failing and failing[0] < DAYS[SHIFT] + dt.timedelta(days=WITHIN)
    # found while none of the shifted days had a label: realized unknown, nothing ingested for them
    before = world["before"].assign(day=lambda f: f.partition_date.map(_day)).set_index("day")
    for d in DAYS[SHIFT:]:
        assert world["labelled"].get(d) is None
        assert before.loc[d, "n_labelled"] == 0 and pd.isna(before.loc[d, "realized"])
        assert pd.isna(before.loc[d, "within_band"])
    # and the estimate said the metric dropped: below every estimate before the shift
    assert before.loc[failing[0], "estimate"] < before.loc[DAYS[:SHIFT], "estimate"].min()


def test_the_withheld_labels_reconcile_the_estimates(world):
    after = world["after"].assign(day=lambda f: f.partition_date.map(_day)).set_index("day")
    shifted = after.loc[DAYS[SHIFT:]]
    assert (shifted.n_labelled == ROWS).all() and shifted.realized.notna().all() and shifted.within_band.notna().all()
    for d in DAYS[SHIFT:]:  # the realized value is that of the day's rows and labels (scikit-learn)
        t = world["truth"][d]
        assert after.loc[d, "realized"] == pytest.approx(skm.accuracy_score(t.y, t.proba >= 0.5))
    assert shifted.within_band.astype(bool).sum() >= len(shifted) - 1  # inside the band on most days
    # the shift really lowered accuracy, as the estimate had said before the labels came
    first_days = after.loc[DAYS[:SHIFT]]
    assert shifted.realized.max() < first_days.realized.min()
    # the checks' verdicts of the shifted days are not touched by a run that only reconciles them
    assert all(world["checks_after"][str(d)] == world["checks"][str(d)] for d in DAYS)
