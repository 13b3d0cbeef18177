"""The real Dagster webserver: every asset, its checks, the schedule and the sensors through GraphQL,
and a screenshot of the asset graph."""

from pathlib import Path

from monitor_assets.devtools.webserver import ASSETS_QUERY, graphql, running_webserver

from .browser import browser_page


def test_webserver_lists_assets_checks_schedule_and_sensors(demo_run, tmp_path):
    config, _ = demo_run
    env = {"DAGSTER_HOME": str(tmp_path), "MONITOR_WAREHOUSE": config.warehouse_path,
           "MONITOR_REPORTS_DIR": config.reports_dir}
    (tmp_path / "dagster.yaml").write_text((Path(__file__).parents[2] / "deploy" / "local" / "dagster.yaml").read_text())
    from monitor_assets.definitions import build_definitions

    defs = build_definitions(config)
    expected_assets = {tuple(k.path) for k in defs.resolve_all_asset_keys()}
    with running_webserver(env) as url:
        data = graphql(url, ASSETS_QUERY)
        nodes = {tuple(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        assert set(nodes) == expected_assets
        for key, node in nodes.items():
            assert node["description"] and node["groupName"] and node["kinds"], key
            assert node["owners"], key
        checks = {c["name"] for n in nodes.values() for c in (n["assetChecksOrError"].get("checks") or [])}
        assert {"predictions_are_complete_and_valid", "performance_within_baseline", "drift_share_below_threshold",
                "demographic_parity_above_threshold", "latency_p95_within_sla"} <= checks
        repo = data["repositoriesOrError"]["nodes"][0]
        assert {s["name"] for s in repo["schedules"]} == {"daily_monitoring_schedule", "lake_maintenance_schedule"}
        assert {s["name"] for s in repo["sensors"]} >= {"alert_notification_sensor", "run_failure_notification_sensor"}
        graphql(url, "mutation { setNuxSeen }")  # no "join the community" dialog over the screenshot
        with browser_page(1600, 1000) as (page, errors):
            page.goto(f"{url}/asset-groups")
            page.wait_for_selector("text=Global asset lineage", timeout=60000)
            for group in ("ingestion", "metrics", "drift", "bias", "alerting", "reporting"):
                page.wait_for_selector(f"text={group}", timeout=30000)
            page.wait_for_timeout(1000)
            shot = tmp_path / "asset_graph.png"
            page.screenshot(path=str(shot))
        assert shot.stat().st_size > 30000
