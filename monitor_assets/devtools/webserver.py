"""Start the real Dagster webserver and daemon for tests and screenshots, and talk to the GraphQL API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monitor_assets.config import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_webserver(env: dict[str, str] | None = None, port: int | None = None,
                      timeout: float = 90.0) -> Iterator[str]:
    """dagster-webserver on 127.0.0.1 in its own process group; yields its base URL, stops it after."""
    port = port or free_port()
    full_env = {**os.environ, **(env or {})}
    cmd = [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
           "-w", str(REPO_ROOT / "workspace.yaml")]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"webserver exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"webserver not ready on {url} after {timeout} s") from None
                time.sleep(0.5)
        # The code location loads after the server answers; wait until it is there.
        while time.monotonic() < deadline:
            data = graphql(url, "{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name } } } }")
            if data["repositoriesOrError"].get("nodes"):
                break
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process started in its own session, with its children (a webserver's code server)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def running_daemon(env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """The real `dagster-daemon` (schedules, sensors, run queue, run monitoring) in its own process
    group, on the repo's workspace; stopped, with its code server, afterwards."""
    cmd = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc, timeout=30)


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(f"{url}/graphql", method="POST",
                                     data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


ASSETS_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    description
    kinds
    owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
    assetChecksOrError { ... on AssetChecks { checks { name } } }
  }
  repositoriesOrError {
    ... on RepositoryConnection { nodes { name jobs { name } schedules { name } sensors { name } } }
  }
}
"""
