"""What the UI shows per partition after the demo's single-run backfill of 30 days, read through the real
webserver's GraphQL on the persistent instance the run was recorded in: each partition's own figures,
and check results per partition (the Partitions tab) that agree with the execution list."""

import datetime as dt

from monitor_assets.devtools.webserver import graphql, running_webserver

PERFORMANCE = ["monitoring", "performance_daily"]

MATERIALIZATIONS = """
query($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(partitions: $partitions) {
      partition
      metadataEntries { label ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue } }
    } }
  }
}"""

CHECK_PARTITIONS = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks {
      name
      partitionStatuses { ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } } }
    } } } }
  }
}"""

EXECUTIONS = """
query($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 500) {
    partition status evaluation { partition success }
  }
}"""


def days_by_status(ranges: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in ranges:
        day, end = dt.date.fromisoformat(r["startKey"]), dt.date.fromisoformat(r["endKey"])
        while day <= end:
            out.setdefault(r["status"], set()).add(str(day))
            day += dt.timedelta(days=1)
    return out


def test_each_partition_shows_its_own_figures_and_check_results(demo_run, demo_home):
    config, _ = demo_run
    env = {"DAGSTER_HOME": str(demo_home), "MONITOR_WAREHOUSE": config.warehouse_path,
           "MONITOR_REPORTS_DIR": config.reports_dir}
    with running_webserver(env) as url:
        key = {"path": PERFORMANCE}
        events = graphql(url, MATERIALIZATIONS, {"key": key, "partitions": ["2026-10-13", "2026-10-14"]})
        latest: dict[str, dict] = {}
        for event in events["assetOrError"]["assetMaterializations"]:  # newest first
            latest.setdefault(event["partition"], {m["label"]: m.get("floatValue", m.get("intValue"))
                                                   for m in event["metadataEntries"]})
        # The latency spike is on 10-14 only: each day carries its own figure, not the run's last day's.
        assert latest["2026-10-14"]["max_latency_p95_ms"] > 1000 > latest["2026-10-13"]["max_latency_p95_ms"]
        assert latest["2026-10-14"]["max_error_rate"] > 0.05 > latest["2026-10-13"]["max_error_rate"]
        # Bounded metadata: no per-model keys, whatever the number of models.
        assert not any(label.startswith(tuple(config.model_ids)) for label in latest["2026-10-14"])

        checks = graphql(url, CHECK_PARTITIONS, {"key": key})["assetNodeOrError"]["assetChecksOrError"]["checks"]
        statuses = {c["name"]: days_by_status(c["partitionStatuses"]["ranges"]) for c in checks}
        latency = statuses["latency_p95_within_sla"]
        assert latency.get("FAILED") == {"2026-10-14"}
        assert len(latency.get("SUCCEEDED", set())) >= 28 and not latency.get("SKIPPED")
        for name, by_status in statuses.items():
            judged = by_status.get("SUCCEEDED", set()) | by_status.get("FAILED", set())
            assert len(judged) >= 29, (name, {s: len(d) for s, d in by_status.items()})
        assert "2026-10-19" in statuses["predictions_logged"]["FAILED"]  # the day without logs

        # The execution list agrees with the partition statuses and with each evaluation's own record.
        runs = graphql(url, EXECUTIONS, {"key": key, "check": "latency_p95_within_sla"})["assetCheckExecutions"]
        on_14 = [e for e in runs if e["partition"] == "2026-10-14"]
        assert on_14 and on_14[0]["status"] == "FAILED"
        assert on_14[0]["evaluation"] == {"partition": "2026-10-14", "success": False}
        assert all(e["evaluation"]["partition"] == e["partition"] for e in runs if e["evaluation"])
