"""Run a training step in this process or under torchrun; also the torchrun worker itself.

``uir train <step>``, the DVC stages and the Prefect flows all come here. With one process
(``nproc: 1``, one node) a step runs in the calling process unless ``torchrun`` is asked for;
otherwise this execs ``python -m torch.distributed.run ... -m uir.training.launch <step>`` and
every process it starts runs the same step, joining the process group the loop sets up (NCCL
on GPUs, gloo on CPUs). Embedding and evaluation are single-process work and never go through
torchrun. Arguments cross the process boundary as JSON, so a worker sees exactly the caller's
profile and overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uir.training.config import STEPS
from uir.training.dvc_stage import check_dvc_stage
from uir.training.job import TrainingJob, load_training_job


class LaunchError(RuntimeError):
    """torchrun exited with an error: the workers' output says why."""


def run_in_process(
    job: TrainingJob, step: str, restorer: str | None = None, stop_after: int | None = None
) -> dict[str, Any]:
    """One process's share of ``step`` (under torchrun, every process calls this)."""
    from uir.training import steps

    if step == "controller":
        return steps.train_controller(job, stop_after=stop_after)
    if step == "embed":
        return steps.compute_embeddings(job)
    if step == "restorer":
        names = [restorer] if restorer else list(job.training.selected.restorers)
        return {name: steps.train_restorer(job, name, stop_after=stop_after) for name in names}
    if step == "evaluate":
        from uir.training.evaluate import evaluate

        return evaluate(job)
    raise ValueError(f"unknown training step {step!r}; steps: {', '.join(STEPS)}")


def torchrun_command(
    job: TrainingJob,
    step: str,
    *,
    profile: str | None,
    overrides: dict[str, Any] | None,
    restorer: str | None = None,
    stop_after: int | None = None,
    result_file: Path | None = None,
) -> list[str]:
    settings = job.training.selected
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={settings.nproc}"]
    if settings.nnodes > 1:
        command += [
            f"--nnodes={settings.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={settings.rdzv_endpoint}",
            f"--rdzv-id=uir-{job.profile}-{step}",
        ]
    else:
        command.append("--standalone")
    command += ["-m", "uir.training.launch", step, "--params", str(job.params)]
    command += ["--overrides", json.dumps(overrides or {})]
    if profile:
        command += ["--profile", profile]
    if restorer:
        command += ["--restorer", restorer]
    if stop_after is not None:
        command += ["--stop-after", str(stop_after)]
    if result_file is not None:
        command += ["--result", str(result_file)]
    return command


def launch(
    step: str,
    params: str | Path = "params.yaml",
    *,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    restorer: str | None = None,
    torchrun: bool | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run ``step`` of the selected profile; ``restorer`` (a step ``restorer``) embeds first.

    ``torchrun`` None: only when the profile asks for more than one process. A restorer step
    first computes (or reuses) the embeddings, in this process.
    """
    job = load_training_job(params, profile=profile, overrides=overrides)
    if step not in STEPS:
        raise ValueError(f"unknown training step {step!r}; steps: {', '.join(STEPS)}")
    check_dvc_stage(job, step)
    results: dict[str, Any] = {}
    if step == "restorer":
        results["embeddings"] = run_in_process(job, "embed")
    settings = job.training.selected
    distributed = settings.nproc > 1 or settings.nnodes > 1
    if step == "evaluate" or not (distributed if torchrun is None else torchrun or distributed):
        results.update(_as_results(step, run_in_process(job, step, restorer, stop_after)))
        return results
    job.output_dir.mkdir(parents=True, exist_ok=True)
    result_file = job.output_dir / f".{step}-result.json"
    result_file.unlink(missing_ok=True)
    command = torchrun_command(
        job,
        step,
        profile=profile,
        overrides=overrides,
        restorer=restorer,
        stop_after=stop_after,
        result_file=result_file,
    )
    print(f"[train] {' '.join(command)}", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if subprocess.run(command, env=env, check=False).returncode != 0:
        raise LaunchError(f"torchrun for step {step!r} failed (its output is above)")
    results.update(_as_results(step, json.loads(result_file.read_text())))
    result_file.unlink()
    return results


def _as_results(step: str, value: dict[str, Any]) -> dict[str, Any]:
    return value if step == "restorer" else {step: value}


def main(argv: Sequence[str] | None = None) -> int:
    """The torchrun worker: run one step in this process; rank 0 writes the result file."""
    parser = argparse.ArgumentParser(prog="python -m uir.training.launch")
    parser.add_argument("step", choices=[*STEPS, "embed"])
    parser.add_argument("--params", required=True)
    parser.add_argument("--profile")
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--restorer")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--result")
    args = parser.parse_args(argv)
    job = load_training_job(args.params, profile=args.profile, overrides=json.loads(args.overrides))
    result = run_in_process(job, args.step, args.restorer, args.stop_after)
    if args.result and int(os.environ.get("RANK", "0")) == 0:
        Path(args.result).write_text(json.dumps(result, default=str))
    from uir_models.training import shutdown_distributed

    shutdown_distributed()
    return 0


if __name__ == "__main__":
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(message)s")
    for logger in ("uir", "uir_models"):  # progress of our loops; open_clip is chatty at INFO
        logging.getLogger(logger).setLevel(logging.INFO)
    sys.exit(main())
