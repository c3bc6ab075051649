"""The build-dataset flow through a real local Prefect server (issue 4, "Must show"), and the
choice of task runner.

The end-to-end test runs the documented commands themselves: `scripts/serve.sh` (server and
deployments) and `source scripts/prefect-env.sh && prefect deployment run build-dataset/demo`,
in a temporary git clone of the working tree.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import yaml
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.build_dataset import make_task_runner
from uir.dataset.config import RunnerConfig
from uir.demo import demo_images

FLOW_RUN_ID = re.compile(r"UUID: ([0-9a-f-]{36})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(what: str, ready: Callable[[], Any], serving: subprocess.Popen[bytes],
               log: Path, timeout: float) -> Any:
    """Poll ``ready`` until it returns something truthy; fail early if serve.sh died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serving.poll() is not None:
            pytest.fail(f"serve.sh exited {serving.returncode} before {what}:\n"
                        f"{log.read_text()[-4000:]}")
        if found := ready():
            return found
        time.sleep(0.25)
    pytest.fail(f"no {what} after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def artifact(client: Any, key: str) -> Any:
    """The newest artifact with ``key``, through the Prefect client's request method: its
    `read_artifacts` always sends ``task_runs: null``, which the server rejects with FastAPI
    0.154 (422), and an empty task-run filter would hide flow-level artifacts."""
    from prefect.client.schemas.objects import Artifact

    found = client.request("POST", "/artifacts/filter", json={
        "artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1,
    })
    found.raise_for_status()
    artifacts = Artifact.model_validate_list(found.json())
    return artifacts[0] if artifacts else None


def stop_serving(serving: subprocess.Popen[bytes], env: dict[str, str], clone: Path) -> None:
    """SIGTERM serve.sh as Ctrl-C would; make sure of it if it does not stop in time."""
    if serving.poll() is None:
        serving.send_signal(signal.SIGTERM)
        try:
            serving.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)  # its own session: serve.sh and children
            serving.wait()
    if healthy(env["PREFECT_API_URL"]):  # serve.sh did not stop its server: do it here
        subprocess.run(["prefect", "server", "stop"], cwd=clone, env=env, check=False,
                       capture_output=True, timeout=60)


@pytest.mark.slow
def test_deployment_run_through_a_local_server(
    tmp_path, repo_root, cli_env, run_cli, make_clone
):
    """serve.sh starts a server and serves build-dataset/demo; `prefect deployment run` builds
    and labels verified shards with progress, summary and quality artifacts and records every
    stage in dvc.lock; SIGTERM (Ctrl-C) stops the serving process and the server."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound

    # 14 samples in chunks of 4, so that progress has steps to show
    clone = make_clone(
        repo_root, tmp_path / "clone", {"synthesis.variants": 2, "shards.max_count": 4}
    )
    port = free_port()
    env = {
        **cli_env, "PORT": str(port), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_HOME": str(clone / ".prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    api = env["PREFECT_API_URL"]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        serving = subprocess.Popen(
            ["bash", "scripts/serve.sh", "--params", str(clone / "params.yaml")], cwd=clone,
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until("healthy server", lambda: healthy(api), serving, log, timeout=120)
        with SyncPrefectClient(api) as client:

            def deployment() -> Any:
                try:
                    return client.read_deployment_by_name("build-dataset/demo")
                except ObjectNotFound:
                    return None

            served = wait_until("deployment", deployment, serving, log, timeout=120)
            assert served.parameters == {
                "dataset": "demo", "params": str((clone / "params.yaml").resolve()),
                "dvc_commit": True,
            }
            started = subprocess.run(
                ["bash", "-c", "source scripts/prefect-env.sh && "
                 "prefect deployment run build-dataset/demo"],
                cwd=clone, env=env, capture_output=True, text=True, timeout=120, check=True,
            )
            flow_run_id = UUID(FLOW_RUN_ID.search(started.stdout).group(1))

            progress_seen: list[float] = []

            def finished() -> Any:
                if (progress := artifact(client, "build-demo")) is not None:
                    progress_seen.append(float(progress.data))
                state = client.read_flow_run(flow_run_id).state
                return state if state.is_final() else None

            state = wait_until("finished flow run", finished, serving, log, timeout=480)
            assert state.is_completed(), f"{state}\n{log.read_text()[-4000:]}"

            progress = artifact(client, "build-demo")
            summary = artifact(client, "build-demo-summary")
            quality_card = artifact(client, "build-demo-quality")
            quality_types = artifact(client, "build-demo-quality-types")

            # One deployment builds the training profile's dataset, then trains and evaluates
            # (train-controller and train-restorer run as subflows, torchrun inside).
            started = subprocess.run(
                ["bash", "-c", "source scripts/prefect-env.sh && "
                 "prefect deployment run build-dataset/demo-daclip"],
                cwd=clone, env=env, capture_output=True, text=True, timeout=120, check=True,
            )
            train_run_id = UUID(FLOW_RUN_ID.search(started.stdout).group(1))

            def trained() -> Any:
                state = client.read_flow_run(train_run_id).state
                return state if state.is_final() else None

            state = wait_until("finished training run", trained, serving, log, timeout=480)
            assert state.is_completed(), f"{state}\n{log.read_text()[-4000:]}"
            evaluation = artifact(client, "train-demo-evaluation")
            classes = artifact(client, "train-demo-controller-classes")
            restorer = artifact(client, "train-demo-restorer-nafnet")
            names = {d.name for d in client.read_deployments()}
        out = clone / "data" / "shards" / "demo"
        manifest = json.loads((out / "manifest.json").read_text())
        assert sorted(out.glob("*.tar")) and manifest["counts"]["samples"] == len(demo_images()) * 2
        assert run_cli("uir", "verify", out).stdout.startswith("OK")

        # Progress moved while chunks completed (steps of 1/chunks) and ended at 100 %.
        assert progress.type == "progress" and float(progress.data) == 100.0
        chunks = int(progress.description.rsplit(" ", 1)[1])  # "demo: chunks written of N"
        steps = {round(100.0 * done / chunks, 6) for done in range(chunks + 1)}
        assert chunks > 1
        assert {round(value, 6) for value in progress_seen} <= steps
        assert any(value < 100.0 for value in progress_seen), progress_seen
        assert summary.type == "table"
        rows = json.loads(summary.data)
        assert {row["split"] for row in rows} == set(manifest["counts"]["splits"])
        assert sum(row["samples"] for row in rows) == manifest["counts"]["samples"]
        assert sum(row["shards"] for row in rows) == len(manifest["shards"])

        # The quality steps ran as tasks of the same flow run, with their own artifacts.
        labelled = clone / "data" / "shards" / "demo-quality"
        assert run_cli("uir", "verify", labelled).stdout.startswith("OK")
        quality = json.loads((labelled / "manifest.json").read_text())["quality"]
        assert quality_card.type == "markdown" and "Perceiver three-way accuracy" in (
            quality_card.data)
        assert {row["type"] for row in json.loads(quality_types.data)} == set(quality["per_type"])

        # The deployment passed dvc_commit: dvc.lock records the outputs, and they match.
        stages = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
        assert set(stages) == {
            "build_demo", "proxy_demo", "render_demo", "perceiver_demo", "label_demo",
            "build_demo_daclip", "train_controller", "train_restorer", "evaluate"}

        # The training deployment's evaluation, as artifacts and DVC metrics.
        metrics = json.loads((clone / "reports" / "train" / "metrics.json").read_text())
        assert evaluation.type == "markdown" and "Controller (step 6)" in evaluation.data
        assert {row["class"] for row in json.loads(classes.data)} == set(
            metrics["controller"]["per_class"])
        assert {row["type"] for row in json.loads(restorer.data)} == set(
            metrics["restorers"]["nafnet"]["per_type"])
        assert {"demo", "demo-daclip"} <= names  # build-dataset/<name>; train-*/demo too
        stage = stages["build_demo"]
        assert [(o["path"], o["md5"].endswith(".dir")) for o in stage["outs"]] == [
            ("data/shards/demo", True)
        ]
        assert stage["params"]["params.yaml"]["datasets.demo"]["synthesis"]["variants"] == 2
        status = run_cli("dvc", "status", cwd=clone)
        assert "Data and pipelines are up to date" in status.stdout

        serving.send_signal(signal.SIGTERM)  # what Ctrl-C does through serve.sh's trap
        assert serving.wait(timeout=60) in (0, 128 + signal.SIGTERM)
        assert not (clone / ".prefect" / "server.pid").exists()  # `prefect server stop` ran
        deadline = time.monotonic() + 30
        while healthy(api) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not healthy(api), "serve.sh left its Prefect server running"
    finally:
        stop_serving(serving, env, clone)


# ---------------------------------------------------------------------------------------------
# task runners


@pytest.mark.parametrize(
    ("kind", "runner_type", "workers"),
    [("process", ProcessPoolTaskRunner, 3), ("thread", ThreadPoolTaskRunner, 3),
     ("sequential", ThreadPoolTaskRunner, 1)],
)
def test_local_task_runners(kind, runner_type, workers):
    runner = make_task_runner(RunnerConfig(kind=kind, workers=3))
    assert type(runner) is runner_type
    assert runner._max_workers == workers


@pytest.mark.parametrize("kind", ["dask", "ray"])
def test_cluster_runner_without_its_package_names_it(kind, monkeypatch):
    monkeypatch.setitem(sys.modules, f"prefect_{kind}", None)  # import fails as if missing
    with pytest.raises(ImportError, match=f"pip install prefect-{kind}"):
        make_task_runner(RunnerConfig(kind=kind, address="tcp://127.0.0.1:1"))
