"""The `raylm` command line. Commands exist only for what works; stages add theirs as they land."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cluster.config import RecipeError, describe_keys, load_recipe
from cluster.headline import headline

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="raylm: from raw text to a served, compressed language model on Ray.\n\n"
    "Start with `raylm doctor`, then `raylm run pipelines/recipes/quickstart.yaml`.",
)
console = Console()
err_console = Console(stderr=True)

SET_HELP = "Override a recipe key, e.g. `--set cluster.num_cpus=2` (repeatable; the value is YAML)."


def fail(problem: Exception | str, code: int = 2) -> typer.Exit:
    """Print a problem to stderr unwrapped and without markup (messages hold paths and brackets), exit."""
    problems = getattr(problem, "problems", None) or [str(problem)]
    head = problems[0] if len(problems) == 1 else "invalid recipe:\n  " + "\n  ".join(problems)
    typer.secho(head, err=True, fg="red")
    raise typer.Exit(code)


def _load(recipe: Path, overrides: list[str]):
    try:
        return load_recipe(recipe, overrides)
    except RecipeError as exc:
        fail(exc)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. pipelines/recipes/quickstart.yaml."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    force: list[str] = typer.Option([], "--force", help="Redo this stage even if finished (repeatable; "
                                    "`all` redoes every stage)."),
    address: str = typer.Option(None, "--address", help="Ray cluster address; default: embedded local Ray."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the plan; start nothing."),
    keep_serving: bool = typer.Option(
        False, "--keep-serving", help="Keep the served models up after the sample requests, until Ctrl-C "
        "(the same as --set serve.keep_serving=true)."
    ),
) -> None:
    """Run every stage the recipe has, in order, skipping stages whose manifest matches.

    Examples:

        raylm run pipelines/recipes/quickstart.yaml
        raylm run my.yaml --set cluster.num_cpus=2 --force data
        raylm run my.yaml --dry-run
        raylm run pipelines/recipes/quickstart.yaml --keep-serving
    """
    from cluster.orchestrate import run_recipe

    cfg = _load(recipe, set_)
    if keep_serving:
        if cfg.serve is None:
            fail(RecipeError([f"--keep-serving: {recipe} has no serve section"]))
        cfg.serve.keep_serving = True
    if address:
        cfg.cluster.address = address
    if dry_run:  # stages, resources, DeepSpeed layout, memory per worker, and the planners' checks
        from cluster.dry_run import print_plan

        def say(line: str) -> None:  # paths hold brackets: no rich markup; long lines stay whole
            console.print(line, markup=False, highlight=False, soft_wrap=True)

        raise typer.Exit(print_plan(cfg, say))
    try:
        results = run_recipe(cfg, force=set(force), log=console.print)
    except RecipeError as exc:
        fail(exc)
    _summary(results)


def _summary(results) -> None:
    table = Table(title="run summary")
    for col in ("stage", "status", "wall s", "key metrics"):
        table.add_column(col)
    for r in results:
        key = headline(r.stage, r.manifest.metrics)
        wall = f"{r.manifest.timings.get('wall_s', 0):.1f}"
        table.add_row(r.stage, "reused" if r.skipped else "done", wall, key)
    console.print(table)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Show what is installed and working: Python, torch and its CPU ISA, Ray, DeepSpeed and its
    accelerator, vLLM and its platform, NLTK data, corpus, reference model, free memory and disk.

    Exits 1 when a check fails.

    Example:

        raylm doctor
    """
    from cluster.doctor import FAIL, run_checks
    from cluster.runtime import isolate_side_files

    isolate_side_files()
    rows = run_checks()
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        table = Table(title="raylm doctor")
        for col in ("check", "status", "detail"):
            table.add_column(col)
        colors = {"ok": "green", "warn": "yellow", "fail": "red"}
        for r in rows:
            table.add_row(r.name, f"[{colors[r.status]}]{r.status}[/]", r.detail)
        console.print(table)
    if any(r.status == FAIL for r in rows):
        raise typer.Exit(1)


@app.command()
def status(run_dir: Path = typer.Argument(..., help="A run folder, e.g. runs/quickstart.")) -> None:
    """Show a run's finished stages: when, how long, config hash and key metrics.

    Example:

        raylm status runs/quickstart
    """
    from pipelines.run_folder import RunFolder

    if not run_dir.exists():
        fail(f"{run_dir}: no such run folder")
    manifests = RunFolder(str(run_dir)).manifests()
    if not manifests:
        console.print(f"{run_dir}: no finished stages yet")
        return
    table = Table(title=f"run {run_dir}")
    for col in ("stage", "finished", "wall s", "config", "metrics"):
        table.add_column(col)
    for folder, m in manifests.items():
        metrics = headline(folder, m.metrics)
        table.add_row(folder, m.created_at, f"{m.timings.get('wall_s', 0):.1f}", m.config_hash, metrics)
    console.print(table)


@app.command()
def setup(
    only: list[str] = typer.Option([], "--only", help="Prepare only these assets (repeatable)."),
) -> None:
    """Prepare the offline assets in `$RAYLM_HOME` (default ~/.cache/raylm): NLTK data, the bundled
    corpus, instruction pairs, the reference model. Idempotent: a second run does only what is missing.

    Example:

        raylm setup
    """
    from cluster.assets.prepare import prepare_assets

    results = prepare_assets(only=set(only) or None, log=lambda msg: console.print(msg, markup=False))
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
def keys(section: str = typer.Argument(None, help="Only this section, e.g. `cluster`.")) -> None:
    """List every recipe key with its type, default and meaning.

    Example:

        raylm keys cluster
    """
    table = Table(title="recipe keys")
    for col in ("key", "type", "default", "meaning"):
        table.add_column(col, overflow="fold")
    rows = [r for r in describe_keys() if section is None or r[0].split(".")[0] == section]
    if not rows:
        fail(f"no recipe section named {section!r}")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def _register_stage_commands() -> None:
    import importlib

    from cluster.commands import COMMAND_MODULES

    for module in COMMAND_MODULES:
        importlib.import_module(module)


_register_stage_commands()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
