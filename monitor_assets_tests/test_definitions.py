"""The code location loads, and every job, schedule and sensor resolves."""

import dagster as dg

from monitor_assets.definitions import MONITORING_JOB, build_definitions, defs


def test_definitions_resolve_every_job_schedule_and_sensor():
    repo = defs.get_repository_def()
    assert MONITORING_JOB in {j.name for j in repo.get_all_jobs()}
    for job in repo.get_all_jobs():
        assert job.graph is not None
    schedules = {s.name: s for s in repo.schedule_defs}
    assert set(schedules) == {"daily_monitoring_schedule", "lake_maintenance_schedule"} and schedules["daily_monitoring_schedule"].job_name == MONITORING_JOB
    sensors = {s.name: s for s in repo.sensor_defs}
    assert {"alert_notification_sensor", "run_failure_notification_sensor"} <= set(sensors)
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    keys = {"/".join(k.path) for k in defs.resolve_all_asset_keys()}
    assert {"raw/predictions", "raw/labels", "monitoring/performance_daily", "monitoring/feature_drift",
            "monitoring/fairness", "monitoring/history", "monitoring/alerts", "reports/monitoring_dashboard"} <= keys


def test_every_asset_explains_itself(demo_config):
    graph = build_definitions(demo_config).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and node.group_name and node.owners and node.kinds, key


def test_schedule_requests_yesterdays_partition(demo_config):
    schedule = build_definitions(demo_config).get_repository_def().schedule_defs[0]
    context = dg.build_schedule_context(scheduled_execution_time=__import__("datetime").datetime(2026, 10, 16, 6, 0))
    requests = list(schedule.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["2026-10-15"]
