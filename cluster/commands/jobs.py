"""`raylm submit|jobs|logs|stop`: a recipe's run as a Ray job on a cluster (see cluster/jobs.py)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.table import Table

from cluster.cli import SET_HELP, _load, app, console, err_console

ADDRESS_HELP = (
    "The cluster's dashboard, e.g. `http://HEAD:8265` (default: `$RAY_API_SERVER_ADDRESS`). "
    "The token comes from `$RAY_AUTH_TOKEN`, `$RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`."
)


def _address_option():
    return typer.Option(..., "--address", envvar="RAY_API_SERVER_ADDRESS", help=ADDRESS_HELP)


def _client(address: str):
    from cluster.jobs import JobsError, connect

    try:
        return connect(address)
    except JobsError as exc:
        err_console.print(f"[bold red]{exc}[/]")
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]{exc}[/]")
    raise typer.Exit(2) from None


def _write(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def _report_end(info) -> None:
    color = {"SUCCEEDED": "green", "STOPPED": "yellow"}.get(str(info.status), "red")
    console.print(
        f"job {info.submission_id}: [{color}]{info.status}[/]"
        + (f" ({info.error_type})" if info.error_type else "")
    )
    if str(info.status) != "SUCCEEDED" and info.message:
        err_console.print(info.message.strip()[-4000:])


@app.command()
def submit(
    recipe: Path = typer.Argument(
        ..., help="Recipe YAML on this machine (or on the cluster with `--recipe-on-cluster`)."
    ),
    address: str = _address_option(),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    force: list[str] = typer.Option([], "--force", help="Redo this stage even if finished (repeatable)."),
    wait: bool = typer.Option(
        False, "--wait", help="Follow the job's logs until it ends; exit 1 unless it SUCCEEDED."
    ),
    code: str = typer.Option(
        "upload",
        "--code",
        help="`upload`: ship raylm's code from here with the job; "
        "`image`: use the raylm installed in the cluster's image; a URI "
        "(`s3://.../raylm-code.zip`, `file:///shared/raylm-code.zip`): a "
        "`raylm pack-code` "
        "zip each node fetches.",
    ),
    recipe_on_cluster: bool = typer.Option(
        False,
        "--recipe-on-cluster",
        help="RECIPE is a path on the cluster's storage: not read here, validated there.",
    ),
    env: list[str] = typer.Option(
        [], "--env", help="Environment variable for the job, `KEY=VALUE` (repeatable)."
    ),
    pip: list[str] = typer.Option(
        [],
        "--pip",
        help="Extra pip requirement installed for the job "
        "(repeatable; Ray builds a virtualenv on the nodes).",
    ),
) -> None:
    """Send the recipe's run to a Ray cluster as a Ray job (Ray's Job Submission API).

    The job runs `python -m cluster run RECIPE` (= `raylm run`) on the head, connected to that
    cluster; its stages write to `run_dir` or `<cluster.storage>/<name>`, which must be storage every
    node sees.

    Examples:

        raylm submit pipelines/recipes/quickstart.yaml --address http://HEAD:8265 \\
            --set cluster.storage=s3://my-bucket/raylm --wait
        raylm submit my.yaml --address http://127.0.0.1:8265 --set run_dir=/mnt/shared/runs/my --code image
        raylm submit /mnt/shared/recipes/my.yaml --recipe-on-cluster --address http://HEAD:8265
        raylm submit my.yaml --address http://HEAD:8265 --code s3://my-bucket/raylm-code.zip
    """
    from cluster.jobs import JobsError, follow, package_run
    from cluster.jobs import submit as submit_job

    env_vars = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(ValueError(f"--env {item!r}: expected KEY=VALUE"))
        env_vars[key] = value
    if not recipe_on_cluster:
        _load(recipe, set_)  # a bad recipe fails here, with file, line and key, before anything is sent
    client = _client(address)
    try:
        package = package_run(
            recipe,
            set_,
            code=code,
            recipe_on_cluster=recipe_on_cluster,
            force=force,
            env_vars=env_vars,
            pip=pip,
        )
        job_id = submit_job(client, package)
    except JobsError as exc:
        _fail(exc)
    console.print(f"submitted job [bold]{job_id}[/]" + (f" -> {package.run_dir}" if package.run_dir else ""))
    if not wait:
        console.print(f"follow it: raylm logs {job_id} --address {address} --follow")
        return
    try:
        info = follow(client, job_id, _write)
    except JobsError as exc:
        _fail(exc)
    _report_end(info)
    if str(info.status) != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
def jobs(
    address: str = _address_option(),
    all_jobs: bool = typer.Option(False, "--all", help="Also list jobs not submitted by raylm."),
) -> None:
    """List the cluster's raylm jobs, newest first: id, status, recipe, run folder, start, duration.

    Example:

        raylm jobs --address http://HEAD:8265
    """
    from cluster.jobs import list_jobs, recipe_of, run_dir_of

    rows = list_jobs(_client(address), all_jobs=all_jobs)
    if not rows:
        console.print("no raylm jobs on this cluster" + ("" if all_jobs else " (`--all` lists every job)"))
        return
    table = Table(title=f"jobs on {address}")
    for col in ("job", "status", "recipe", "run folder", "started", "took s", "message"):
        table.add_column(col, overflow="fold")
    for j in rows:
        started = (
            datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if j.start_time else "-"
        )
        took = f"{(j.end_time - j.start_time) / 1000:.1f}" if j.end_time and j.start_time else "-"
        table.add_row(
            j.submission_id,
            str(j.status),
            recipe_of(j),
            run_dir_of(j),
            started,
            took,
            (j.message or "").strip().splitlines()[0][:80] if j.message else "",
        )
    console.print(table)


@app.command()
def logs(
    job_id: str = typer.Argument(..., help="Submission id, as `raylm submit` or `raylm jobs` print it."),
    address: str = _address_option(),
    follow_: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the job ends."),
) -> None:
    """Print a job's logs (its driver's stdout and stderr); with `--follow`, stream them until it ends,
    then print its final status and, if it failed, Ray's error message. Exit 1 unless it SUCCEEDED.

    Examples:

        raylm logs raylm-quickstart-20260101-120000-a1b2c3 --address http://HEAD:8265
        raylm logs raylm-quickstart-20260101-120000-a1b2c3 --address http://HEAD:8265 --follow
    """
    from cluster.jobs import JobsError, follow, job_info
    from cluster.jobs import logs as job_logs

    client = _client(address)
    try:
        if follow_:
            info = follow(client, job_id, _write)
        else:
            _write(job_logs(client, job_id))
            info = job_info(client, job_id)
    except JobsError as exc:
        _fail(exc)
    _report_end(info)
    if info.status.is_terminal() and str(info.status) != "SUCCEEDED":
        raise typer.Exit(1)


@app.command()
def stop(
    job_id: str = typer.Argument(..., help="Submission id of the job to stop."),
    address: str = _address_option(),
) -> None:
    """Stop a running job (Ray sends its driver SIGTERM, then SIGKILL); a finished job is left as is.

    Example:

        raylm stop raylm-quickstart-20260101-120000-a1b2c3 --address http://HEAD:8265
    """
    from cluster.jobs import JobsError
    from cluster.jobs import stop as stop_job

    try:
        info = stop_job(_client(address), job_id)
    except JobsError as exc:
        _fail(exc)
    console.print(f"job {job_id}: {info.status}")


@app.command("pack-code")
def pack_code(out: Path = typer.Argument(..., help="The zip to write, e.g. raylm-code.zip.")) -> None:
    """Write raylm's code (`cluster/`, `pipelines/`, `serving/`) as one zip for `raylm submit --code URI`:
    copy it to storage the cluster reads, then submit with its URI.

    Example:

        raylm pack-code raylm-code.zip && aws s3 cp raylm-code.zip s3://my-bucket/raylm-code.zip
        raylm submit my.yaml --address http://HEAD:8265 --code s3://my-bucket/raylm-code.zip
    """
    from cluster.jobs import write_code_zip

    path = write_code_zip(out)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
