"""The Ray Train worker of a pretraining run whose `pretrain.parallel` asks for pipeline or tensor
parallelism (`pipelines/train/stage.py` picks it; data parallel alone keeps `pipelines/train/loop.py`).

Data is sharded along dp only: the pipeline stages and tensor shards of one replica must see the same
micro-batches (the first stage reads the inputs, the last the labels; every tensor shard computes on the
same tokens). Every worker is given the whole (ordered) training stream and keeps the rows of its
data-parallel index: of each `micro_batch_size x dp` rows, replica d takes the d-th slice. Reading is
duplicated pp x tp times, which is cheap next to training; a Ray Data split per dp group is the
improvement when it is not.

What this path does not do yet (docs/parallel.md): resume from a mid-run checkpoint (a restarted group
trains from step 0), the held-out evaluation, ZeRO-2/3. The final checkpoint holds the exported
Hugging Face folder (`hf_model/`), as the data-parallel path's does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.train.loop import (
    HF_EXPORT,
    _memory_gb,
    _pretrain_config,
    record_sender,
    resolve_precision,
    start_worker,
)


def parallel_train_loop_per_worker(config: dict[str, Any]) -> None:
    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist

    from pipelines.models import ModelConfig, Vocab
    from pipelines.parallel.trainer import ParallelTrainer
    from pipelines.train.objectives import ObjectiveSpec, prepare_batch
    from pipelines.train.token_data import rows_to_numpy

    cfg = _pretrain_config(config)
    worker = start_worker(config, cfg.cpus_per_worker)
    rank, on_gpu = worker.rank, worker.on_gpu
    precision = resolve_precision(cfg.precision, on_gpu)
    cfg = cfg.model_copy(update={"precision": precision})
    layout = cfg.layout
    model_cfg = ModelConfig.model_validate(config["model"])
    spec = ObjectiveSpec(**config["spec"])
    trainer = ParallelTrainer(model_cfg, Vocab(**config["vocab"]), spec, cfg, layout, config["seed"], on_gpu)
    d, stage, t = layout.coords(rank)
    n_local = trainer.local_parameters()
    print(
        f"[raylm] rank {rank} ({layout.key}): data shard {d}, pipeline stage {stage}, tensor shard {t}: "
        f"{n_local:,} parameters",
        flush=True,
    )
    counts: list[Any] = [None] * layout.world
    dist.all_gather_object(counts, n_local)

    gas, mbs = cfg.grad_accum_steps, cfg.micro_batch_size
    shard = ray.train.get_dataset_shard("train")
    rng = np.random.default_rng([config["seed"], d])  # the same for every rank of a replica

    def micro_batches():
        while True:
            got = 0
            for table in shard.iter_batches(
                batch_size=mbs * layout.dp, batch_format="pyarrow", drop_last=True
            ):
                got += 1
                yield rows_to_numpy(table.slice(d * mbs, mbs))
            if got == 0:
                raise RuntimeError("the training stream yielded no batch of micro_batch_size x dp rows")

    tags = {"run": str(config.get("run", "")), "phase": str(config.get("phase", "pretrain"))}
    send = record_sender(rank, config.get("sink"), tags)  # the same records and metrics as the plain loop

    stream = micro_batches()
    tokens_seen, t_start, last = 0, time.perf_counter(), {}
    for step in range(1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        micro = [prepare_batch(spec, next(stream), rng) for _ in range(gas)]
        loss = trainer.step(micro)
        tok = torch.tensor([sum(b["tokens"] for b in micro)], dtype=torch.float64)
        dist.all_reduce(tok)
        tokens = int(tok.item()) // (layout.pp * layout.tp)  # each replica's tokens counted once
        tokens_seen += tokens
        step_time = time.perf_counter() - t0
        last = {
            "step": step,
            "epoch": 0,
            "loss": loss,
            "lr": trainer.scheduler.get_last_lr()[0],
            "tokens": tokens,
            "tokens_seen": tokens_seen,
            "step_time_s": step_time,
            "tokens_per_s": tokens / step_time,
            "memory_gb": _memory_gb(on_gpu)[0],
            "elapsed_s": time.perf_counter() - t_start,
        }
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            send({"kind": "train", **last})
        if cfg.time_budget_s and last["elapsed_s"] >= cfg.time_budget_s:
            break

    peaks: list[Any] = [None] * layout.world
    dist.all_gather_object(peaks, _memory_gb(on_gpu)[1])
    final = {
        **last,
        "stop_reason": "max_steps" if last.get("step") == cfg.max_steps else "time_budget_s",
        "start_step": 0,
        "world_size": layout.world,
        "layout": layout.key,
        "precision": precision,
        "parameters_per_worker": counts,
        "memory_peak_gb_per_worker": peaks,
        "deepspeed_config": trainer.ds_config,
    }
    send({"kind": "final", **final})
    with tempfile.TemporaryDirectory(prefix="raylm-ckpt-") as tmp:
        trainer.export_hf(Path(tmp) / HF_EXPORT)  # collective; rank 0 writes
        dist.barrier()
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report(final, checkpoint=checkpoint)
