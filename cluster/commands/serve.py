"""`raylm serve RECIPE`: serve the recipe's models through an OpenAI-compatible API (Ray Serve + vLLM)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import typer
from rich.table import Table

from cluster.cli import SET_HELP, _load, app, console, err_console


def _plan_tables(app_plan) -> None:
    from serving.app import engine_kwargs

    for name, plan in app_plan.plans.items():
        spec = app_plan.specs[name]
        table = Table(
            title=f"serve plan: {name} ({spec.architecture}, {spec.num_layers} layers, "
            f"{spec.num_kv_heads} KV heads x {spec.head_dim}, {spec.checkpoint_dtype}"
            f"{', ' + spec.quantization if spec.quantization else ''})"
        )
        for col in ("quantity", "value", "why"):
            table.add_column(col, overflow="fold")
        for row in plan.rows():
            table.add_row(*row)
        console.print(table)
        for reason in plan.reasons[1:] + app_plan.notes.get(name, []):
            console.print(f"  - {reason}")
        model = next(m for m in app_plan.config.models if m.name == name)
        console.print(f"  vLLM engine args: {json.dumps(engine_kwargs(model, plan))}")


@app.command()
def serve(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a `serve` section."),
    plan_only: bool = typer.Option(False, "--plan", help="Print the memory plan as a table; start nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --plan: print the plan as JSON."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    address: str = typer.Option(
        None,
        "--address",
        help="Deploy to this running Ray cluster instead of "
        "an embedded local Ray (e.g. `auto` or `ray://head:10001`).",
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="With --address: leave the app running on the cluster and return once it is ready.",
    ),
) -> None:
    """Serve the recipe's models: OpenAI-compatible `/v1/models`, `/v1/completions` and
    `/v1/chat/completions` (streaming and not) from Ray Serve over vLLM, with bearer auth when
    `serve.api_keys` (or `$RAYLM_API_KEYS`) is set, LoRA adapters as `<model>:<adapter>`, and metrics on
    Ray's metrics endpoint. Prints the URL, the models and an example curl; Ctrl-C shuts down cleanly.

    The memory planner runs first: a configuration that cannot fit is refused before anything starts.

    Examples:

        raylm serve pipelines/recipes/quickstart.yaml
        raylm serve pipelines/recipes/quickstart.yaml --plan
        raylm serve my.yaml --set serve.port=8080 --set serve.models.0.targets.concurrent_sequences=32
        RAYLM_API_KEYS=sk-mine raylm serve my.yaml
        raylm serve my.yaml --address auto --detach
    """
    from cluster.runtime import ray_session, resolve_address
    from serving.app import plan_app, plan_summary, start_app, stop_app
    from serving.planner import PlanError
    from serving.stage import describe, wait_for_interrupt

    cfg = _load(recipe, set_)
    if cfg.serve is None:
        err_console.print(f"[red]{recipe}: the recipe has no `serve` section[/]")
        raise typer.Exit(2)
    from cluster.stages.serve import with_run_paths
    from pipelines.run_folder import RunFolder

    cfg = with_run_paths(cfg, RunFolder(cfg.resolved_run_dir()))  # `run:finetune/merged` -> this run's folder
    scfg = cfg.serve
    address = resolve_address(address or cfg.cluster.address)

    def plan_or_exit():
        try:
            return plan_app(scfg)
        except PlanError as exc:
            for line in str(exc).splitlines():
                err_console.print(f"[bold red]refused:[/] {line}")
            raise typer.Exit(2) from None

    if plan_only:
        app_plan = plan_or_exit()
        if as_json:
            print(json.dumps(plan_summary(app_plan), indent=2, default=str))
        else:
            _plan_tables(app_plan)
        return

    # An embedded Ray is planned for before it starts; a remote cluster is asked about its GPUs first.
    app_plan = None if address else plan_or_exit()
    # SIGTERM (e.g. `kill`, a container stop) shuts down as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    c = cfg.cluster
    with ray_session(
        address,
        c.num_cpus,
        c.object_store_memory_gb,
        c.dashboard,
        c.dashboard_host,
        c.dashboard_port,
        c.namespace,
        c.serve_ingress,
        c.arrow_memory_pool,
    ):
        from ray import serve as ray_serve

        from serving.metrics import metrics_urls

        if app_plan is None:
            app_plan = plan_or_exit()
        try:
            running = start_app(app_plan, log=console.print)
        except (RuntimeError, TimeoutError) as exc:
            err_console.print(f"[bold red]{exc}[/]")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stop_app(scfg)
            err_console.print("interrupted during start-up: app removed")
            raise typer.Exit(130) from None
        for line in describe(running, metrics_urls()):
            console.print(line, highlight=False, soft_wrap=True)
        if address and detach:
            console.print(
                f"detached: the app keeps running on the cluster (remove it with "
                f"`serve shutdown` or `ray.serve.delete('{scfg.app_name}')`)"
            )
            return
        wait_for_interrupt(console.print)
        stop_app(scfg)
        if not address:
            ray_serve.shutdown()
        console.print("stopped")
