"""Pretraining throughput, MFU and memory: raylm (Ray Train + DeepSpeed, N CPU workers) against the plain
single-process PyTorch loop a user would write, side by side in one run on the same model, data, global
batch, dtype, initialisation, optimizer and LR schedule.

    .venv/bin/python benchmarks/train_bench.py --quick        # ~10 min on 2 cores: small preset
    .venv/bin/python benchmarks/train_bench.py                # longer runs; ZeRO memory on the 125m preset
    .venv/bin/python benchmarks/train_bench.py --quality-minutes 15   # + the fixed-budget quality run

What is measured:
- tokens/s of both (real, non-padding tokens per second over the steady steps: the first steps, which
  include start-up, are left out), their ratio (raylm / plain loop), and MFU: model FLOPs per second over
  the matmul peak this machine measures for the dtype (all cores, `pipelines.train.flops`);
- memory per worker under ZeRO 0/1/2/3 (peak RSS of each worker, and what the model adds over the
  libraries' baseline) next to DeepSpeed's own estimators;
- optionally quality: held-out perplexity of both after the same wall-clock budget on the same data.

The plain loop runs with Ray stopped and all cores as torch threads; raylm's workers get one core each.
Both use the same forward and loss (`pipelines.train.objectives`: packed sequences with document-aware
masking), so the comparison isolates what the framework costs. Other processes on the machine change the
numbers: the load average is sampled during the run and written next to them.

Writes benchmarks/results/train.json (top-level `ratio` and `mfu`) and benchmarks/results/train.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import LoadSampler, machine  # noqa: E402
from cluster.runtime import isolate_side_files, ray_session  # noqa: E402

isolate_side_files()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "bench-train"
CORPUS_FILES = ("bible_kjv", "fortunes", "jargon", "devils_dictionary", "pydoc_topics", "python_docs")


# ------------------------------------------------------------------------------------------------
# data


def corpus_texts(max_chars: int) -> tuple[list[str], str]:
    """Texts of the bundled corpus (asset cache), or Python's own pydoc topics when it is missing."""
    from pipelines.assets import asset_paths

    corpus = asset_paths().corpus
    texts, chars = [], 0
    files = [corpus / f"{name}.jsonl" for name in CORPUS_FILES if (corpus / f"{name}.jsonl").is_file()]
    if files:
        per_file = max_chars // len(files)
        for f in files:
            got = 0
            with f.open(encoding="utf-8") as fh:
                for line in fh:
                    text = json.loads(line).get("text") or ""
                    if text.strip():
                        texts.append(text)
                        got += len(text)
                    if got >= per_file:
                        break
            chars += got
        return texts, f"bundled corpus ({', '.join(f.stem for f in files)}; {chars / 1e6:.1f} M chars)"
    from pydoc_data.topics import topics

    texts = list(topics.values())
    return texts, f"pydoc_data.topics ({sum(map(len, texts)) / 1e6:.1f} M chars; asset cache missing)"


def token_folder(seq_len: int, vocab: int, max_chars: int) -> tuple[str, str]:
    from pipelines.train.token_data import write_token_data

    folder = WORK / f"tokens-{seq_len}-{vocab}-{max_chars}"
    marker = folder / "source.txt"
    if not marker.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        texts, source = corpus_texts(max_chars)
        write_token_data(
            str(folder), texts, seq_len=seq_len, vocab_size=vocab, heldout_fraction=0.02, shards=8
        )
        marker.write_text(source)
    return str(folder), marker.read_text()


# ------------------------------------------------------------------------------------------------
# the plain loop


def plain_loop(
    model_cfg,
    cfg,
    data,
    steps: int,
    seed: int,
    threads: int,
    time_budget_s: float | None = None,
    eval_rows: int = 0,
) -> dict[str, Any]:
    """A single-process PyTorch training loop: same model, objective, optimizer, schedule and precision as
    raylm. In bf16 it is PyTorch's CPU mixed precision (`torch.autocast`, fp32 weights), the counterpart of
    DeepSpeed's bf16 (bf16 compute, fp32 master weights) that a user writes; casting the whole model to
    bf16 instead measured 2% faster (10,106 vs 9,876 tokens/s) but keeps no fp32 weights."""
    import contextlib

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from pipelines.models import build_model
    from pipelines.train.ds_config import make_optimizer, make_scheduler
    from pipelines.train.objectives import forward_loss, prepare_batch
    from pipelines.train.token_data import load_tokenizer, parquet_files, rows_to_numpy
    from pipelines.train.vocab import family_tokenizer, objective_spec, vocab_of

    torch.set_num_threads(threads)
    tok = family_tokenizer(load_tokenizer(data.tokenizer_dir), model_cfg.family)
    spec, vocab = objective_spec(tok, model_cfg.family, len(tok)), vocab_of(tok)
    torch.manual_seed(seed)
    model = build_model(model_cfg, vocab).train()
    opt = make_optimizer(model, cfg, on_gpu=False)
    sched = make_scheduler(opt, cfg)
    rows = [rows_to_numpy(pq.read_table(f)) for f in parquet_files(data.train_dir)]
    train = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    held = None
    if eval_rows:
        h = [rows_to_numpy(pq.read_table(f)) for f in parquet_files(data.heldout_dir)]
        held = {k: np.concatenate([r[k] for r in h])[:eval_rows] for k in h[0]}

    def autocast():
        if cfg.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train["input_ids"]))
    times, tokens, losses, curve = [], [], [], []
    t_start = time.perf_counter()
    pos = 0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        step_tokens = 0
        for _ in range(cfg.grad_accum_steps * cfg.num_workers):  # one micro-batch of each "worker"
            if pos + cfg.micro_batch_size > len(order):
                order, pos = rng.permutation(len(order)), 0
            idx = np.sort(order[pos : pos + cfg.micro_batch_size])
            pos += cfg.micro_batch_size
            batch = prepare_batch(spec, {k: v[idx] for k, v in train.items()}, rng)
            with autocast():
                loss, _ = forward_loss(spec, model, batch)
            (loss / (cfg.grad_accum_steps * cfg.num_workers)).backward()
            step_tokens += batch["tokens"]
            losses.append(float(loss))
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        times.append(dt)
        tokens.append(step_tokens)
        curve.append(
            {
                "step": step,
                "loss": statistics.fmean(losses[-cfg.grad_accum_steps * cfg.num_workers :]),
                "elapsed_s": time.perf_counter() - t_start,
            }
        )
        if time_budget_s and time.perf_counter() - t_start >= time_budget_s:
            break
    out = {"steps": len(times), "step_times_s": times, "tokens_per_step": tokens, "curve": curve}
    if held is not None:
        with autocast():
            out["heldout_loss"] = evaluate(spec, model, held, cfg.micro_batch_size, seed)
        out["heldout_ppl"] = math.exp(min(out["heldout_loss"], 50))
    return out


def evaluate(spec, model, held, batch_size: int, seed: int) -> float:
    import numpy as np
    import torch

    from pipelines.train.objectives import forward_loss, prepare_batch

    model.eval()
    rng = np.random.default_rng(seed)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(held["input_ids"]), batch_size):
            batch = prepare_batch(spec, {k: v[i : i + batch_size] for k, v in held.items()}, rng)
            loss, n = forward_loss(spec, model, batch)
            total += float(loss) * int(n)
            count += int(n)
    model.train()
    return total / max(count, 1)


def steady(times: list[float], tokens: list[int], skip: int) -> dict[str, float]:
    t, k = times[skip:] or times, tokens[skip:] or tokens
    return {"tokens_per_s": sum(k) / sum(t), "step_time_s": statistics.fmean(t), "steps_measured": len(t)}


# ------------------------------------------------------------------------------------------------
# raylm


def raylm_run(model_cfg, cfg, data_dir: str, out: Path, seed: int) -> dict[str, Any]:
    from pipelines.train.stage import run_pretrain

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return run_pretrain(
        model_cfg,
        cfg,
        data_dir,
        str(out / "pretrain"),
        seed=seed,
        checkpoint_root=str(out / "checkpoints"),
        fresh=True,
        log=lambda s: print(s, flush=True),
    )


def zero_estimates(model_cfg, vocab, workers: int) -> dict[int, dict[str, float]]:
    """DeepSpeed's estimators (mixed precision, per device; on CPU workers device and host memory are the
    same RAM) for ZeRO-2/3, and the ZeRO paper's model-state formulas for every stage in fp32 and mixed
    precision (bytes per parameter: params + grads + Adam moments (+ fp32 master))."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from pipelines.models import build_model

    model = build_model(model_cfg, vocab, device="meta")
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    n = workers
    gib = 2**30
    fp32 = {0: 16 * total, 1: 8 * total + 8 * total / n, 2: 4 * total + 12 * total / n, 3: 16 * total / n}
    mixed = {0: 16 * total, 1: 4 * total + 12 * total / n, 2: 2 * total + 14 * total / n, 3: 16 * total / n}
    out = {
        s: {"params": total, "formula_fp32_gb": fp32[s] / gib, "formula_mixed_gb": mixed[s] / gib}
        for s in range(4)
    }
    cpu2, dev2 = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=n, cpu_offload=False)
    out[2]["deepspeed_estimate_gb"] = dev2 / gib
    out[2]["deepspeed_estimate_host_gb"] = cpu2 / gib
    cpu3, dev3, _ = estimate_zero3_model_states_mem_needs(
        total, largest, num_gpus_per_node=n, cpu_offload=False, cpu_offload_params=False, zero_init=True
    )
    out[3]["deepspeed_estimate_gb"] = dev3 / gib
    out[3]["deepspeed_estimate_host_gb"] = cpu3 / gib
    return out


def plain_loop_tcmalloc(model_cfg, cfg, data_dir: str, steps: int, threads: int) -> dict[str, Any] | None:
    """`plain_loop` in a child process started with tcmalloc preloaded (an allocator is chosen at process
    start): the best single-process loop this machine runs, next to the default one a user writes. None
    where libtcmalloc is not installed."""
    from pipelines.allocator import allocator_env, find_tcmalloc

    if find_tcmalloc() is None:
        return None
    spec = {
        "model": model_cfg.model_dump(mode="json"),
        "cfg": cfg.model_dump(mode="json"),
        "data": data_dir,
        "steps": steps,
        "threads": threads,
    }
    env = {**os.environ, **allocator_env("tcmalloc")}
    done = subprocess.run(
        [sys.executable, __file__, "--plain-child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("PLAIN_JSON ")]
    if done.returncode != 0 or not line:
        raise RuntimeError(f"the tcmalloc plain loop failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(line[-1].split(" ", 1)[1])


def plain_child(spec_json: str) -> None:
    from pipelines.models import ModelConfig
    from pipelines.train.config import PretrainConfig
    from pipelines.train.stage import inspect

    spec = json.loads(spec_json)
    out = plain_loop(
        ModelConfig.model_validate(spec["model"]),
        PretrainConfig.model_validate(spec["cfg"]),
        inspect(spec["data"], "data"),
        spec["steps"],
        seed=0,
        threads=spec["threads"],
    )
    print("PLAIN_JSON " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--plain-child":
        return plain_child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (small preset everywhere)")
    ap.add_argument("--preset", default="small", help="model preset of the throughput comparison")
    ap.add_argument("--workers", type=int, default=2)
    # ZeRO-0 (one gradient all-reduce a step): on gloo, ZeRO-1's reduce per partition plus the parameter
    # all-gather after the step cost 5% more on this 5 M model, which has no memory to save (20-step runs)
    ap.add_argument("--zero", type=int, default=0, help="ZeRO stage of raylm's throughput run")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument(
        "--precision", default="auto", help="auto: bf16 where the CPU computes it natively, else fp32"
    )
    ap.add_argument(
        "--memory-preset", default=None, help="preset of the ZeRO memory runs (default: 125m; --quick: small)"
    )
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--quality-minutes", type=float, default=0.0, help="also pretrain both for this budget")
    args = ap.parse_args()

    from pipelines.allocator import find_tcmalloc
    from pipelines.hardware import cpu_has_native_bf16
    from pipelines.models import ModelConfig
    from pipelines.train.config import PretrainConfig
    from pipelines.train.flops import matmul_peak, measure_matmul_peak, train_flops_per_sequence
    from pipelines.train.stage import inspect
    from pipelines.train.token_data import load_tokenizer
    from pipelines.train.vocab import family_tokenizer, vocab_of

    steps = args.steps or (12 if args.quick else 40)
    skip = 3
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if cpu_has_native_bf16() else "fp32"
    threads = os.cpu_count() or 1
    WORK.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick, "started": time.strftime("%F %T")}
    with LoadSampler() as load:
        import torch

        # The machine's peak: the best of (all threads now, all threads cached, cores x one thread). On a
        # busy machine a multi-threaded matmul stalls at its barriers and under-reads the peak badly; the
        # cache keeps the best reading any run on this host made (raylm's workers use it too).
        peaks, measured = {}, {}
        for dt in ("fp32", "bf16"):
            torch.set_num_threads(1)
            one = matmul_peak(dt, remeasure=True)
            torch.set_num_threads(threads)
            now = measure_matmul_peak(dt)
            measured[dt] = {"all_threads_now": now / 1e9, "one_thread_best": one / 1e9}
            peaks[dt] = max(matmul_peak(dt, remeasure=True), threads * one)
        result["matmul_peak_gflops"] = {dt: v / 1e9 for dt, v in peaks.items()}
        result["matmul_peak_measurements_gflops"] = measured
        result["matmul_peak_threads"] = threads
        max_chars = 3_000_000 if args.quick and not args.quality_minutes else 24_000_000
        data_dir, source = token_folder(args.seq_len, args.vocab, max_chars)
        data = inspect(data_dir, "data")
        result["data"] = {
            "source": source,
            "seq_len": data.seq_len,
            "train_sequences": data.train_rows,
            "heldout_sequences": data.heldout_rows,
            "vocab": data.tokenizer_size,
        }
        model_cfg = ModelConfig(family="decoder", preset=args.preset)
        cfg = PretrainConfig(
            num_workers=args.workers,
            zero_stage=args.zero,
            micro_batch_size=args.micro_batch,
            max_steps=steps,
            warmup_steps=2,
            precision=precision,
            eval_interval=10**6,
            eval_sequences=max(args.workers, 8),
            checkpoint_interval=10**6,
            shuffle_buffer_rows=0,
            use_gpu=False,
        )
        tok = family_tokenizer(load_tokenizer(data.tokenizer_dir), "decoder")
        vocab = vocab_of(tok)
        from pipelines.models.build import hf_config

        flops_seq = train_flops_per_sequence("decoder", hf_config(model_cfg, vocab), data.seq_len)
        peak = peaks[precision]
        result["setup"] = {
            "model": f"decoder {args.preset}",
            "params": None,
            "precision": precision,
            "global_batch_sequences": cfg.global_batch,
            "global_batch_tokens": cfg.global_batch * data.seq_len,
            "steps": steps,
            "steps_skipped_as_warmup": skip,
            "raylm_workers": args.workers,
            "raylm_zero_stage": args.zero,
            "raylm_allocator": "tcmalloc" if find_tcmalloc() and cfg.allocator != "system" else "glibc",
            "plain_loop_threads": threads,
            "train_flops_per_sequence": flops_seq,
        }
        from pipelines.models import count_parameters

        result["setup"]["params"] = count_parameters(model_cfg, vocab)["total"]

        def mfu(tokens_per_s: float) -> float:
            # model FLOPs/s = sequences/s x FLOPs per sequence; sequences/s from tokens/s (padding is rare)
            return tokens_per_s / data.seq_len * flops_seq / peak

        print(f"[bench] plain loop #1: {steps} steps, {threads} threads", flush=True)
        plain1 = plain_loop(model_cfg, cfg, data, steps, seed=0, threads=threads)
        p1 = steady(plain1["step_times_s"], plain1["tokens_per_step"], skip)
        with ray_session(num_cpus=args.workers):
            print(f"[bench] raylm: {steps} steps, {args.workers} workers, ZeRO-{args.zero}", flush=True)
            summary = raylm_run(model_cfg, cfg, data_dir, WORK / "raylm", seed=0)
            records = [
                json.loads(line)
                for line in (WORK / "raylm" / "pretrain" / "metrics.jsonl").read_text().splitlines()
            ]
            train = [r for r in records if r["kind"] == "train"]
            r_stats = steady([r["step_time_s"] for r in train], [r["tokens"] for r in train], skip)
            memory: dict[int, Any] = {}
            if not args.skip_memory:
                mem_preset = args.memory_preset or ("small" if args.quick else "125m")
                mem_model = ModelConfig(family="decoder", preset=mem_preset)
                est = zero_estimates(mem_model, vocab, args.workers)
                for stage in (0, 1, 2, 3):
                    print(f"[bench] memory: ZeRO-{stage}, {mem_preset}", flush=True)
                    mcfg = cfg.model_copy(
                        update={"zero_stage": stage, "max_steps": 2, "micro_batch_size": 1, "warmup_steps": 0}
                    )
                    s = raylm_run(mem_model, mcfg, data_dir, WORK / f"mem-zero{stage}", seed=0)
                    grown = [
                        p - b
                        for p, b in zip(
                            s["memory_peak_gb_per_worker"], s["memory_base_gb_per_worker"], strict=True
                        )
                    ]
                    memory[stage] = {
                        "preset": mem_preset,
                        "peak_rss_gb_per_worker": s["memory_peak_gb_per_worker"],
                        "base_rss_gb_per_worker": s["memory_base_gb_per_worker"],
                        "model_added_gb_per_worker": grown,
                        **est[stage],
                    }
        print(f"[bench] plain loop #2: {steps} steps", flush=True)
        plain2 = plain_loop(model_cfg, cfg, data, steps, seed=0, threads=threads)
        p2 = steady(plain2["step_times_s"], plain2["tokens_per_step"], skip)
        print(f"[bench] plain loop with tcmalloc: {steps} steps, {threads} threads", flush=True)
        tc = plain_loop_tcmalloc(model_cfg, cfg, data_dir, steps, threads)
        p_tc = steady(tc["step_times_s"], tc["tokens_per_step"], skip) if tc else None
        print(f"[bench] plain loop, 1 thread (reference): {steps} steps", flush=True)
        single = plain_loop(model_cfg, cfg, data, steps, seed=0, threads=1)
        p_one = steady(single["step_times_s"], single["tokens_per_step"], skip)
        plain_tps = (p1["tokens_per_s"] + p2["tokens_per_s"]) / 2
        raylm_tps = r_stats["tokens_per_s"]
        result["plain_loop"] = {
            "runs": [p1, p2],
            "tokens_per_s": plain_tps,
            "mfu": mfu(plain_tps),
            "final_loss": plain2["curve"][-1]["loss"],
        }
        result["plain_loop_one_thread"] = {**p_one, "mfu": mfu(p_one["tokens_per_s"])}
        result["ratio_vs_plain_one_thread"] = raylm_tps / p_one["tokens_per_s"]
        result["plain_loop_tcmalloc"] = {**p_tc, "mfu": mfu(p_tc["tokens_per_s"])} if p_tc else None
        best = max(plain_tps, p_one["tokens_per_s"], p_tc["tokens_per_s"] if p_tc else 0.0)
        result["ratio_vs_best_plain"] = raylm_tps / best
        result["raylm"] = {
            **r_stats,
            "mfu": mfu(raylm_tps),
            "mfu_vs_worker_peaks": summary.get("mfu"),
            "worker_peak_gflops_total": (summary.get("peak_flops") or 0) / 1e9,
            "final_loss": summary.get("loss"),
            "memory_peak_gb_per_worker": summary.get("memory_peak_gb_per_worker"),
        }
        result["ratio"] = raylm_tps / plain_tps
        result["mfu"] = mfu(raylm_tps)
        result["mfu_dtype"] = precision
        result["zero_memory"] = {str(k): v for k, v in memory.items()}

        if args.quality_minutes:
            budget = args.quality_minutes * 60
            qcfg = cfg.model_copy(
                update={
                    "max_steps": 100_000,
                    "time_budget_s": budget,
                    "warmup_steps": 50,
                    "eval_interval": 200,
                    "eval_sequences": 256,
                    "checkpoint_interval": 500,
                    "shuffle_buffer_rows": 256,
                }
            )
            with ray_session(num_cpus=args.workers):
                print(f"[bench] quality: raylm for {args.quality_minutes} min", flush=True)
                qs = raylm_run(model_cfg, qcfg, data_dir, WORK / "quality", seed=0)
            print(f"[bench] quality: plain loop for {args.quality_minutes} min", flush=True)
            qp = plain_loop(
                model_cfg, qcfg, data, 100_000, seed=0, threads=threads, time_budget_s=budget, eval_rows=256
            )
            result["quality"] = {
                "budget_min": args.quality_minutes,
                "raylm": {
                    "steps": qs["step"],
                    "heldout_loss": qs["heldout_loss"],
                    "heldout_ppl": qs["heldout_ppl"],
                    "tokens_seen": qs.get("tokens_seen"),
                    "loss_curve": str(WORK / "quality" / "pretrain" / "loss_curve.png"),
                },
                "plain_loop": {
                    "steps": qp["steps"],
                    "heldout_loss": qp["heldout_loss"],
                    "heldout_ppl": qp["heldout_ppl"],
                },
            }
            shutil.copyfile(
                WORK / "quality" / "pretrain" / "loss_curve.png", RESULTS / "train_quality_loss.png"
            )
    result["load"] = load.summary()
    result["finished"] = time.strftime("%F %T")
    carry_over(result, RESULTS / "train.json")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(result, indent=2, default=float))
    (RESULTS / "train.md").write_text(markdown(result))
    print(markdown(result))


def carry_over(result: dict[str, Any], previous_file: Path) -> None:
    """The sections this invocation did not measure (the ZeRO memory runs with --skip-memory, the quality
    run without --quality-minutes) are kept from the previous results file, each with the date it was
    measured (`<section>_measured`), so a throughput re-run does not erase them."""
    try:
        previous = json.loads(previous_file.read_text())
    except (OSError, ValueError):
        previous = {}
    for key in ("zero_memory", "quality"):
        if result.get(key):
            result[f"{key}_measured"] = result["started"]
        elif previous.get(key):
            result[key] = previous[key]
            result[f"{key}_measured"] = previous.get(f"{key}_measured") or previous.get("started")


def markdown(r: dict[str, Any]) -> str:
    m, s, load = r["machine"], r["setup"], r["load"]
    lines = [
        "# Pretraining: raylm vs a plain PyTorch loop",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB, torch {m['torch']} "
        f"(CPU capability {m['torch_cpu_capability']}, AVX512-BF16 {m['avx512_bf16']}, AMX {m['amx_bf16']}). "
        f"Load average during the run: mean {load['load1_mean']:.1f}, min {load['load1_min']:.1f}, "
        f"max {load['load1_max']:.1f} (other processes shared the {m['cores']} cores).",
        "",
        f"Matmul peak used for MFU: fp32 {r['matmul_peak_gflops']['fp32']:.0f} GFLOP/s, bf16 "
        f"{r['matmul_peak_gflops']['bf16']:.1f} GFLOP/s (best of: {r['matmul_peak_threads']} threads now "
        f"{r['matmul_peak_measurements_gflops']['fp32']['all_threads_now']:.0f}, the host's best cached "
        f"reading, {r['matmul_peak_threads']} x the best 1-thread reading "
        f"{r['matmul_peak_measurements_gflops']['fp32']['one_thread_best']:.0f} (fp32)).",
        "",
        f"Setup: {s['model']} ({s['params'] / 1e6:.1f} M parameters), {s['precision']}, global batch "
        f"{s['global_batch_sequences']} sequences x {r['data']['seq_len']} tokens, {s['steps']} steps "
        f"(first {s['steps_skipped_as_warmup']} not measured); data: {r['data']['source']}. raylm: "
        f"{s['raylm_workers']} Ray Train workers x 1 CPU, DeepSpeed ZeRO-{s['raylm_zero_stage']}, gloo. "
        f"Plain loop: one process, {s['plain_loop_threads']} torch threads, run before and after raylm"
        + (", bf16 by `torch.autocast` (fp32 weights)." if s["precision"] == "bf16" else "."),
        "",
        "| | tokens/s | step time (s) | MFU (vs fp32/bf16 peak of the dtype) |",
        "|---|---|---|---|",
        f"| plain PyTorch loop | {r['plain_loop']['tokens_per_s']:,.0f} "
        f"({' / '.join(format(x['tokens_per_s'], ',.0f') for x in r['plain_loop']['runs'])}) | "
        f"{statistics.fmean(x['step_time_s'] for x in r['plain_loop']['runs']):.3f} | "
        f"{100 * r['plain_loop']['mfu']:.1f}% |",
        *(
            [
                f"| plain loop with tcmalloc preloaded (same loop; glibc's malloc -> tcmalloc) | "
                f"{r['plain_loop_tcmalloc']['tokens_per_s']:,.0f} | "
                f"{r['plain_loop_tcmalloc']['step_time_s']:.3f} | "
                f"{100 * r['plain_loop_tcmalloc']['mfu']:.1f}% |"
            ]
            if r.get("plain_loop_tcmalloc")
            else []
        ),
        f"| plain loop, 1 thread (reference: one core's work) | "
        f"{r['plain_loop_one_thread']['tokens_per_s']:,.0f} | "
        f"{r['plain_loop_one_thread']['step_time_s']:.3f} | "
        f"{100 * r['plain_loop_one_thread']['mfu']:.1f}% |",
        f"| raylm (Ray Train + DeepSpeed; allocator {r['setup'].get('raylm_allocator', 'glibc')}) | "
        f"{r['raylm']['tokens_per_s']:,.0f} | "
        f"{r['raylm']['step_time_s']:.3f} | {100 * r['raylm']['mfu']:.1f}% |",
        "",
        f"**ratio raylm / plain = {r['ratio']:.3f}** (plain loop with all cores as threads, what a user "
        f"writes by default); raylm / the best single-process loop = {r['ratio_vs_best_plain']:.3f}; **raylm "
        f"MFU = {100 * r['mfu']:.1f}%** of the {r['mfu_dtype']} peak above.",
    ]
    if r.get("zero_memory"):
        lines += [
            "",
            f"## Memory per worker by ZeRO stage (measured {r.get('zero_memory_measured', r['started'])})",
            "",
            "| ZeRO | preset | params | peak RSS per worker (GiB) | added by the model (GiB) | "
            "DeepSpeed estimator (GiB, mixed precision) | ZeRO formula fp32 (GiB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for stage, v in sorted(r["zero_memory"].items()):
            est = v.get("deepspeed_estimate_gb")
            est_text = f"{est:.2f}" if est is not None else f"(none; formula {v['formula_mixed_gb']:.2f})"
            lines.append(
                f"| {stage} | {v['preset']} | {v['params'] / 1e6:.1f} M | "
                f"{' / '.join(f'{x:.2f}' for x in v['peak_rss_gb_per_worker'])} | "
                f"{' / '.join(f'{x:.2f}' for x in v['model_added_gb_per_worker'])} | "
                f"{est_text} | "
                f"{v['formula_fp32_gb']:.2f} |"
            )
        lines += [
            "",
            "Peak RSS includes Python, torch, Ray and DeepSpeed (the `base` before the model is built) "
            "and activations; `added by the model` is peak minus that base. DeepSpeed's estimators count "
            "model states only, for mixed precision (16-bit weights + fp32 master + Adam); the runs above "
            "are in the listed dtype.",
        ]
    q = r.get("quality")
    if q:
        lines += [
            "",
            f"## Quality: {q['budget_min']} minutes of pretraining each (measured "
            f"{r.get('quality_measured', r['started'])})",
            "",
            "| | steps | held-out loss | held-out perplexity |",
            "|---|---|---|---|",
            f"| raylm | {q['raylm']['steps']} | {q['raylm']['heldout_loss']:.3f} | "
            f"{q['raylm']['heldout_ppl']:.1f} |",
            f"| plain loop | {q['plain_loop']['steps']} | {q['plain_loop']['heldout_loss']:.3f} | "
            f"{q['plain_loop']['heldout_ppl']:.1f} |",
            "",
            "Loss curve: `train_quality_loss.png`.",
        ]
    else:
        lines += ["", "Quality run: not run in this invocation (`--quality-minutes 15`)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
