"""Production deployment files: the MONITOR_ENV=prod instance template on a real PostgreSQL server (storage,
the run queue worked through by a real `dagster-daemon`, pools, telemetry off), and the consistency of the
Dockerfile, docker-compose file and Helm values with it and with the package. Docker, Compose v2 and helm are
not on this machine: the compose file is checked with docker-compose 1.29's own schema when it is installed
(`docker-compose config`), and by reading it otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml

from monitor_assets.definitions import MONITORING_JOB, MONITORING_JOB_TAGS
from monitor_assets.runner import INSTANCE_TEMPLATES, instance_template
from monitor_assets_tests.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROD = DEPLOY / "prod" / "dagster.yaml"
COMPOSE = DEPLOY / "docker-compose.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
IMAGE_APP = Path("/opt/dagster/app")  # where deploy/Dockerfile puts the repository's files
DAGSTER_SERVICES = ("user_code", "webserver", "daemon")
MONITORING_TAG_KEY = next(iter(MONITORING_JOB_TAGS))
MODULE = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]


def env_refs(node) -> set[str]:
    """Every environment variable a Dagster instance YAML reads (`{env: NAME}`)."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node)) if node else set()
    return set()


def test_monitor_env_selects_the_instance_template(monkeypatch):
    monkeypatch.delenv("MONITOR_ENV", raising=False)
    assert instance_template() == INSTANCE_TEMPLATES["local"] == DEPLOY / "local" / "dagster.yaml"
    monkeypatch.setenv("MONITOR_ENV", "prod")
    assert instance_template() == PROD
    monkeypatch.setenv("MONITOR_ENV", "staging")
    with pytest.raises(ValueError, match="MONITOR_ENV='staging': expected one of local, prod"):
        instance_template()
    local = yaml.safe_load(INSTANCE_TEMPLATES["local"].read_text())
    # local: Dagster's SQLite files in DAGSTER_HOME, the event log writing batches in one transaction
    assert local["storage"]["custom"]["class"] == "BatchedSqliteStorage"
    assert local["storage"]["custom"]["config"] == {"base_dir": {"env": "DAGSTER_HOME"}}


def test_run_pipeline_refuses_an_unknown_monitor_env(tmp_path):
    env = {**os.environ, "MONITOR_ENV": "staging", "DAGSTER_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "monitor_assets.run_pipeline"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip() == "MONITOR_ENV='staging': expected one of local, prod"
    assert not (tmp_path / "home").exists()


def load_definitions(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Import the code location in a fresh process, as a code server does when it starts."""
    return subprocess.run([sys.executable, "-c", f"import {MODULE}"], env=env, capture_output=True, text=True,
                          timeout=180, cwd=REPO)


def test_prod_definitions_refuse_an_instance_that_is_not_postgres(postgres_server, tmp_path):  # noqa: F811
    """MONITOR_ENV=prod on a SQLite DAGSTER_HOME (a daemon or webserver started without the prod dagster.yaml):
    the code location does not load, with one line saying why; on the prod template's Postgres home it loads."""
    env = {**os.environ, "MONITOR_ENV": "prod"}
    sqlite_home = tmp_path / "sqlite_home"
    sqlite_home.mkdir()
    shutil.copy(INSTANCE_TEMPLATES["local"], sqlite_home / "dagster.yaml")
    refused = load_definitions({**env, "DAGSTER_HOME": str(sqlite_home)})
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"monitor_assets.definitions.WrongInstanceError: MONITOR_ENV=prod, but the instance in "
                           f"DAGSTER_HOME={sqlite_home} uses BatchedSqliteStorage, not PostgreSQL: copy "
                           f"deploy/prod/dagster.yaml there"), last
    no_home = load_definitions({k: v for k, v in env.items() if k != "DAGSTER_HOME"})
    assert no_home.returncode == 1
    assert no_home.stderr.strip().splitlines()[-1].startswith(
        "monitor_assets.definitions.WrongInstanceError: MONITOR_ENV=prod needs DAGSTER_HOME")

    pg_home = tmp_path / "pg_home"
    pg_home.mkdir()
    shutil.copy(PROD, pg_home / "dagster.yaml")
    loaded = load_definitions({**env, **prod_env(postgres_server, tmp_path), "DAGSTER_HOME": str(pg_home)})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    # The local default is not checked: a SQLite home loads.
    local = load_definitions({**env, "MONITOR_ENV": "local", "DAGSTER_HOME": str(sqlite_home)})
    assert local.returncode == 0, local.stderr[-3000:]


def prod_env(server: PostgresServer, tmp_path: Path) -> dict[str, str]:
    return {"DAGSTER_PG_HOST": server.host, "DAGSTER_PG_PORT": str(server.port), "DAGSTER_PG_DB": server.db_name,
            "DAGSTER_PG_USER": server.user, "DAGSTER_PG_PASSWORD": server.password,
            "DAGSTER_COMPUTE_LOGS_DIR": str(tmp_path / "compute_logs")}


TINY_JOB = '''
import dagster as dg


@dg.op(pool="duckdb")
def write_step():
    return 1


@dg.job
def tiny_job():
    write_step()


defs = dg.Definitions(jobs=[tiny_job])
'''


def test_prod_instance_on_postgres_queues_runs_for_the_daemon(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    """deploy/prod/dagster.yaml as is, its settings from the environment: Postgres storage, a run submitted
    through the queue waits (QUEUED) until a real `dagster-daemon` dequeues and launches it."""
    env = prod_env(postgres_server, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROD, home / "dagster.yaml")
    assert env_refs(yaml.safe_load(PROD.read_text())) == set(env)  # nothing else needs setting
    assert postgres_server.password not in PROD.read_text()
    for key, value in {**env, "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.get() as instance:
        instance.wipe()
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert not instance.telemetry_enabled
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        assert [(limit["key"], limit["value"], limit["limit"])
                for limit in concurrency.run_queue_config.tag_concurrency_limits] == [
            (MONITORING_TAG_KEY, MONITORING_JOB, 1)]
        assert instance.run_monitoring_enabled and instance.run_retries_enabled

    (tmp_path / "tiny.py").write_text(TINY_JOB)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": "tiny.py", "location_name": "tiny", "working_directory": str(tmp_path)}}]}))
    proc_env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
    bin_dir = Path(sys.executable).parent
    launch = subprocess.run([str(bin_dir / "dagster"), "job", "launch", "-w", str(workspace), "-j", "tiny_job"],
                            env=proc_env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert launch.returncode == 0, launch.stdout + launch.stderr
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert [r.status for r in runs] == [dg.DagsterRunStatus.QUEUED]  # no daemon yet: it waits
        run_id = runs[0].run_id

    daemon = subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)], env=proc_env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "w"),
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        status = None
        with dg.DagsterInstance.get() as instance:
            while time.monotonic() < deadline:
                status = instance.get_run_by_id(run_id).status
                if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
                    break
                time.sleep(1)
            assert status == dg.DagsterRunStatus.SUCCESS, (status, (tmp_path / "daemon.log").read_text()[-3000:])
            steps = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records
            assert [r.event_log_entry.step_key for r in steps] == ["write_step"]
            # The pool exists on the Postgres instance with the template's limit, and the slot was given back.
            info = instance.event_log_storage.get_concurrency_info("duckdb")
            assert info.slot_count == 1 and not info.claimed_slots
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=10)


# --- docker-compose, Dockerfile, Helm values ----------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_share_the_prod_instance_settings():
    services = compose()["services"]
    assert set(services) == {"postgres", *DAGSTER_SERVICES}
    needed = env_refs(yaml.safe_load(PROD.read_text()))
    for name in DAGSTER_SERVICES:
        environment = services[name]["environment"]
        assert needed <= set(environment), (name, needed - set(environment))
        assert environment["MONITOR_ENV"] == "prod"
        assert environment["DAGSTER_PG_HOST"] == "postgres"
        assert "depends_on" in services[name] and services[name]["depends_on"]["postgres"]["condition"] == \
            "service_healthy"
    pg = services["postgres"]["environment"]
    dagster_env = services["webserver"]["environment"]
    assert (pg["POSTGRES_USER"], pg["POSTGRES_DB"]) == (dagster_env["DAGSTER_PG_USER"], dagster_env["DAGSTER_PG_DB"])
    assert pg["POSTGRES_PASSWORD"] == dagster_env["DAGSTER_PG_PASSWORD"]
    assert dagster_env["DAGSTER_PG_PASSWORD"].startswith("${DAGSTER_PG_PASSWORD:?")  # no default password


def test_compose_workspace_points_at_the_user_code_server():
    services = compose()["services"]
    command = services["user_code"]["command"]
    assert command[:3] == ["dagster", "api", "grpc"]
    assert command[command.index("-m") + 1] == MODULE
    port = int(command[command.index("-p") + 1])
    for name in ("webserver", "daemon"):
        cmd = services[name]["command"]
        workspace_in_image = Path(cmd[cmd.index("-w") + 1])
        workspace = REPO / workspace_in_image.relative_to(IMAGE_APP)  # the image holds the repo's deploy/
        server = yaml.safe_load(workspace.read_text())["load_from"][0]["grpc_server"]
        assert (server["host"], server["port"]) == ("user_code", port)
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]  # not on every interface


def test_dockerfile_installs_the_package_with_the_prod_instance():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    assert 'cp deploy/prod/dagster.yaml "$DAGSTER_HOME/dagster.yaml"' in dockerfile
    assert "MONITOR_ENV=prod" in dockerfile
    assert f'"-m", "{MODULE}"' in dockerfile
    for copied in ("pyproject.toml", "monitor_assets", "data/demo", "deploy"):
        assert (REPO / copied).exists() and f"COPY --chown=dagster {copied}" in dockerfile
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and "warehouse" in ignored


# .ci/run installs Debian's docker-compose; looked for beyond PATH too, so that it is skipped only when absent.
DOCKER_COMPOSE = shutil.which("docker-compose") or next(
    (p for p in ("/usr/bin/docker-compose", "/usr/local/bin/docker-compose") if os.access(p, os.X_OK)), None)


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose (Debian's package, Compose 1.29) not installed")
def test_docker_compose_accepts_the_file():
    env = {**os.environ, "DAGSTER_PG_PASSWORD": "not-a-real-password"}
    ok = subprocess.run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    env.pop("DAGSTER_PG_PASSWORD")
    missing = subprocess.run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode != 0 and "set DAGSTER_PG_PASSWORD" in missing.stderr


def test_helm_values_match_the_package():
    values = yaml.safe_load(HELM_VALUES.read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == MODULE
    assert deployment["image"]["tag"] != "latest"
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["MONITOR_ENV"] == "prod"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    # Every run pod mounts the data volume holding the DuckDB file: the values say what it needs.
    volumes = {v["name"]: v for v in deployment["volumes"]}
    assert "persistentVolumeClaim" in volumes["monitor-data"]
    text = HELM_VALUES.read_text()
    assert "ReadWriteMany" in text and "`duckdb` pool" in text


# --- the dagster.yaml Dagster's Helm chart writes from deploy/helm/values.yaml ---------------------------------
# Rendered as the chart's templates/configmap-instance.yaml and helpers/instance/*.tpl do (dagster-io/dagster,
# helm/dagster), for the values this repo sets: scheduler, the storages (_postgresql.tpl), run launcher
# (_run-launcher.tpl, K8sRunLauncher), run coordinator (_run-coordinator.tpl: a `config` block only when some
# queuedRunCoordinator value is set), compute logs (NoOp, the chart's default), run monitoring and run retries
# (only when enabled; optional keys only when set), telemetry, retention, the chart's own `concurrency` block
# (_concurrency.tpl, only when concurrency.enabled, with its conflict checks) and additionalInstanceConfig
# (toYaml'd at the top level). Helm and a cluster are not on this machine.

QUEUED_KEYS = {"maxConcurrentRuns": "max_concurrent_runs", "tagConcurrencyLimits": "tag_concurrency_limits",
               "dequeueIntervalSeconds": "dequeue_interval_seconds", "dequeueUseThreads": "dequeue_use_threads",
               "dequeueNumWorkers": "dequeue_num_workers"}
MONITORING_KEYS = {"cancelTimeoutSeconds": "cancel_timeout_seconds", "maxRuntimeSeconds": "max_runtime_seconds",
                   "maxResumeRunAttempts": "max_resume_run_attempts"}
K8S_CONFIG_KEYS = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
                   "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
                   "jobMetadata": "job_metadata"}
RELEASE_NAMESPACE = "dagster"


def _postgres_config(values: dict) -> dict:
    pg = values["postgresql"]
    db = {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
          "hostname": pg["postgresqlHost"] if not pg["enabled"] else "dagster-postgresql",
          "db_name": pg["postgresqlDatabase"], "port": pg["service"]["port"], "params": pg.get("postgresqlParams") or {}}
    if pg.get("postgresqlScheme"):
        db["scheme"] = pg["postgresqlScheme"]
    return {"postgres_db": db}


def _k8s_run_launcher(values: dict) -> dict:
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config = {"load_incluster_config": k8s["loadInclusterConfig"],
              "job_namespace": k8s.get("jobNamespace") or RELEASE_NAMESPACE,
              "image_pull_policy": k8s.get("imagePullPolicy"), "service_account_name": "dagster",
              "dagster_home": {"env": "DAGSTER_HOME"}, "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
              "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
              "env_config_maps": [{"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"},
                                  *(m["name"] for m in k8s.get("envConfigMaps") or [] if "name" in m)]}
    if k8s.get("envSecrets"):
        config["env_secrets"] = [m["name"] for m in k8s["envSecrets"] if "name" in m]
    for key, name in (("envVars", "env_vars"), ("volumeMounts", "volume_mounts"), ("volumes", "volumes")):
        if k8s.get(key):
            config[name] = k8s[key]
    if k8s.get("runK8sConfig"):
        config["run_k8s_config"] = {K8S_CONFIG_KEYS[k]: v for k, v in k8s["runK8sConfig"].items() if v}
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def _chart_concurrency(values: dict) -> dict:
    """_concurrency.tpl, with the conflicts it refuses (`fail`) against the run coordinator's own limits."""
    concurrency = values.get("concurrency") or {}
    pools, runs = concurrency.get("pools") or {}, concurrency.get("runs") or {}
    queued = values["dagsterDaemon"]["runCoordinator"]["config"].get("queuedRunCoordinator") or {}
    if runs.get("maxConcurrentRuns") is not None and queued.get("maxConcurrentRuns") is not None:
        raise ValueError("chart: Cannot set both concurrency.runs.maxConcurrentRuns and ...maxConcurrentRuns")
    if runs.get("tagConcurrencyLimits") and queued.get("tagConcurrencyLimits"):
        raise ValueError("chart: Cannot set both concurrency.runs.tagConcurrencyLimits and ...tagConcurrencyLimits")
    out: dict = {}
    rendered_pools = {name: pools[key] for key, name in (("defaultLimit", "default_limit"), (
        "granularity", "granularity"), ("opGranularityRunBuffer", "op_granularity_run_buffer")) if pools.get(key) is not None}
    if rendered_pools:
        out["pools"] = rendered_pools
    rendered_runs = {}
    if runs.get("maxConcurrentRuns") is not None:
        rendered_runs["max_concurrent_runs"] = runs["maxConcurrentRuns"]
    if runs.get("tagConcurrencyLimits"):
        rendered_runs["tag_concurrency_limits"] = runs["tagConcurrencyLimits"]
    if rendered_runs:
        out["runs"] = rendered_runs
    return out


def render_helm_instance(values: dict) -> dict:
    """The chart's dagster.yaml for `values` (see above). A top-level key written twice (a chart section and
    the same key in additionalInstanceConfig) raises: Dagster's YAML loader would silently keep the last."""
    storage = _postgres_config(values)
    out = {"scheduler": {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"},
           "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                                "config": storage},
           "run_launcher": _k8s_run_launcher(values),
           "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": storage},
           "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage",
                                 "config": storage}}
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if daemon["enabled"] and coordinator["enabled"]:
        assert coordinator["type"] == "QueuedRunCoordinator"
        queued = coordinator["config"].get("queuedRunCoordinator") or {}
        config = {QUEUED_KEYS[k]: v for k, v in queued.items() if v not in (None, [], {}, "")}
        out["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
                                  **({"config": config} if config else {})}
    assert (values.get("computeLogManager") or {}).get("type", "NoOpComputeLogManager") == "NoOpComputeLogManager"
    out["compute_logs"] = {"module": "dagster._core.storage.noop_compute_log_manager",
                           "class": "NoOpComputeLogManager"}
    monitoring = daemon.get("runMonitoring") or {}
    if daemon["enabled"] and monitoring.get("enabled"):
        out["run_monitoring"] = {
            "enabled": True, "start_timeout_seconds": monitoring.get("startTimeoutSeconds"),
            **{name: monitoring[key] for key, name in MONITORING_KEYS.items() if monitoring.get(key) is not None},
            "poll_interval_seconds": monitoring.get("pollIntervalSeconds"),
            "free_slots_after_run_end_seconds": monitoring.get("freeSlotsAfterRunEndSeconds")}
    retries = daemon.get("runRetries") or {}
    if daemon["enabled"] and retries.get("enabled"):
        out["run_retries"] = {"enabled": True}
        if retries.get("maxRetries") is not None:
            out["run_retries"]["max_retries"] = retries["maxRetries"]
        if retries.get("retryOnAssetOrOpFailure") is not None:
            out["run_retries"]["retry_on_asset_or_op_failure"] = retries["retryOnAssetOrOpFailure"]
    out["telemetry"] = {"enabled": values["telemetry"]["enabled"]}
    retention = values.get("retention") or {}
    if retention.get("enabled"):
        out["retention"] = {kind: {"purge_after_days": retention[kind]["purgeAfterDays"]}
                            for kind in ("sensor", "schedule") if retention.get(kind)}
    if (values.get("concurrency") or {}).get("enabled"):
        out["concurrency"] = _chart_concurrency(values)
    for key, value in (values.get("additionalInstanceConfig") or {}).items():
        if key in out:
            raise ValueError(f"dagster.yaml would hold `{key}` twice (chart section and additionalInstanceConfig)")
        out[key] = value
    return out


def loaded_settings(instance) -> dict:
    """What the instance does, as Dagster resolved it: storages, run queue and its limits, pools, retries,
    monitoring, retention, telemetry."""
    queue = instance.get_concurrency_config().run_queue_config
    return {"storages": [type(s).__name__ for s in (instance.run_storage, instance.event_log_storage,
                                                    instance.schedule_storage)],
            "run_coordinator": type(instance.run_coordinator).__name__,
            "pool_default_limit": instance.get_concurrency_config().pool_config.default_pool_limit,
            "max_concurrent_runs": queue.max_concurrent_runs,
            "tag_concurrency_limits": queue.tag_concurrency_limits,
            **{key: instance.get_settings(key) for key in ("run_retries", "run_monitoring", "retention")},
            "run_retries_on_step_failure": instance.run_retries_retry_on_asset_or_op_failure,
            "run_monitoring_max_runtime_seconds": instance.run_monitoring_max_runtime_seconds,
            "telemetry": instance.telemetry_enabled}


def test_helm_chart_instance_loads_and_equals_the_prod_template(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    """The dagster.yaml the chart writes from deploy/helm/values.yaml, loaded by Dagster on a real PostgreSQL
    server (`dagster instance info` accepts it, as every pod does at start) and equal to deploy/prod/dagster.yaml
    in what the instance does. The database placeholders (CHANGE) point at the test's server, and the run
    launcher is Dagster's default (dagster-k8s is not installed and needs a cluster)."""
    values = yaml.safe_load(HELM_VALUES.read_text())
    rendered = render_helm_instance(values)
    launcher = rendered["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert launcher["config"]["env_secrets"] == ["monitor-assets-secrets"]
    assert "config" not in rendered["run_coordinator"]  # its limits live in concurrency.runs only

    env = prod_env(postgres_server, tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    db = rendered["run_storage"]["config"]["postgres_db"]  # one dict, shared by the three storages
    assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"} and db["scheme"] == "postgresql+psycopg2"
    db.update(hostname=postgres_server.host, port=postgres_server.port, username=postgres_server.user,
              db_name=postgres_server.db_name)
    rendered["run_launcher"] = {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}
    helm_home, prod_home = tmp_path / "helm_home", tmp_path / "prod_home"
    for home in (helm_home, prod_home):
        home.mkdir()
    (helm_home / "dagster.yaml").write_text(yaml.safe_dump(rendered, sort_keys=False))
    shutil.copy(PROD, prod_home / "dagster.yaml")

    info = subprocess.run([str(Path(sys.executable).parent / "dagster"), "instance", "info"],
                          env={**os.environ, "DAGSTER_HOME": str(helm_home)}, capture_output=True, text=True,
                          timeout=120)
    assert info.returncode == 0, info.stdout[-2000:] + info.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(helm_home)) as helm, \
            dg.DagsterInstance.from_config(str(prod_home)) as prod:
        helm_settings, prod_settings = loaded_settings(helm), loaded_settings(prod)
    assert helm_settings == prod_settings
    # The values that matter, spelled out (the equality above could hold with both wrong).
    assert prod_settings["storages"] == ["PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"]
    assert prod_settings["run_coordinator"] == "QueuedRunCoordinator"
    assert prod_settings["tag_concurrency_limits"] == [
        {"key": MONITORING_TAG_KEY, "value": MONITORING_JOB, "limit": 1}]
    assert prod_settings["run_retries_on_step_failure"] is False
    assert prod_settings["run_monitoring_max_runtime_seconds"] == 21600
    assert (prod_settings["pool_default_limit"], prod_settings["max_concurrent_runs"]) == (1, 4)


def test_helm_renderer_catches_the_conflicts_of_issue_25(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    """The values as they were (queue limits in the run coordinator beside a `concurrency` section): the
    rendered dagster.yaml is refused by Dagster when it loads, as it was in every pod. And a run_retries in
    additionalInstanceConfig beside the chart's own is caught as a duplicate key."""
    values = yaml.safe_load(HELM_VALUES.read_text())
    runs = values["additionalInstanceConfig"]["concurrency"]["runs"]
    values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] = {
        "maxConcurrentRuns": runs["max_concurrent_runs"]}
    rendered = render_helm_instance(values)
    rendered["run_launcher"] = {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres_server.password)
    info = subprocess.run([str(Path(sys.executable).parent / "dagster"), "instance", "info"],
                          env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert info.returncode != 0
    assert "incompatible with the `concurrency > runs` config" in info.stderr

    values = yaml.safe_load(HELM_VALUES.read_text())
    values["dagsterDaemon"]["runRetries"] = {"enabled": True, "maxRetries": 2}
    with pytest.raises(ValueError, match="`run_retries` twice"):
        render_helm_instance(values)
