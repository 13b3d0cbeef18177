"""A snapshot of every definition for the demo config, so a wiring change shows in review.

The snapshot (`definitions_snapshot.json`, committed) lists the asset keys with their group, partitions
and upstream keys, the check keys, every job with its asset and check selection, the schedules with their
cron and the sensors with their minimum interval and default status. After an intended wiring change,
rewrite it with `UPDATE_SNAPSHOT=1 pytest monitor_assets_tests/test_definitions_snapshot.py` and review
the diff.
"""

import json
import os
from pathlib import Path

import dagster as dg

from monitor_assets.definitions import build_definitions

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")


def _key(key: dg.AssetKey) -> str:
    return key.to_user_string()


def _check(key: dg.AssetCheckKey) -> str:
    return f"{_key(key.asset_key)}:{key.name}"


def _partitions(partitions_def) -> str | None:
    return None if partitions_def is None else str(partitions_def)


def definitions_snapshot(defs: dg.Definitions) -> dict:
    """The parts of the definitions a reviewer should see change: names, selections, timing."""
    graph = defs.resolve_asset_graph()
    repo = defs.get_repository_def()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=_key):
        node = graph.get(key)
        assets[_key(key)] = {"group": node.group_name, "partitions": _partitions(node.partitions_def),
                             "deps": sorted(_key(k) for k in node.parent_keys)}
    checks = {_check(k): {"blocking": graph.get_check_spec(k).blocking}
              for k in sorted(graph.asset_check_keys, key=_check)}
    jobs = {}
    for job in sorted(repo.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__ASSET_JOB"):
            continue  # Dagster's implicit job for materializing from the UI
        layer = job.asset_layer
        jobs[job.name] = {"assets": sorted(_key(k) for k in layer.selected_asset_keys),
                          "checks": sorted(_check(k) for k in layer.asset_graph.asset_check_keys),
                          "partitions": _partitions(job.partitions_def), "tags": dict(sorted(job.tags.items())),
                          "ops": sorted(node.name for node in job.graph.node_defs)}
    schedules = {s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name,
                          "default_status": s.default_status.value}
                 for s in sorted(repo.schedule_defs, key=lambda s: s.name)}
    sensors = {s.name: {"minimum_interval_seconds": s.minimum_interval_seconds,
                        "default_status": s.default_status.value,
                        "jobs": sorted(t.job_name for t in s.targets)}
               for s in sorted(repo.sensor_defs, key=lambda s: s.name)}
    return {"assets": assets, "checks": checks, "jobs": jobs, "schedules": schedules, "sensors": sensors,
            "resources": sorted(defs.resources or {})}


def test_definitions_match_the_committed_snapshot(demo_config):
    current = definitions_snapshot(build_definitions(demo_config))
    if os.environ.get("UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), (
        "the definitions changed; if intended, rerun with UPDATE_SNAPSHOT=1 and review the diff")
