"""The Ray Train worker of a pretraining run whose `pretrain.parallel` asks for pipeline or tensor
parallelism (`pipelines/train/stage.py` picks it; data parallel alone keeps `pipelines/train/loop.py`).

Data is sharded along dp only: the pipeline stages and tensor shards of one replica must see the same
micro-batches (the first stage reads the inputs, the last the labels; every tensor shard computes on the
same tokens). Every worker is given the whole (ordered) training stream and keeps the rows of its
data-parallel index: of each `micro_batch_size x dp` rows, replica d takes the d-th slice. Reading is
duplicated pp x tp times, which is cheap next to training; a Ray Data split per dp group is the
improvement when it is not.

Checkpoints are every `checkpoint_interval` steps and at the end, as in the plain loop: each rank's share
of the state (`ParallelTrainer.save_state`: DeepSpeed's per-stage files, or each tensor rank's shards),
merged by Ray Train; a restarted worker group or a longer re-run resumes under the same layout from the
latest, skipping the micro-batches already trained on. The final checkpoint also holds the exported
Hugging Face folder (`hf_model/`). What this path does not do yet (docs/parallel.md): the held-out
evaluation of pretraining, ZeRO-2/3.

`train_parallel` is the loop itself (steps, records, checkpoints, resume, the final export), shared with
supervised fine-tuning under the same layouts (`pipelines/parallel/sft_loop.py`), which brings its own
micro-batches and held-out evaluation.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.train.checkpoint_integrity import verify_checksums, write_checksums
from pipelines.train.loop import (
    HF_EXPORT,
    TAIL_STATE,
    RecordSender,
    _memory_gb,
    _pretrain_config,
    resolve_precision,
    start_worker,
)


def parallel_train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function of a pretraining run under a pipeline/tensor layout."""
    import numpy as np
    import ray.train

    from pipelines.models import ModelConfig, Vocab
    from pipelines.parallel.trainer import ParallelTrainer
    from pipelines.train.objectives import ObjectiveSpec, prepare_batch
    from pipelines.train.token_data import rows_to_numpy

    cfg = _pretrain_config(config)
    worker = start_worker(config, cfg.cpus_per_worker)
    precision = resolve_precision(cfg.precision, worker.on_gpu)
    cfg = cfg.model_copy(update={"precision": precision})
    layout = cfg.layout
    model_cfg = ModelConfig.model_validate(config["model"])
    spec = ObjectiveSpec(**config["spec"])
    trainer = ParallelTrainer(
        model_cfg, Vocab(**config["vocab"]), spec, cfg, layout, config["seed"], worker.on_gpu
    )
    d, _, _ = layout.coords(worker.rank)
    mbs = cfg.micro_batch_size
    shard = ray.train.get_dataset_shard("train")

    def micro_batches(skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """This replica's prepared micro-batches of the ordered stream, from micro-batch `skip` on (a
        resume continues where the checkpointed steps stopped)."""
        rng = np.random.default_rng([config["seed"], d, skip])  # the same for every rank of a replica
        while True:
            got = 0
            for table in shard.iter_batches(
                batch_size=mbs * layout.dp, batch_format="pyarrow", drop_last=True
            ):
                got += 1
                if skip:
                    skip -= 1
                    continue
                yield 0, prepare_batch(spec, rows_to_numpy(table.slice(d * mbs, mbs)), rng)
            if got == 0:
                raise RuntimeError("the training stream yielded no batch of micro_batch_size x dp rows")

    train_parallel(config, cfg, trainer, worker.rank, precision, micro_batches, phase="pretrain")


def train_parallel(
    config: dict[str, Any],
    cfg,
    trainer,
    rank: int,
    precision: str,
    micro_batches: Callable[[int], Iterator[tuple[int, dict[str, Any]]]],
    *,
    phase: str,
    evaluate: Callable[[], dict[str, float]] | None = None,
    final_extra: dict[str, Any] | None = None,
) -> None:
    """Train `trainer` (a `ParallelTrainer`) to `cfg.max_steps`: resume from Ray Train's latest checkpoint,
    one optimizer step per `grad_accum_steps` micro-batches of `micro_batches(skip)` (this replica's
    (epoch, prepared micro-batch) stream from micro-batch `skip` on), the same records as the plain loops,
    checkpoints every `checkpoint_interval` steps and at the end (the end's with the exported model).
    `evaluate` (a collective): held-out metrics before the first step (kept in the checkpoints' state as
    `before`), every `eval_interval` steps and at the end."""
    import ray.train
    import torch
    import torch.distributed as dist

    layout, on_gpu = trainer.layout, trainer.on_gpu
    d, stage, t = layout.coords(rank)
    n_local = trainer.local_parameters()
    print(
        f"[raylm] rank {rank} ({layout.key}): data shard {d}, pipeline stage {stage}, tensor shard {t}: "
        f"{n_local:,} parameters",
        flush=True,
    )
    counts: list[Any] = [None] * layout.world
    dist.all_gather_object(counts, n_local)

    # ---- resume: the same layout's latest checkpoint (a restarted worker group or a longer re-run)
    state: dict[str, Any] = {"step": 0, "tokens": 0, "train_s": 0.0, "before": None}
    checkpoint, carried = ray.train.get_checkpoint(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt:
            verify_checksums(ckpt, rank, layout.world)  # a damaged checkpoint is refused, never half-loaded
            client = trainer.load_state(ckpt)
        state.update(client)
        carried = client.get(TAIL_STATE)
        state.pop(TAIL_STATE, None)
    start_step = state["step"]
    if rank == 0 and checkpoint is not None:
        print(f"[raylm] resumed from checkpoint at step {start_step}", flush=True)

    gas = cfg.grad_accum_steps
    tags = {"run": str(config.get("run", "")), "phase": phase}
    send = RecordSender(rank, config.get("sink"), tags)  # the same records and metrics as the plain loop

    def save(report: dict[str, Any], final: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="raylm-ckpt-") as tmp:
            trainer.save_state(tmp, {**state, TAIL_STATE: send.tail})  # a collective
            if final:
                trainer.export_hf(Path(tmp) / HF_EXPORT)  # collective; rank 0 writes
            write_checksums(tmp, rank, layout.world, step=state["step"])
            dist.barrier()
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        send.saved()

    send.replay(carried)
    if checkpoint is not None:  # marked in the log, as the plain loop does
        send({"kind": "resume", "step": start_step, "at": time.time()})
    if evaluate is not None and state["before"] is None:
        state["before"] = evaluate()
        send({"kind": "eval", "step": 0, **state["before"]})

    stream = micro_batches(start_step * gas)
    t_start, last = time.perf_counter(), {}
    stop_reason = "max_steps" if start_step < cfg.max_steps else "already at max_steps"
    for step in range(start_step + 1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        epoch, micro = 0, []
        for _ in range(gas):
            epoch, batch = next(stream)
            micro.append(batch)
        loss = trainer.step(micro)
        now = time.perf_counter()
        sync = torch.tensor([sum(b["tokens"] for b in micro), now - t_start], dtype=torch.float64)
        dist.all_reduce(sync)
        tokens = int(sync[0].item()) // (layout.pp * layout.tp)  # each replica's tokens counted once
        attempt_s = float(sync[1]) / layout.world  # the same on every rank: stop decisions agree
        step_time = now - t0
        state.update(step=step, tokens=state["tokens"] + tokens, train_s=state["train_s"] + step_time)
        last = {
            "step": step,
            "epoch": epoch,
            "loss": loss,
            "lr": trainer.scheduler.get_last_lr()[0],
            "tokens": tokens,
            "tokens_seen": state["tokens"],
            "step_time_s": step_time,
            "tokens_per_s": tokens / step_time,
            "memory_gb": _memory_gb(on_gpu)[0],
            "elapsed_s": state["train_s"],
        }
        out_of_time = bool(cfg.time_budget_s) and attempt_s >= cfg.time_budget_s
        done = step == cfg.max_steps or out_of_time
        if step % cfg.log_every == 0 or done:
            send({"kind": "train", **last})
        if evaluate is not None and (step % cfg.eval_interval == 0 or done):
            ev = evaluate()
            last.update(ev)
            send({"kind": "eval", "step": step, **ev})
        if out_of_time:
            stop_reason = "time_budget_s"
            break
        if step % cfg.checkpoint_interval == 0 and not done:
            save({"step": step, "loss": loss}, final=False)
    if not last and evaluate is not None:  # already at max_steps: the held-out metrics as they stand
        last = {"step": start_step, **evaluate()}

    peaks: list[Any] = [None] * layout.world
    dist.all_gather_object(peaks, _memory_gb(on_gpu)[1])
    final = {
        **(last or {"step": start_step}),
        "before": state["before"],
        "stop_reason": stop_reason,
        "start_step": start_step,
        "world_size": layout.world,
        "layout": layout.key,
        "precision": precision,
        "parameters_per_worker": counts,
        "memory_peak_gb_per_worker": peaks,
        **(final_extra or {}),
    }
    send({"kind": "final", **final, "deepspeed_config": trainer.ds_config})
    save(final, final=True)  # the state too: a longer re-run continues from it
