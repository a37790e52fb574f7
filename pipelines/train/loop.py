"""What each Ray Train worker runs: DeepSpeed over a transformers model, fed by its Ray Data shard.

The same function runs on CPU workers (DeepSpeed's CPU accelerator, gloo) and on GPU workers (CUDA,
NCCL): DeepSpeed picks its accelerator from the hardware, and the process group Ray Train already set up
is reused by `deepspeed.init_distributed`. A checkpoint is every worker's `engine.save_checkpoint` files
merged by Ray Train into one `ray.train.Checkpoint`; a restarted or re-run worker group loads the latest
one (`ray.train.get_checkpoint()`) and continues from its step.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.hardware import cpu_has_native_bf16

STATE_TAG = "state"
HF_EXPORT = "hf_model"
CLIENT_STATE = "raylm_state"


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """bf16 where the hardware computes it natively (GPUs with bf16, CPUs with AVX512-BF16 or AMX), else
    fp32. Emulated bf16 matmuls on an AVX2-only CPU run two orders of magnitude slower than fp32."""
    import torch

    if precision != "bf16":
        return precision
    if on_gpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _memory_gb(on_gpu: bool) -> tuple[float, float]:
    """(current, peak) memory of this worker in GiB: GPU memory allocated, or the process's RSS."""
    if on_gpu:
        import torch

        return torch.cuda.memory_allocated() / 2**30, torch.cuda.max_memory_allocated() / 2**30
    import psutil

    rss = psutil.Process().memory_info().rss / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return rss, max(peak, rss)


def _pretrain_config(config: dict[str, Any]):
    from pipelines.train.config import PretrainConfig

    return PretrainConfig.model_validate(config["pretrain"])


def _rank0_timer(rank: int, op: str, tags: dict[str, str]):
    """Checkpoint save/load time into raylm's `checkpoint_seconds` histogram, once per step (rank 0)."""
    from pipelines import metrics

    return metrics.timed("checkpoint_seconds", op=op, **tags) if rank == 0 else contextlib.nullcontext()


@dataclass
class Worker:
    """What a training worker knows about itself once its process group is up."""

    rank: int
    world: int
    local_rank: int
    on_gpu: bool
    device: Any


# A training record's key -> the raylm Ray metric it sets (pipelines/metrics.py); keys a loop does not
# record (MFU in fine-tuning, reward outside RLHF) are skipped.
TRAIN_GAUGES = {
    "loss": "train_loss",
    "tokens_per_s": "train_tokens_per_second",
    "mfu": "train_mfu",
    "margin": "train_margin",
    "accuracy": "train_accuracy",
    "reward": "train_reward",
    "kl": "train_kl",
}


class RecordSender:
    """The `send(record)` of every raylm training loop: rank 0 puts each record into the driver's sink
    (progress bar, metrics.jsonl) and sets the Ray metrics of train records beside Ray's own (dashboard,
    Prometheus); other ranks send nothing.

    Rank 0 also keeps the records sent since the last checkpoint (`tail`), which the loop saves in the
    checkpoint's client state. The driver drains the sink once a second, so a driver killed just after a
    checkpoint would lose the last steps before it from the loss curve (the resume starts after them and
    never redoes them); a resumed loop `replay`s them from the checkpoint instead."""

    def __init__(self, rank: int, sink, tags: dict[str, str]):
        self.rank, self.sink, self.tags = rank, sink, tags
        self.tail: list[dict[str, Any]] = []

    def __call__(self, record: dict[str, Any]) -> None:
        from pipelines import metrics

        if self.rank != 0:
            return
        if self.sink is not None:
            self.sink.put.remote(record)
        if record.get("kind") == "final":
            return
        self.tail.append(record)
        if record.get("kind") == "train":
            for key, gauge in TRAIN_GAUGES.items():
                if record.get(key) is not None:
                    metrics.set_gauge(gauge, record[key], **self.tags)

    def saved(self) -> None:
        """The records so far are in a registered checkpoint: the next one carries only newer ones."""
        self.tail = []

    def replay(self, records: list[dict[str, Any]] | None) -> None:
        """Send again the records a checkpoint carried (the driver's log de-duplicates them by step)."""
        if self.rank != 0 or self.sink is None:
            return
        for record in records or []:
            self.sink.put.remote(record)


# the key of the records since the previous checkpoint in a checkpoint's client state
TAIL_STATE = "raylm_records"


def start_worker(config: dict[str, Any], cpus_per_worker: float) -> Worker:
    """The start shared by every raylm training loop (pretraining, fine-tuning): DeepSpeed's accelerator
    and JIT folder, the device (or torch's thread count on CPU), then DeepSpeed's process group over Ray
    Train's (NCCL on GPUs, gloo on CPUs)."""
    import ray.train

    ctx = ray.train.get_context()
    on_gpu = bool(config["on_gpu"])
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", config["torch_extensions_dir"])
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch

    device = ray.train.torch.get_device()
    if on_gpu:
        torch.cuda.set_device(device)  # DeepSpeed places the model on the current device
        os.environ.setdefault("LOCAL_RANK", str(ctx.get_local_rank()))
    else:
        torch.set_num_threads(max(1, int(cpus_per_worker)))
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), on_gpu, device)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function; `config` is what `pipelines.train.stage` builds."""
    import ray.train

    cfg = _pretrain_config(config)
    worker = start_worker(config, cfg.cpus_per_worker)
    rank, world, on_gpu, device = worker.rank, worker.world, worker.on_gpu, worker.device
    import deepspeed
    import numpy as np
    import torch
    import torch.distributed as dist

    from pipelines import metrics
    from pipelines.allocator import loaded_allocator
    from pipelines.models import ModelConfig, Vocab, build_model
    from pipelines.train.checkpoint_integrity import verify_checksums, write_checksums
    from pipelines.train.ds_config import deepspeed_config, make_optimizer, make_scheduler
    from pipelines.train.flops import matmul_peak
    from pipelines.train.objectives import ObjectiveSpec, forward_loss, prepare_batch
    from pipelines.train.token_data import rows_to_numpy

    model_cfg = ModelConfig.model_validate(config["model"])
    spec = ObjectiveSpec(**config["spec"])
    vocab = Vocab(**config["vocab"])
    memory_base_gb, _ = _memory_gb(on_gpu)  # libraries loaded, no model yet: what the model adds is above
    precision = resolve_precision(cfg.precision, on_gpu)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    ds_config = deepspeed_config(cfg.model_copy(update={"precision": precision}), world, on_gpu)
    torch.manual_seed(config["seed"])
    hf_ds_config = None
    if cfg.zero_stage == 3:
        # transformers' from_config builds the model under deepspeed.zero.Init (partitioned as it is
        # created) and initialises the weights gathered, while this object lives
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)
    if config.get("init_from"):
        # continued pretraining: the folder's weights (under ZeRO-3, loaded partitioned like from_config)
        from pipelines.models.config import hf_auto_class

        model = hf_auto_class(model_cfg.family).from_pretrained(
            config["init_from"], dtype=torch.float32, attn_implementation=model_cfg.attn_implementation
        )
        model.config.use_cache = False
    else:
        model = build_model(model_cfg, vocab)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = make_optimizer(model, cfg, on_gpu)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lambda opt: make_scheduler(opt, cfg), config=ds_config
    )

    # ---- resume
    state = {"step": 0, "tokens": 0, "micro_batches": 0, "train_s": 0.0}
    tags = {"run": str(config.get("run", "")), "phase": str(config.get("phase", "pretrain"))}
    checkpoint, carried = ray.train.get_checkpoint(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as d, _rank0_timer(rank, "load", tags):
            verify_checksums(d, rank, world)  # a damaged checkpoint is refused, never half-loaded
            _, client = engine.load_checkpoint(d, tag=STATE_TAG)
        state.update((client or {}).get(CLIENT_STATE, {}))
        carried = (client or {}).get(TAIL_STATE)
    start_step = state["step"]
    if rank == 0 and checkpoint is not None:
        print(f"[raylm] resumed from checkpoint at step {start_step}", flush=True)

    # ---- the matmul peak this worker group can reach (MFU's denominator)
    peak = torch.tensor(
        [matmul_peak(precision, str(device) if on_gpu else "cpu")], dtype=torch.float64, device=device
    )
    dist.all_reduce(peak)
    peak_total = float(peak.item())
    flops_per_step = config["train_flops_per_sequence"] * cfg.global_batch

    # ---- data: this worker's streaming shard; held-out rows read once and kept
    rng = np.random.default_rng([config["seed"], rank, start_step])
    train_shard = ray.train.get_dataset_shard("train")
    batches_per_epoch = max(1, config["train_rows"] // world // cfg.micro_batch_size)

    def train_batches():
        epoch = state["micro_batches"] // batches_per_epoch
        skip = state["micro_batches"] % batches_per_epoch
        while True:
            it = train_shard.iter_batches(
                batch_size=cfg.micro_batch_size,
                batch_format="pyarrow",
                drop_last=True,
                prefetch_batches=2,
                local_shuffle_buffer_size=cfg.shuffle_buffer_rows or None,
                local_shuffle_seed=(config["seed"] * 1000 + epoch) if cfg.shuffle_buffer_rows else None,
            )
            got = 0
            for table in it:
                got += 1
                if skip:
                    skip -= 1
                    continue
                yield epoch, rows_to_numpy(table)
            if got == 0:
                raise RuntimeError("the training shard yielded no batch of micro_batch_size rows")
            epoch += 1

    heldout: list[dict[str, Any]] = []
    heldout_shard = ray.train.get_dataset_shard("heldout") if config["heldout_rows"] else None

    def evaluate() -> tuple[float, float]:
        if heldout_shard is not None and not heldout:
            eval_rng = np.random.default_rng([config["seed"], rank, 10**6])  # same masks at every eval
            for table in heldout_shard.iter_batches(batch_size=cfg.micro_batch_size, batch_format="pyarrow"):
                heldout.append(prepare_batch(spec, rows_to_numpy(table), eval_rng))
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        engine.eval()
        with torch.no_grad():
            for b in heldout:
                loss, n = forward_loss(spec, engine, b, device, dtype)
                sums[0] += loss.detach().double() * n
                sums[1] += n
        engine.train()
        dist.all_reduce(sums)
        mean = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
        return mean, math.exp(min(mean, 50.0))

    send = RecordSender(rank, config.get("sink"), tags)

    def save(report: dict[str, Any], final: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="raylm-ckpt-") as d:
            with _rank0_timer(rank, "save", tags):
                client = {CLIENT_STATE: dict(state), TAIL_STATE: send.tail}
                engine.save_checkpoint(d, tag=STATE_TAG, client_state=client)
            if final:
                export_hf(engine, model_cfg, Path(d) / HF_EXPORT, rank, cfg.zero_stage)
            write_checksums(d, rank, world, step=state["step"])
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))
        send.saved()

    send.replay(carried)
    if checkpoint is not None:  # a restart or re-run: marked in the log, so the loss curve shows where
        send({"kind": "resume", "step": start_step, "at": time.time()})

    # ---- train
    step = start_step
    t_attempt = time.perf_counter()
    train_s_before = state["train_s"]
    acc = torch.zeros(3, dtype=torch.float64, device=device)  # loss x tokens, predicted tokens, real tokens
    micro = 0
    t_step = time.perf_counter()
    stop_reason = "max_steps" if step < cfg.max_steps else "already at max_steps"
    last: dict[str, Any] = {}
    if step < cfg.max_steps:
        for epoch, rows in train_batches():
            batch = prepare_batch(spec, rows, rng)
            loss, n = forward_loss(spec, engine, batch, device, dtype)
            engine.backward(loss)
            engine.step()
            acc[0] += loss.detach().double() * n  # kept on the device: no host sync per micro-batch
            acc[1] += n
            acc[2] += batch["tokens"]
            micro += 1
            state["micro_batches"] += 1
            if micro < cfg.grad_accum_steps:
                continue
            micro = 0
            step += 1
            now = time.perf_counter()
            sync = torch.cat([acc, torch.tensor([now - t_attempt], dtype=torch.float64, device=device)])
            dist.all_reduce(sync)
            step_time = now - t_step
            t_step = now
            loss_mean = float(sync[0] / max(sync[1], 1))
            tokens = int(sync[2])
            attempt_s = float(sync[3]) / world  # the same number on every rank: stop decisions agree
            state.update(step=step, tokens=state["tokens"] + tokens, train_s=train_s_before + attempt_s)
            if rank == 0:
                metrics.inc("train_steps", 1, **tags)
            acc.zero_()
            mem_now, mem_peak = _memory_gb(on_gpu)
            grad_norm = engine.get_global_grad_norm()
            last = {
                "step": step,
                "epoch": epoch,
                "loss": loss_mean,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens": tokens,
                "tokens_seen": state["tokens"],
                "step_time_s": step_time,
                "tokens_per_s": tokens / step_time,
                "mfu": flops_per_step / step_time / peak_total,
                "memory_gb": mem_now,
                "elapsed_s": state["train_s"],
            }
            done = step >= cfg.max_steps
            if cfg.time_budget_s and attempt_s >= cfg.time_budget_s and not done:
                done, stop_reason = True, "time_budget_s"
            if step % cfg.log_every == 0 or done:
                send({"kind": "train", **last})
            if step % cfg.eval_interval == 0 or done:
                h_loss, h_ppl = evaluate()
                last.update(heldout_loss=h_loss, heldout_ppl=h_ppl)
                send({"kind": "eval", "step": step, "heldout_loss": h_loss, "heldout_ppl": h_ppl})
            if step % cfg.checkpoint_interval == 0 and not done:
                save({"step": step, "loss": loss_mean}, final=False)
            if done:
                break
            t_step = time.perf_counter()  # evaluation and checkpoint time is not step time
    else:
        h_loss, h_ppl = evaluate()
        last = {"step": step, "heldout_loss": h_loss, "heldout_ppl": h_ppl}

    # ---- the end: memory of every worker, the final checkpoint with the exported model
    _, peak_gb = _memory_gb(on_gpu)
    memory: list[Any] = [None] * world
    dist.all_gather_object(memory, (peak_gb, memory_base_gb, loaded_allocator()))
    final = {
        **last,
        "stop_reason": stop_reason,
        "start_step": start_step,
        "world_size": world,
        "precision": precision,
        "peak_flops": peak_total,
        "memory_peak_gb_per_worker": [m[0] for m in memory],
        "memory_base_gb_per_worker": [m[1] for m in memory],
        "allocator_per_worker": [m[2] for m in memory],
        "deepspeed_config": ds_config,
    }
    send({"kind": "final", **final})
    save(final, final=True)
    del hf_ds_config


def export_hf(engine, model_cfg, out: Path, rank: int, zero_stage: int) -> None:
    """The trained model as a Hugging Face folder (config + safetensors), written by rank 0. Under ZeRO-3
    the partitioned weights are gathered first (a collective: every rank calls this)."""
    module = engine.module
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    if rank != 0:
        return
    module.config.use_cache = True  # for generation and serving
    module.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
