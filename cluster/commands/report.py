"""`raylm report RUN_DIR`: (re)write a run's report (`<run>/report/index.md`, `index.html`, PNGs) from
what its stages recorded. `raylm run` writes it at the end of every run; this command redoes it, e.g. for
a run folder copied from a cluster or after a stage was re-run on its own."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli import SET_HELP, _load, app, console, fail


@app.command()
def report(
    run_dir: str = typer.Argument(..., help="A run folder (local path or s3://), e.g. runs/quickstart."),
    recipe: Path = typer.Option(
        None,
        "--recipe",
        help="Show this recipe in the report (default: the one "
        "saved by the run, else the configs the stage manifests recorded).",
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP + " Applies to --recipe."),
    out: str = typer.Option(None, "--out", help="Write the report here instead of RUN_DIR/report."),
) -> None:
    """Write a run's report: data funnel, tokenizer stats, loss curves, DPO/reward margins, compression
    table and Pareto plot, serving latency, the recipe. Stages that did not run say so.

    Examples:

        raylm report runs/quickstart
        raylm report runs/quickstart --recipe pipelines/recipes/quickstart.yaml --out /tmp/report
    """
    from pipelines.report import write_report
    from pipelines.report.collect import collect

    if "://" not in run_dir and not Path(run_dir).is_dir():
        fail(f"{run_dir}: no such run folder")
    cfg = _load(recipe, set_) if recipe else None
    if not collect(run_dir).manifests:
        console.print(f"{run_dir}: no finished stages yet; the report will say so")
    folder = write_report(run_dir, cfg, out)
    console.print(f"report: {folder}/index.html (and index.md)")
