"""What each Ray Train worker runs to fine-tune: the base model (wrapped by peft for LoRA / prefix /
P-tuning) in a DeepSpeed engine built from the same config, optimizer and schedule as pretraining
(`pipelines.train.ds_config`), checkpointed and resumed the same way (`ray.train.report` with every
worker's `engine.save_checkpoint`; `ray.train.get_checkpoint()` on a restart or re-run).

The data is small and already tokenized by the driver (`pipelines.train.sft_data`), so it travels in the
loop config rather than through Ray Data: each worker takes an equal slice and shuffles it per epoch with
a seeded RNG, which makes the order after a resume exactly the one the interrupted run would have seen.

Objectives: `sft` (cross-entropy on the response tokens), `dpo` (the DPO loss against a frozen
reference: for peft methods the same model with its adapter disabled, for full fine-tuning a frozen copy
of the base), `reward` (a one-score head on the backbone, Bradley-Terry loss on the same pairs) and `rlhf`
(RLOO against a frozen reward model with a KL penalty to the same reference, `pipelines.train.rlhf`).

Rank 0 also sets raylm's Ray metrics (`pipelines.metrics`: train_loss, train_tokens_per_second, and per
objective train_margin / train_accuracy / train_reward / train_kl), as the pretraining loop does.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.train.loop import (
    CLIENT_STATE,
    HF_EXPORT,
    STATE_TAG,
    TAIL_STATE,
    RecordSender,
    _memory_gb,
    export_hf,
    resolve_precision,
    start_worker,
)


def _batches(items: list, micro: int, seed: int, rank: int, skip_micro: int):
    """(epoch, micro-batch items) forever, from micro-batch `skip_micro` of the deterministic order on."""
    import numpy as np

    per_epoch = max(1, len(items) // micro)
    epoch, skip = divmod(skip_micro, per_epoch)
    while True:
        order = np.random.default_rng([seed, rank, epoch]).permutation(len(items))
        for b in range(skip, per_epoch):
            yield epoch, [items[i] for i in order[b * micro : (b + 1) * micro]]
        skip = 0
        epoch += 1


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function; `config` is what `pipelines.train.finetune_stage` builds."""
    import ray.train

    from pipelines.train.finetune_config import FinetuneConfig

    cfg = FinetuneConfig.model_validate(config["finetune"])
    worker = start_worker(config, cfg.cpus_per_worker)
    rank, world, on_gpu, device = worker.rank, worker.world, worker.on_gpu, worker.device
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from pipelines.train.align_losses import dpo_loss, model_logits, response_logprobs, reward_loss, sft_loss
    from pipelines.train.ds_config import deepspeed_config, make_optimizer, make_scheduler
    from pipelines.train.peft_setup import apply_method, trainable_parameters
    from pipelines.train.sft_data import collate, collate_pairs

    precision = resolve_precision(cfg.precision, on_gpu)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ds_config = deepspeed_config(cfg.model_copy(update={"precision": precision}), world, on_gpu)
    torch.manual_seed(config["seed"])
    hf_ds_config = None
    if cfg.zero_stage == 3:  # from_pretrained loads straight into partitions while this object lives
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)
    base_dir = config["base_dir"]
    reward = cfg.objective == "reward"
    rlhf = cfg.objective == "rlhf"
    if reward:  # the backbone plus a new one-score head (transformers' *ForSequenceClassification)
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=1, dtype=torch.float32, local_files_only=True
        )
        model.config.pad_token_id = config["pad_id"]  # the head scores the last non-pad token
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # peft: frozen embeddings would otherwise cut the graph
    reference = None
    if cfg.objective in ("dpo", "rlhf") and cfg.method == "full":
        # full fine-tuning changes every weight, so the reference is a frozen copy of the base (peft
        # methods use the same model with the adapter switched off: no second copy)
        reference = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, local_files_only=True)
        reference.requires_grad_(False).eval().to(device)
    model = apply_method(model, cfg, config.get("prefix_init_ids"))
    params = trainable_parameters(model)
    optimizer = make_optimizer(model, cfg, on_gpu)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lambda opt: make_scheduler(opt, cfg), config=ds_config
    )
    peft = cfg.method != "full"
    rloo = None
    if rlhf:  # the reward model (frozen) and what rollouts need to render prompts and answers
        from transformers import AutoTokenizer

        from pipelines.train.rlhf import Rloo, load_reward_model
        from pipelines.train.sft_data import Template

        tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
        rloo = Rloo(
            tokenizer=tokenizer,
            template=Template(config["template"]),
            reward_model=load_reward_model(config["reward_model"], config["pad_id"]).to(device),
            k=cfg.rlhf_samples,
            beta=cfg.rlhf_beta,
            temperature=cfg.rlhf_temperature,
            max_new_tokens=cfg.rlhf_max_new_tokens,
            pad_id=config["pad_id"],
            device=device,
        )

    # ---- resume
    state: dict[str, Any] = {"step": 0, "tokens": 0, "micro_batches": 0, "train_s": 0.0, "before": None}
    from pipelines.train.checkpoint_integrity import verify_checksums, write_checksums

    checkpoint, carried = ray.train.get_checkpoint(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            verify_checksums(d, rank, world)  # a damaged checkpoint is refused, never half-loaded
            # a peft checkpoint holds the trainable weights only: the frozen base comes from `base`
            _, client = engine.load_checkpoint(d, tag=STATE_TAG, load_module_strict=not peft)
        state.update((client or {}).get(CLIENT_STATE, {}))
        carried = (client or {}).get(TAIL_STATE)
    start_step = state["step"]
    if rank == 0 and checkpoint is not None:
        print(f"[raylm] finetune resumed from checkpoint at step {start_step}", flush=True)

    n_train = len(config["train_items"]) // world  # equal slices: every rank runs the same micro-batches
    mine = config["train_items"][rank * n_train : (rank + 1) * n_train]
    heldout = config["heldout_items"][rank::world]
    pad_id = config["pad_id"]
    pairwise = cfg.objective in ("dpo", "reward")  # chosen and rejected per record

    def to_device(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}

    def reference_logprobs(batch):
        with torch.no_grad():
            if reference is not None:
                logits = model_logits(reference, batch)
            else:
                with engine.module.disable_adapter():
                    logits = model_logits(engine.module, batch)
            return response_logprobs(logits, batch["labels"])[0]

    def forward(items: list, train: bool = True) -> tuple[Any, dict[str, Any]]:
        """(loss to backpropagate, sums to log: loss x weight, weight, real tokens, dpo margins...)."""
        if rloo is not None:
            return rloo.step(engine, engine.module, reference, items, train)
        if not pairwise:
            batch = to_device(collate(items, pad_id))
            loss, n = sft_loss(model_logits(engine, batch), batch["labels"])
            return loss, {
                "loss": loss.detach().double() * n,
                "weight": n,
                "tokens": batch["attention_mask"].sum(),
            }
        batch = to_device(collate_pairs(items, pad_id))
        k = len(items)
        if reward:
            scores = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
            losses, margin = reward_loss(scores[:k].float(), scores[k:].float())
            sums = {
                "loss": losses.detach().double().sum(),
                "weight": k,
                "tokens": batch["attention_mask"].sum(),
                "margin": margin.detach().double().sum(),
                "accuracy": (margin > 0).double().sum(),
                "logp_accuracy": (margin > 0).double().sum(),  # no log-probs: the reward's own accuracy
            }
            return losses.mean(), sums
        logp = response_logprobs(model_logits(engine, batch), batch["labels"])[0]
        ref = reference_logprobs(batch)
        losses, margin = dpo_loss(logp[:k], logp[k:], ref[:k], ref[k:], cfg.dpo_beta)
        loss = losses.mean()
        sums = {
            "loss": losses.detach().double().sum(),
            "weight": k,
            "tokens": batch["attention_mask"].sum(),
            "margin": margin.detach().double().sum(),
            "accuracy": (margin > 0).double().sum(),
            "logp_accuracy": (logp[:k] > logp[k:]).double().sum(),
        }
        return loss, sums

    keys = ["loss", "weight", "tokens"] + (["margin", "accuracy", "logp_accuracy"] if pairwise else [])
    if rlhf:
        keys += ["reward", "kl", "objective", "length"]

    def reduce(sums: dict[str, Any]) -> dict[str, float]:
        vec = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(vec)
        return dict(zip(keys, vec.tolist(), strict=True))

    def evaluate() -> dict[str, float]:
        """Held-out metrics over all workers: response loss (sft) or DPO loss, mean implicit reward margin,
        preference accuracy (margin > 0) and log-prob accuracy (the policy gives chosen the higher summed
        log-probability: meaningful before training too, when the margin is 0 by definition)."""
        total = dict.fromkeys(keys, 0.0)
        engine.eval()
        # rlhf samples: the same seed at every evaluation, so before/after differ by the policy only
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if on_gpu else []):
            torch.manual_seed(config["seed"] * 1000 + rank)
            for i in range(0, len(heldout), cfg.micro_batch_size):
                _, sums = forward(heldout[i : i + cfg.micro_batch_size], train=False)
                for k in keys:
                    total[k] += float(sums[k])
        engine.train()
        total = reduce(total)
        w = max(total["weight"], 1)
        if rlhf:  # mean score of the sampled answers, their KL to the reference, score - beta KL, length
            return {f"heldout_{k}": total[k] / w for k in ("reward", "kl", "objective", "length")}
        out = {"heldout_loss": total["loss"] / w}
        if pairwise:
            out.update(
                heldout_margin=total["margin"] / w,
                heldout_accuracy=total["accuracy"] / w,
                heldout_logp_accuracy=total["logp_accuracy"] / w,
            )
        else:
            out["heldout_ppl"] = math.exp(min(out["heldout_loss"], 50.0))
        return out

    from pipelines import metrics

    tags = {"run": str(config.get("run", "")), "phase": f"finetune/{cfg.objective}"}
    send = RecordSender(rank, config.get("sink"), tags)

    def save(report: dict[str, Any], final: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="raylm-ft-ckpt-") as d:
            engine.save_checkpoint(
                d,
                tag=STATE_TAG,
                client_state={CLIENT_STATE: dict(state), TAIL_STATE: send.tail},
                exclude_frozen_parameters=peft,
            )
            if final:
                out = Path(d) / HF_EXPORT
                if peft:
                    if rank == 0:  # adapter_config.json + adapter_model.safetensors (peft's format)
                        engine.module.save_pretrained(str(out), safe_serialization=True)
                else:
                    export_hf(engine, None, out, rank, cfg.zero_stage)
            write_checksums(d, rank, world, step=state["step"])
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))
        send.saved()

    send.replay(carried)

    # ---- before any step: the base model's held-out metrics (kept in the checkpoints' state)
    if state["before"] is None:
        state["before"] = evaluate()
        send({"kind": "eval", "step": 0, **state["before"]})

    step = start_step
    t_attempt = time.perf_counter()
    train_s_before = state["train_s"]
    acc = dict.fromkeys(keys, 0.0)
    micro = 0
    t_step = time.perf_counter()
    stop_reason = "max_steps" if step < cfg.max_steps else "already at max_steps"
    last: dict[str, Any] = {}
    if step < cfg.max_steps:
        for epoch, items in _batches(
            mine, cfg.micro_batch_size, config["seed"], rank, state["micro_batches"]
        ):
            loss, sums = forward(items)
            engine.backward(loss)
            engine.step()
            for k in keys:
                acc[k] += float(sums[k])
            micro += 1
            state["micro_batches"] += 1
            if micro < cfg.grad_accum_steps:
                continue
            micro = 0
            step += 1
            if rank == 0:
                metrics.inc("train_steps", 1, **tags)
            now = time.perf_counter()
            total = reduce(acc)
            attempt = torch.tensor([now - t_attempt], dtype=torch.float64, device=device)
            dist.all_reduce(attempt)
            attempt_s = float(attempt) / world  # the same on every rank: stop decisions agree
            step_time, t_step = now - t_step, now
            state.update(
                step=step, tokens=state["tokens"] + int(total["tokens"]), train_s=train_s_before + attempt_s
            )
            acc = dict.fromkeys(keys, 0.0)
            mem_now, _ = _memory_gb(on_gpu)
            grad_norm = engine.get_global_grad_norm()
            w = max(total["weight"], 1)
            last = {
                "step": step,
                "epoch": epoch,
                "loss": total["loss"] / w,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens": int(total["tokens"]),
                "tokens_seen": state["tokens"],
                "step_time_s": step_time,
                "tokens_per_s": total["tokens"] / step_time,
                "memory_gb": mem_now,
                "elapsed_s": state["train_s"],
            }
            if pairwise:
                last.update(margin=total["margin"] / w, accuracy=total["accuracy"] / w)
            if rlhf:  # per sampled answer
                last.update({k: total[k] / w for k in ("reward", "kl", "objective", "length")})
            done = step >= cfg.max_steps
            if cfg.time_budget_s and attempt_s >= cfg.time_budget_s and not done:
                done, stop_reason = True, "time_budget_s"
            if step % cfg.log_every == 0 or done:
                send({"kind": "train", **last})
            if step % cfg.eval_interval == 0 or done:
                ev = evaluate()
                last.update(ev)
                send({"kind": "eval", "step": step, **ev})
            if step % cfg.checkpoint_interval == 0 and not done:
                save({"step": step, "loss": last["loss"]}, final=False)
            if done:
                break
            t_step = time.perf_counter()
    else:
        last = {"step": step, **evaluate()}

    _, peak_gb = _memory_gb(on_gpu)
    memory: list[Any] = [None] * world
    dist.all_gather_object(memory, peak_gb)
    final = {
        **last,
        "before": state["before"],
        "stop_reason": stop_reason,
        "start_step": start_step,
        "world_size": world,
        "precision": precision,
        "memory_peak_gb_per_worker": memory,
        "deepspeed_config": ds_config,
        **params,
    }
    send({"kind": "final", **final})
    save({k: v for k, v in final.items() if k != "deepspeed_config"}, final=True)
    del hf_ds_config
