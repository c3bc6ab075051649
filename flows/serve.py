"""Serve one ``build-dataset/<name>`` deployment per dataset of a params file.

Used by `uir serve` (see scripts/serve.sh, which starts the local server first). Serving needs
a real Prefect API: against Prefect's temporary server the deployments would be invisible to
`prefect deployment run`, so without PREFECT_API_URL this talks to the local server on ``port``.
"""

from __future__ import annotations

import errno
from pathlib import Path

import httpx
from prefect import serve as prefect_serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.build_dataset import build_dataset
from flows.train import train_controller, train_restorer
from uir.dataset.config import dataset_names, load_dataset_config, load_params
from uir.training.config import load_training_config


def deployments(params: Path) -> list[RunnerDeployment]:
    """One deployment per dataset; a dataset with a DVC stage records its outputs in dvc.lock.
    The build of the training profile's dataset then trains (``build_dataset(train=None)``);
    ``train-controller/<profile>`` and ``train-restorer/<profile>`` retrain on their own."""
    params = params.resolve()
    made = []
    for name in dataset_names(params):
        config = load_dataset_config(name, params)  # a bad entry fails here, not at run time
        made.append(
            build_dataset.to_deployment(
                name=name,
                parameters={
                    "dataset": name, "params": str(params), "dvc_commit": bool(config.dvc_stage),
                },
                description=f"Build datasets.{name} of {params}",
                concurrency_limit=1,  # two runs of one dataset would race on its output folder
                entrypoint_type=EntrypointType.MODULE_PATH,  # the installed package, any cwd
            )
        )
    if "training" in load_params(params):
        profile = load_training_config(params).profile  # a bad entry fails here too
        for training_flow in (train_controller, train_restorer):
            made.append(
                training_flow.to_deployment(
                    name=profile,
                    parameters={"params": str(params), "dvc_commit": True},
                    description=f"{training_flow.name} with training profile {profile}",
                    concurrency_limit=1,
                    entrypoint_type=EntrypointType.MODULE_PATH,
                )
            )
    return made


def api_url(port: int) -> str:
    """PREFECT_API_URL when set, else the local server on ``port``, which must be up."""
    if url := PREFECT_API_URL.value():
        return url
    url = f"http://127.0.0.1:{port}/api"
    try:
        httpx.get(f"{url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        raise ConnectionError(
            errno.ECONNREFUSED,
            f"no Prefect server here ({err}); start one with scripts/serve.sh or set "
            "PREFECT_API_URL",
            url,
        ) from None
    return url


def serve(params: Path, port: int = 4200) -> None:
    """Register the deployments and run their flow runs here until interrupted."""
    with temporary_settings(updates={PREFECT_API_URL: api_url(port)}):
        # nothing is scheduled, so nothing to pause on exit (the server may already be gone)
        prefect_serve(*deployments(params), pause_on_shutdown=False)
