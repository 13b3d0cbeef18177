"""The `evaluation:` section and the window calendar, with hand-checked dates."""

import datetime as dt

import dagster as dg
import pytest

from monitor_assets import keys
from monitor_assets.config import ConfigError
from monitor_assets.definitions import build_definitions
from monitor_assets.evaluation.logic import WINDOW_CHECK
from monitor_assets.evaluation.settings import (
    DEFAULT,
    RANGE,
    ROLLING,
    Window,
    WindowSpec,
    parse_evaluation,
    previous,
    window_of,
    windows_touching,
)

D = dt.date


def test_default_is_week_and_month():
    assert [s.name for s in parse_evaluation(None).windows] == ["week", "month"]
    assert parse_evaluation({}) == DEFAULT and DEFAULT.alerts


def test_window_alerts_can_be_turned_off():
    off = parse_evaluation({"alerts": False})
    assert not off.alerts and off.windows == DEFAULT.windows
    assert not parse_evaluation({"windows": ["quarter"], "alerts": False}).alerts


def test_the_concentration_ratio_is_read_with_or_without_windows():
    assert DEFAULT.concentration_ratio == 1.25
    assert parse_evaluation({"concentration_ratio": 1.5}).concentration_ratio == 1.5
    assert parse_evaluation({"windows": ["week"], "concentration_ratio": 2}).concentration_ratio == 2.0


def test_every_kind_parses():
    specs = parse_evaluation({"windows": ["week", "month", "quarter", {"rolling_days": 28},
                                          {"name": "black_friday", "start": "2026-11-20", "end": D(2026, 11, 30)}]}).windows
    assert [(s.kind, s.name) for s in specs] == [("week", "week"), ("month", "month"), ("quarter", "quarter"),
                                                  (ROLLING, "rolling_28d"), (RANGE, "black_friday")]
    assert specs[3].days == 28 and (specs[4].start, specs[4].end) == (D(2026, 11, 20), D(2026, 11, 30))


@pytest.mark.parametrize("data, key", [
    ({"windows": ["fortnight"]}, "evaluation.windows[0]"),
    ({"windows": [{"rolling_days": 0}]}, "evaluation.windows[0].rolling_days"),
    ({"windows": [{"rolling_days": 2.5}]}, "evaluation.windows[0].rolling_days"),
    ({"windows": ["week", {"name": "sale", "start": "2026-11-20"}]}, "evaluation.windows[1].end"),
    ({"windows": [{"name": "sale", "start": "2026-11-20", "end": "2026-11-01"}]}, "evaluation.windows[0].end"),
    ({"windows": [{"name": "Sale!", "start": "2026-11-20", "end": "2026-11-21"}]}, "evaluation.windows[0].name"),
    ({"windows": [{"name": "sale", "start": "20 Nov", "end": "2026-11-21"}]}, "evaluation.windows[0].start"),
    ({"windows": ["week", "week"]}, "evaluation.windows[1]"),
    ({"windows": []}, "evaluation.windows"),
    ({"window": ["week"]}, "evaluation.window"),
    ({"windows": [{"rolling_days": 7, "name": "x"}]}, "evaluation.windows[0].name"),
    ({"alerts": "no"}, "evaluation.alerts"),
    ({"concentration_ratio": 1}, "evaluation.concentration_ratio"),
    ({"concentration_ratio": "1.5"}, "evaluation.concentration_ratio"),
    ({"concentration_ratio": True}, "evaluation.concentration_ratio"),
    ({"concentration_ratio": 0.8, "windows": ["week"]}, "evaluation.concentration_ratio"),
])
def test_errors_are_one_line_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_evaluation(data, "monitor.yaml")
    assert err.value.key == key and "\n" not in str(err.value)
    assert str(err.value).startswith(f"monitor.yaml: {key}: ")


def test_calendar_windows_and_the_ones_before():
    week, month, quarter = (WindowSpec(k, k) for k in ("week", "month", "quarter"))
    w = window_of(week, D(2026, 12, 3))  # a Thursday
    assert (w.start, w.end) == (D(2026, 11, 30), D(2026, 12, 6))
    assert (previous(w).start, previous(w).end) == (D(2026, 11, 23), D(2026, 11, 29))
    m = window_of(month, D(2024, 3, 15))
    assert (m.start, m.end, m.length) == (D(2024, 3, 1), D(2024, 3, 31), 31)
    assert (previous(m).start, previous(m).end) == (D(2024, 2, 1), D(2024, 2, 29))  # a leap February
    q = window_of(quarter, D(2026, 1, 10))
    assert (q.start, q.end) == (D(2026, 1, 1), D(2026, 3, 31))
    assert (previous(q).start, previous(q).end) == (D(2025, 10, 1), D(2025, 12, 31))
    r = window_of(WindowSpec(ROLLING, "rolling_28d", days=28), D(2026, 3, 1))
    assert (r.start, r.end, r.length) == (D(2026, 2, 2), D(2026, 3, 1), 28)
    assert (previous(r).start, previous(r).end) == (D(2026, 1, 5), D(2026, 2, 1))
    fixed = Window(WindowSpec(RANGE, "sale", start=D(2026, 11, 20), end=D(2026, 11, 30)), D(2026, 11, 20),
                   D(2026, 11, 30))
    assert (previous(fixed).start, previous(fixed).end) == (D(2026, 11, 9), D(2026, 11, 19))
    assert fixed.key == "sale:2026-11-20"


def test_windows_touching_a_run():
    specs = parse_evaluation({"windows": ["week", "month", {"rolling_days": 7},
                                          {"name": "sale", "start": "2026-11-20", "end": "2026-11-30"}]}).windows
    found = windows_touching(specs, [D(2026, 11, 29), D(2026, 11, 30), D(2026, 12, 1)])
    keys_ = [w.key for w in found]
    assert keys_ == ["month:2026-11-01", "month:2026-12-01", "rolling_7d:2026-11-23", "rolling_7d:2026-11-24",
                     "rolling_7d:2026-11-25", "sale:2026-11-20", "week:2026-11-23", "week:2026-11-30"]
    assert windows_touching(specs[3:], [D(2026, 12, 5)]) == []


def test_definitions_load_with_the_pipeline(demo_config):
    # the stage is wired into the pipeline; every job resolves
    defs = build_definitions(demo_config)
    graph = defs.resolve_asset_graph()
    # and after the rankers' windows (the ranking stage writes them), whose reports it writes: the demo has a ranker
    assert demo_config.rankers
    assert graph.get(keys.EVALUATION_STORE).parent_keys == {keys.DAILY_PROFILES, keys.MULTIVARIATE_DRIFT,
                                                            keys.RANKING_PERFORMANCE}
    assert graph.get(keys.DAILY_PROFILES).parent_keys == {keys.PREDICTIONS, keys.LABELS, keys.REFERENCE_PROFILES}
    for job in defs.jobs or []:
        defs.resolve_job_def(job.name)
    assert defs.resolve_implicit_global_asset_job_def() is not None
    # the window check sits on the store, partitioned like it
    check = graph.get_check_spec(dg.AssetCheckKey(keys.EVALUATION_STORE, WINDOW_CHECK))
    assert check.partitions_def == graph.get(keys.EVALUATION_STORE).partitions_def
