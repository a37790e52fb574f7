"""The Ray Train worker of a fine-tuning run whose `finetune.parallel` asks for pipeline or tensor
parallelism (`pipelines/train/finetune_stage.py` picks it): supervised fine-tuning (objective sft, method
full) of a Llama-architecture base under any dp x pp x tp layout, with the loop of pretraining's
pipeline/tensor worker (`loop.train_parallel`: checkpoints, resume, records, export).

What differs from pretraining under the same layouts:
- every rank starts from the base folder's weights (`ParallelTrainer(base_dir=...)`), cut into its stage
  and shard;
- the data are the driver's tokenized records (as in `pipelines/train/finetune_loop.py`): replica d takes
  the d-th equal slice of the training records and shuffles it per epoch with a seeded RNG shared by the
  replica's stages and shards, so a resume sees the order the interrupted run would have seen;
- a micro-batch is right-padded records (`sft_data.collate`), turned into the next-token form the
  pipeline's stages take: position ids 0..n-1 and labels shifted one to the left, -100 on the prompt and
  the padding. Causal attention keeps every real token from seeing the padding after it, and the loss is
  the mean over the micro-batch's response tokens, as `align_losses.sft_loss` computes it;
- the held-out response loss (and its perplexity) before training, every `eval_interval` steps and at the
  end, token-weighted over all held-out records, as the data-parallel loop reports it.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.parallel.loop import train_parallel
from pipelines.train.loop import resolve_precision, start_worker


def sft_micro_batch(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Tokenized SFT records -> the prepared micro-batch of a decoder (torch, CPU): `input_ids`,
    `position_ids`, next-token `labels` (-100 where nothing is learned) and `tokens` (real tokens)."""
    import numpy as np
    import torch

    from pipelines.train.objectives import IGNORE
    from pipelines.train.sft_data import collate

    batch = collate(items, pad_id)
    ids, labels = batch["input_ids"], batch["labels"]
    shifted = np.full_like(labels, IGNORE)
    shifted[:, :-1] = labels[:, 1:]  # position t predicts token t+1
    pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(ids)),
        "position_ids": torch.from_numpy(np.ascontiguousarray(pos)),
        "labels": torch.from_numpy(shifted),
        "tokens": int(batch["attention_mask"].sum()),
    }


def parallel_sft_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function; `config` is what `pipelines.train.finetune_stage` builds."""
    import torch
    import torch.distributed as dist

    from pipelines.parallel.trainer import ParallelTrainer
    from pipelines.train.finetune_config import FinetuneConfig
    from pipelines.train.finetune_loop import _batches
    from pipelines.train.objectives import ObjectiveSpec

    cfg = FinetuneConfig.model_validate(config["finetune"])
    worker = start_worker(config, cfg.cpus_per_worker)
    precision = resolve_precision(cfg.precision, worker.on_gpu)
    cfg = cfg.model_copy(update={"precision": precision})
    layout = cfg.layout
    pad_id = config["pad_id"]
    spec = ObjectiveSpec(family="decoder", pad_id=pad_id, eos_id=pad_id, vocab_size=0)
    trainer = ParallelTrainer(
        None, None, spec, cfg, layout, config["seed"], worker.on_gpu,
        base_dir=config["base_dir"], variable_length=True,
    )
    d, _, _ = layout.coords(worker.rank)
    mbs = cfg.micro_batch_size
    items = config["train_items"]
    n_train = len(items) // layout.dp  # equal slices: every replica runs the same number of micro-batches
    mine = items[d * n_train : (d + 1) * n_train]

    def micro_batches(skip: int):
        for epoch, chunk in _batches(mine, mbs, config["seed"], d, skip):
            yield epoch, sft_micro_batch(chunk, pad_id)

    heldout = config["heldout_items"]
    chunks = [heldout[i : i + mbs] for i in range(0, len(heldout), mbs)]
    rounds = math.ceil(len(chunks) / layout.dp)

    def evaluate() -> dict[str, float]:
        """Held-out response loss: chunk i goes to replica i mod dp; a replica without a chunk in the last
        round evaluates chunk 0 with weight 0 (every rank must join each collective)."""
        sums = torch.zeros(2, dtype=torch.float64)
        for r in range(rounds):
            i = r * layout.dp + d
            loss_n, n = trainer.eval_sums(sft_micro_batch(chunks[i if i < len(chunks) else 0], pad_id))
            if i < len(chunks):
                sums += torch.tensor([loss_n, n], dtype=torch.float64)
        dist.all_reduce(sums)
        loss = float(sums[0] / sums[1].clamp(min=1))
        return {"heldout_loss": loss, "heldout_ppl": math.exp(min(loss, 50.0))}

    total = trainer.total_parameters  # every weight trains (method full)
    train_parallel(
        config, cfg, trainer, worker.rank, precision, micro_batches,
        phase="finetune/sft", evaluate=evaluate if chunks else None,
        final_extra={"trainable_params": total, "total_params": total, "trainable_share": 1.0},
    )
