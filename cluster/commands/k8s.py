"""`raylm k8s`: KubeRay manifests (RayCluster, RayJob, RayService) from a recipe (see cluster/k8s.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli import SET_HELP, _load, app, err_console


@app.command()
def k8s(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    kind: str = typer.Option(
        "rayjob",
        "--kind",
        help="`raycluster` (autoscaling cluster), `rayjob` (runs "
        "the "
        "recipe, deletes its cluster after) or `rayservice` (serves a model).",
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    image: str = typer.Option(
        "raylm/raylm-cpu:0.1.0",
        "--image",
        help="Image of the head and CPU workers (infra/docker/Dockerfile.cpu).",
    ),
    gpu_image: str = typer.Option(
        "raylm/raylm-gpu:0.1.0", "--gpu-image", help="Image of the GPU workers (infra/docker/Dockerfile.gpu)."
    ),
    cpu_max: int = typer.Option(10, "--cpu-workers-max", min=0, help="Most CPU worker pods."),
    gpu_max: int = typer.Option(4, "--gpu-workers-max", min=0, help="Most GPU worker pods."),
    gpus: int = typer.Option(1, "--gpus-per-worker", min=1, help="GPUs per GPU worker pod."),
    model: str = typer.Option(
        None, "--model", help="rayservice: the model folder to serve (s3://, gs:// or a shared path)."
    ),
    namespace: str = typer.Option(None, "--namespace", "-n", help="Kubernetes namespace of the resources."),
    out: Path = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
    check: Path = typer.Option(
        None,
        "--check",
        help="Folder of KubeRay CRD files (ray.io_rayclusters.yaml, "
        "...): "
        "validate the manifests against their schemas before writing.",
    ),
) -> None:
    """Print KubeRay manifests for the recipe, ready for `kubectl apply -f -`.

    Examples:

        raylm k8s my.yaml --kind rayjob --set cluster.storage=s3://my-bucket/raylm | kubectl apply -f -
        raylm k8s my.yaml --kind raycluster --image registry.example.com/raylm-cpu:0.1.0 -o cluster.yaml
        raylm k8s my.yaml --kind rayservice --model s3://my-bucket/raylm/my/compress
    """
    from cluster.jobs import JobsError
    from cluster.k8s import ManifestError, dump, manifests, validate_manifest

    cfg = _load(recipe, set_)
    try:
        docs = manifests(
            kind,
            cfg,
            recipe.read_text(encoding="utf-8"),
            set_,
            namespace,
            model,
            image=image,
            gpu_image=gpu_image,
            cpu_max=cpu_max,
            gpu_max=gpu_max,
            gpus_per_worker=gpus,
        )
        if check:
            for doc in docs:
                validate_manifest(doc, check)
    except (ManifestError, JobsError) as exc:
        err_console.print(f"[bold red]{exc}[/]")
        raise typer.Exit(2) from None
    text = dump(docs)
    if out:
        out.write_text(text)
        err_console.print(f"wrote {out}")
    else:
        print(text, end="")
