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

from monitor_assets.runner import INSTANCE_TEMPLATES, instance_template
from monitor_assets_tests.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROD = DEPLOY / "prod" / "dagster.yaml"
COMPOSE = DEPLOY / "docker-compose.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
IMAGE_APP = Path("/opt/dagster/app")  # where deploy/Dockerfile puts the repository's files
DAGSTER_SERVICES = ("user_code", "webserver", "daemon")
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
    assert "storage" not in local  # local: SQLite in DAGSTER_HOME, Dagster's default


def test_run_pipeline_refuses_an_unknown_monitor_env(tmp_path):
    env = {**os.environ, "MONITOR_ENV": "staging", "DAGSTER_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "monitor_assets.run_pipeline"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip() == "MONITOR_ENV='staging': expected one of local, prod"
    assert not (tmp_path / "home").exists()


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
            ("dagster/job_name", "monitoring_job", 1)]
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


DOCKER_COMPOSE = shutil.which("docker-compose")


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


def test_helm_values_match_the_prod_instance_and_the_package():
    values = yaml.safe_load(HELM_VALUES.read_text())
    prod = yaml.safe_load(PROD.read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == MODULE
    assert deployment["image"]["tag"] != "latest"
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["MONITOR_ENV"] == "prod"
    assert values["telemetry"] == {"enabled": False} and prod["telemetry"] == {"enabled": False}
    assert values["postgresql"]["postgresqlScheme"] == prod["storage"]["postgres"]["postgres_db"]["scheme"]
    queued = values["dagsterDaemon"]["runCoordinator"]
    assert queued["type"] == "QueuedRunCoordinator" and queued["enabled"]
    runs = prod["concurrency"]["runs"]
    assert queued["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert queued["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    assert values["additionalInstanceConfig"]["concurrency"]["pools"] == prod["concurrency"]["pools"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["maxRuntimeSeconds"] == prod["run_monitoring"]["max_runtime_seconds"]
    assert values["dagsterDaemon"]["runRetries"]["maxRetries"] == prod["run_retries"]["max_retries"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
