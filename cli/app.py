"""The ``rest`` command: thin Typer commands that load the recipe and call one library function each."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

app = typer.Typer(
    help="rest-em: self-training (ReST / ReST-EM) with vLLM, verifiers, TRL and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RecipeArg = typer.Argument(..., help="Recipe YAML file.", show_default=False)
OverridesArg = typer.Argument(None, help="Overrides such as sampling.n=8 train.learning_rate=2e-5.")
RunDirOpt = typer.Option(None, "--run-dir", help="Run directory (default: the recipe's run.dir).")
AllowChangeOpt = typer.Option(False, help="Continue a run directory made by a different recipe (recorded in its manifest).")
IterationOpt = typer.Option(..., "--iteration", "-i", help="Iteration to act on (1..N; eval also takes 0).")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Also show vLLM's, torch's and TRL's output (always in "
                          "iter_K/logs/PHASE.log; same as REST_EM_VERBOSE=1).")


def _set_verbose(verbose: bool) -> None:
    import os

    from rest.report.progress import VERBOSE_ENV

    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def _fail(message: str) -> None:
    from rest.report.progress import console

    console().print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _guarded(action: Callable[[], Any]) -> Any:
    """Run ``action``; expected errors become one clear message and exit code 1, not a traceback."""
    from rest.errors import RestError

    try:
        return action()
    except RestError as err:
        _fail(str(err))


def _load(recipe: Path, overrides: Optional[List[str]]):
    from rest.recipe.schema import load_recipe

    return _guarded(lambda: load_recipe(recipe, overrides or []))


@app.command()
def validate(recipe: Path = RecipeArg, overrides: Optional[List[str]] = OverridesArg) -> None:
    """Check a recipe (and overrides) without running anything."""
    loaded = _load(recipe, overrides)
    typer.echo(f"{recipe}: valid (recipe '{loaded.name}', hash {loaded.hash()})")


@app.command()
def run(
    recipe: Path = RecipeArg,
    overrides: Optional[List[str]] = OverridesArg,
    run_dir: Optional[Path] = RunDirOpt,
    allow_recipe_change: bool = AllowChangeOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run the whole experiment (or continue it after the last finished phase)."""
    from rest.loop import run_loop

    _set_verbose(verbose)
    loaded = _load(recipe, overrides)
    result = _guarded(lambda: run_loop(loaded, run_dir, allow_recipe_change))
    _print_summary(result.rows, result.run_dir, result.stopped_because)


def _phase_command(phase: str, doc: str) -> Callable[..., None]:
    def command(
        recipe: Path = RecipeArg,
        overrides: Optional[List[str]] = OverridesArg,
        iteration: int = IterationOpt,
        run_dir: Optional[Path] = RunDirOpt,
        allow_recipe_change: bool = AllowChangeOpt,
        verbose: bool = VerboseOpt,
    ) -> None:
        from rest.loop import run_single_phase

        _set_verbose(verbose)
        loaded = _load(recipe, overrides)
        stats = _guarded(lambda: run_single_phase(loaded, phase, iteration, run_dir, allow_recipe_change))
        typer.echo(_one_line(phase, iteration, stats))

    command.__doc__ = doc
    return command


def _add_phase_commands() -> None:
    from rest.phases.table import PHASE_TABLE

    for spec in PHASE_TABLE:
        app.command(name=spec.command)(_phase_command(spec.name, spec.help))


_add_phase_commands()


@app.command()
def status(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Per-iteration table of a run, read from the run directory alone (no MLflow needed)."""
    from rest.loop import summary_rows
    from rest.run.rundir import RunDir

    run = RunDir(run_dir)
    if not run.manifest_path.is_file():
        _fail(f"{run_dir} is not a rest-em run directory (no manifest.json)")
    _print_summary(summary_rows(run), run_dir)


def _one_line(phase: str, iteration: int, stats: dict) -> str:
    shown = {k: v for k, v in stats.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return f"{phase} iteration {iteration}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in list(shown.items())[:8])


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_summary(
    rows: list[dict], run_dir: Optional[Path] = None, stopped_because: Optional[str] = None
) -> None:
    """The iteration and wall-time tables, then why the run stopped and where to look."""
    from rich.console import Console

    from rest.report.summary import pointers, render
    from rest.run.rundir import RunDir

    render(rows, Console())
    for line in pointers(RunDir(run_dir), stopped_because) if run_dir is not None else []:
        typer.echo(line)


def stop_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit: the running phase's cleanup then stops its whole process group (the
    vLLM engine included); by default SIGTERM ends `rest` at once and orphans the engine, memory and all."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    """Console-script entry point."""
    stop_on_sigterm()
    app()


if __name__ == "__main__":
    main()
