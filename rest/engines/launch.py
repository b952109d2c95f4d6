"""Multi-process M-step: the torchrun / accelerate command that runs every rank through ``rest.run.worker``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rest.errors import RestError
from rest.recipe.schema import TrainConfig
from rest.run.rundir import RunDir

# Set in the ranks' environment, so the training phase inside a rank trains instead of launching again.
LAUNCHED_ENV = "REST_EM_TRAIN_LAUNCHED"


class TrainingError(RestError, RuntimeError):
    """The M-step cannot run or failed; the message says why."""


def inside_launch() -> bool:
    """Whether this process is one rank of a launch that rest-em started."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def rank_and_world() -> tuple[int, int]:
    """This process's global rank and the number of ranks (0, 1 outside a distributed launch)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def check_config_files(cfg: TrainConfig) -> None:
    """Every config file the recipe passes through must exist (checked before any process starts)."""
    for key in ("accelerate_config", "deepspeed", "fsdp_config"):
        value = getattr(cfg, key)
        if value and not Path(value).is_file():
            raise TrainingError(f"train.{key}: file {value!r} not found")
    if cfg.deepspeed:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise TrainingError("train.deepspeed is set but the deepspeed package is not installed")


def launch_command(cfg: TrainConfig, run: RunDir, iteration: int) -> list[str]:
    """The command that starts ``cfg.num_processes`` ranks, each running this iteration's training phase."""
    phase = ["-m", "rest.run.worker", "train", str(run.root), str(iteration)]
    if cfg.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(cfg.num_processes), *cfg.launcher_args, *phase]
    if cfg.launcher == "accelerate":
        config = ["--config_file", cfg.accelerate_config] if cfg.accelerate_config else []
        # Without a config file, accelerate starts one process unless told it is a multi-process run.
        multi = ["--multi_gpu"] if cfg.num_processes > 1 and not cfg.accelerate_config else []
        return [sys.executable, "-m", "accelerate.commands.launch", *config, *multi,
                "--num_processes", str(cfg.num_processes), *cfg.launcher_args, *phase]
    raise TrainingError(f"train.launcher {cfg.launcher!r} does not start processes")


def launch_ranks(cfg: TrainConfig, run: RunDir, iteration: int) -> None:
    """Run the ranks to completion; their output goes where this process's goes."""
    check_config_files(cfg)
    cmd = launch_command(cfg, run, iteration)
    env = dict(os.environ, **{LAUNCHED_ENV: "1"})
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise TrainingError(
            f"{cfg.launcher} training of iteration {iteration} with {cfg.num_processes} processes failed "
            f"(exit code {code}); see the ranks' output above"
        )
