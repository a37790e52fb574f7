"""KubeRay manifests generated from a recipe (`raylm k8s`): a `RayCluster` with autoscaling, a `RayJob`
that runs the recipe on a cluster of its own and deletes it after, and a `RayService` serving the model
with zero-downtime upgrades.

All three share one cluster shape, the same as the cloud launcher YAMLs (cluster/launcher/): a head that
runs no Ray work, an autoscaling CPU group (Ray Data) and an autoscaling GPU group (Ray Train, Ray Serve),
token authentication on (KubeRay creates the token Secret: `authOptions.mode: token`) and Ray's metrics
on port 8080 for Prometheus. `validate_manifest` checks a manifest against the KubeRay CRDs' OpenAPI
schemas with unknown fields refused, as the API server does with strict field validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cluster.config import Recipe

API_VERSION = "ray.io/v1"
RAY_VERSION = "2.60.0"
CPU_IMAGE = "raylm/raylm-cpu:0.1.0"
GPU_IMAGE = "raylm/raylm-gpu:0.1.0"
KINDS = ("raycluster", "rayjob", "rayservice")
RECIPE_MOUNT = "/home/ray/raylm-job"
_CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
              "RayService": "ray.io_rayservices.yaml"}


class ManifestError(ValueError):
    """A manifest that KubeRay would refuse; the message names each problem with its field path."""


def k8s_name(name: str) -> str:
    """A recipe name as a Kubernetes object name (RFC 1123 label: lowercase, digits, '-'; <= 40 chars so
    that KubeRay's derived names such as `<name>-head-svc` stay within limits)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-")
    if not cleaned:
        raise ManifestError(f"recipe name {name!r} has no letters or digits for a Kubernetes name")
    return cleaned


# --------------------------------------------------------------------------------------------------
# The cluster shape


def _container(name: str, image: str, cpu: str, memory: str, gpus: int = 0, mounts: list | None = None,
               ports: list | None = None) -> dict:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": dict(limits), "limits": limits},
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
    }
    if ports:
        c["ports"] = ports
    if mounts:
        c["volumeMounts"] = mounts
    return c


def cluster_spec(image: str = CPU_IMAGE, gpu_image: str = GPU_IMAGE, cpu_max: int = 10, gpu_max: int = 4,
                 gpus_per_worker: int = 1, idle_timeout_s: int = 600,
                 recipe_configmap: str | None = None) -> dict:
    """A RayCluster spec: autoscaling on, token auth on, CPU and GPU worker groups scaling from zero."""
    head_ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": 8000, "name": "serve"},
        {"containerPort": 8080, "name": "metrics"},
    ]
    mounts, volumes = None, None
    if recipe_configmap:
        mounts = [{"name": "recipe", "mountPath": RECIPE_MOUNT, "readOnly": True}]
        volumes = [{"name": "recipe", "configMap": {"name": recipe_configmap}}]
    head_pod: dict[str, Any] = {"containers": [_container("ray-head", image, "4", "16Gi", mounts=mounts,
                                                           ports=head_ports)]}
    if volumes:
        head_pod["volumes"] = volumes
    worker_ports = [{"containerPort": 8080, "name": "metrics"}]
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": idle_timeout_s},
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            # num-cpus 0: no Ray work on the head; the dashboard listens inside the pod network only,
            # behind token auth (reach it with `kubectl port-forward`).
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0", "metrics-export-port": "8080"},
            "template": {"spec": head_pod},
        },
        "workerGroupSpecs": [
            {
                "groupName": "cpu-workers",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": cpu_max,
                "rayStartParams": {"metrics-export-port": "8080"},
                "template": {"spec": {"containers": [
                    _container("ray-worker", image, "8", "32Gi", ports=worker_ports)]}},
            },
            {
                "groupName": "gpu-workers",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": gpu_max,
                "rayStartParams": {"metrics-export-port": "8080"},
                "template": {"spec": {
                    "containers": [_container("ray-worker", gpu_image, "8", "64Gi", gpus=gpus_per_worker,
                                              ports=worker_ports)],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                }},
            },
        ],
    }


def _meta(name: str, namespace: str | None) -> dict:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "raylm"}}
    if namespace:
        meta["namespace"] = namespace
    return meta


# --------------------------------------------------------------------------------------------------
# The three resources


def raycluster(cfg: Recipe, namespace: str | None = None, **shape) -> list[dict]:
    name = k8s_name(cfg.name)
    return [{"apiVersion": API_VERSION, "kind": "RayCluster", "metadata": _meta(name, namespace),
             "spec": cluster_spec(**shape)}]


def rayjob(cfg: Recipe, recipe_text: str, overrides: list[str] | tuple[str, ...] = (),
           namespace: str | None = None, ttl_s: int = 300, **shape) -> list[dict]:
    """A ConfigMap holding the recipe, and a RayJob that brings up its own cluster (the recipe mounted
    on the head), runs `raylm run` there and deletes the cluster when the job ends."""
    import shlex

    from cluster.jobs import cluster_run_dir

    name = k8s_name(cfg.name)
    run_dir = cluster_run_dir(cfg)
    args = ["run", f"{RECIPE_MOUNT}/recipe.yaml",
            *[a for o in [*overrides, f"run_dir={run_dir}", "cluster.address=null"] for a in ("--set", o)]]
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{name}-recipe", namespace),
                 "data": {"recipe.yaml": recipe_text}}
    job = {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _meta(name, namespace),
        "spec": {
            "entrypoint": "python -m cluster " + " ".join(shlex.quote(a) for a in args),
            "runtimeEnvYAML": yaml.safe_dump({"env_vars": {"PYTHONUNBUFFERED": "1", "COLUMNS": "240"}}),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ttl_s,
            "backoffLimit": 0,
            "submissionMode": "K8sJobMode",
            "metadata": {"raylm.recipe": cfg.name, "raylm.run_dir": run_dir},
            "rayClusterSpec": cluster_spec(recipe_configmap=f"{name}-recipe", **shape),
        },
    }
    return [configmap, job]


def serve_config(cfg: Recipe, model: str, model_id: str | None = None, gpus: int = 1,
                 max_replicas: int = 4) -> dict:
    """Ray Serve config (`serveConfigV2`): raylm's own serving app (`serving.app:app_builder`: the app
    `raylm serve` runs, with auth from `$RAYLM_API_KEYS`, the KV memory planner and raylm's metrics) over
    vLLM, with the recipe's `serve` section when it has one (its first model's path replaced by `model`),
    autoscaling from one replica."""
    if cfg.serve is not None and cfg.serve.models:
        serve = cfg.serve.model_dump(mode="json", exclude_defaults=True)
        serve["models"][0]["path"] = model
        if model_id:
            serve["models"][0]["name"] = model_id
    else:
        serve = {"models": [{
            "name": model_id or cfg.name,
            "path": model,
            "device": "gpu" if gpus else "cpu",
            "autoscaling": {"min_replicas": 1, "max_replicas": max_replicas, "target_ongoing_requests": 16},
            "engine_args": {"tensor_parallel_size": gpus} if gpus > 1 else {},
        }]}
    serve.pop("api_keys", None)  # never in a manifest: the pod's $RAYLM_API_KEYS (a Secret) holds them
    return {"applications": [{
        "name": "llm",
        "route_prefix": "/",
        "import_path": "serving.app:app_builder",
        "args": {"serve": serve},
    }]}


def rayservice(cfg: Recipe, model: str, namespace: str | None = None, model_id: str | None = None,
               **shape) -> list[dict]:
    """A RayService: the serving app on an autoscaling cluster. An update of the Serve config is applied
    in place; an update of the cluster (image, shape) brings up a new cluster, moves traffic once it is
    ready and then deletes the old one (`upgradeStrategy: NewCluster`): no downtime either way."""
    name = k8s_name(cfg.name)
    spec = cluster_spec(**shape)
    if cfg.cluster.serve_ingress == "haproxy":
        # Serve's processes read the switches at start-up: every pod gets them (serving/ingress.py).
        # HAProxy's stats/metrics ports stay Ray's defaults, reachable only inside the pod network.
        from serving.ingress import THROUGHPUT_ENV

        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        for container in (c for g in groups for c in g["template"]["spec"]["containers"]):
            container["env"] += [{"name": k, "value": v} for k, v in THROUGHPUT_ENV.items()]
    return [{
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _meta(name, namespace),
        "spec": {
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": yaml.safe_dump(serve_config(cfg, model, model_id), sort_keys=False),
            "rayClusterConfig": spec,
        },
    }]


def manifests(kind: str, cfg: Recipe, recipe_text: str, overrides: list[str] | tuple[str, ...] = (),
              namespace: str | None = None, model: str | None = None, **shape) -> list[dict]:
    from pipelines.allocator import arrow_pool_env

    # Arrow's memory pool is chosen when a process first allocates: every pod's Ray processes get it
    docs = _manifests(kind, cfg, recipe_text, overrides, namespace, model, **shape)
    try:
        env = arrow_pool_env(cfg.cluster.arrow_memory_pool)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    for container in _containers(docs):
        container["env"] += [{"name": k, "value": v} for k, v in env.items()]  # no shared YAML anchors
    return docs


def _containers(node: Any) -> Iterator[dict]:
    """Every container spec in a manifest tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "containers":
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _manifests(kind: str, cfg: Recipe, recipe_text: str, overrides: list[str] | tuple[str, ...] = (),
               namespace: str | None = None, model: str | None = None, **shape) -> list[dict]:
    if kind == "raycluster":
        return raycluster(cfg, namespace, **shape)
    if kind == "rayjob":
        return rayjob(cfg, recipe_text, overrides, namespace, **shape)
    if kind == "rayservice":
        if not model:
            raise ManifestError("--kind rayservice needs --model: the model folder to serve, on storage the "
                                "cluster reads (s3://..., gs://..., or a shared path)")
        return rayservice(cfg, model, namespace, **shape)
    raise ManifestError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")


def dump(docs: list[dict]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


# --------------------------------------------------------------------------------------------------
# Validation against the CRDs


def _strict(schema: Any) -> Any:
    """Refuse unknown fields, as the API server does with strict field validation: every object schema
    that lists its properties and does not preserve unknown fields gets `additionalProperties: false`."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schema(schema_dir: str, kind: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~1 MB each: libyaml when present
    crd = yaml.load((Path(schema_dir) / _CRD_FILES[kind]).read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == API_VERSION.split("/")[1])
    return _strict(version["schema"]["openAPIV3Schema"])


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def validate_manifest(doc: dict, schema_dir: str | Path) -> None:
    """Raise `ManifestError` unless `doc` is a valid KubeRay v1 resource (or a plain ConfigMap)."""
    import jsonschema

    problems: list[str] = []
    name = (doc.get("metadata") or {}).get("name", "")
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 63:
        problems.append(f"metadata.name: {name!r} is not a valid Kubernetes name")
    kind = doc.get("kind")
    if kind == "ConfigMap":
        data = doc.get("data") or {}
        if doc.get("apiVersion") != "v1" or not all(isinstance(v, str) for v in data.values()):
            problems.append("ConfigMap: apiVersion must be v1 and data values strings")
    elif kind in _CRD_FILES:
        if doc.get("apiVersion") != API_VERSION:
            problems.append(f"apiVersion: {doc.get('apiVersion')!r}, expected {API_VERSION}")
        validator = jsonschema.Draft7Validator(crd_schema(str(schema_dir), kind))
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in err.absolute_path) or "<root>"
            problems.append(f"{kind} {path}: {err.message[:300]}")
        if kind == "RayService":
            problems += _serve_config_problems(doc["spec"].get("serveConfigV2", ""))
    else:
        problems.append(f"kind {kind!r}: not a KubeRay resource")
    if problems:
        raise ManifestError("\n".join(problems))


def _serve_config_problems(text: str) -> list[str]:
    """`serveConfigV2` is a YAML string the CRD cannot look into: check it with Ray Serve's own schema."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError, TypeError) as exc:
        return [f"RayService spec.serveConfigV2: {str(exc)[:500]}"]
    return []

