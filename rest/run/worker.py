"""Entry point of a phase's own process: ``python -m rest.run.worker PHASE RUN_DIR ITERATION``."""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Load the run directory's recipe and run one phase; known errors print one clear line."""
    from rest.errors import RestError
    from rest.recipe.schema import load_recipe
    from rest.report.progress import adopt_ui_channel
    from rest.run.execute import phase_function
    from rest.run.rundir import RunDir

    die_with_parent()
    adopt_ui_channel()  # rest-em's own output to the terminal; the rest of this process's output to the log
    phase, root, iteration = argv[0], argv[1], int(argv[2])
    run = RunDir(root)
    recipe = load_recipe(run.recipe_path)
    try:
        phase_function(phase)(recipe, run, iteration)
    except RestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def die_with_parent() -> None:
    """Linux: SIGKILL this phase when the `rest` process that started it dies (it runs in its own session,
    so nothing else would stop it holding the engine's memory); elsewhere a no-op."""
    import ctypes
    import os
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":  # vLLM spawns its engine process and needs this guard
    sys.exit(main(sys.argv[1:]))
