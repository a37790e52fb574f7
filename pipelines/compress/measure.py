"""What every compressed folder is judged on: parameter count, size on disk, bytes per parameter,
held-out perplexity, generation speed (transformers; vLLM when asked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from pipelines.compress.text import perplexity

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_bytes(folder: str) -> int:
    """Bytes of the weight files (tokenizer and config excluded: they do not change with compression)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.endswith(WEIGHT_SUFFIXES))


def stored_parameters(folder: str) -> int:
    """Parameters as stored: elements of the weight tensors in the safetensors files, with packed int4
    weights counted as the parameters they hold (8 per int32) and quantization scales/zero points left
    out. Tied weights are stored once and counted once."""
    from safetensors import safe_open

    total = 0
    for p in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.endswith(("weight_scale", "weight_zero_point", "input_scale", "weight_g_idx")):
                    continue
                shape = f.get_slice(key).get_shape()
                if key.endswith("weight_shape"):
                    continue
                n = 1
                for d in shape:
                    n *= d
                total += n * 8 if key.endswith("weight_packed") else n
    return total


def load_for_eval(folder: str):
    """The folder as transformers loads it (compressed-tensors folders decompress to float weights; W8A8
    keeps its per-token activation fake-quantization), in float32, eval mode."""
    from pipelines.compress.low_rank_hf import load_causal_lm

    return load_causal_lm(folder, dtype=torch.float32).eval()


@torch.no_grad()
def generation_speed(
    model, tokenizer, new_tokens: int, prompt: str = "The history of the English language"
) -> float:
    """Greedy decode tokens/s with transformers `generate` (KV cache on): best of two, after a warm-up."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    kw = dict(do_sample=False, use_cache=True, pad_token_id=tokenizer.eos_token_id)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
    best = 0.0
    for _ in range(2):  # best of two: one-off stalls (other processes, allocator growth) are not the model
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        best = max(best, (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0))
    return best


def measure_folder(folder: str, tokenizer, eval_windows: torch.Tensor, gen_tokens: int) -> dict:
    """The metrics of one model folder (loads it fresh: what is measured is what was written)."""
    model = load_for_eval(folder)
    model.config.use_cache = True
    t0 = time.perf_counter()
    ppl = perplexity(model, eval_windows)
    eval_s = time.perf_counter() - t0
    speed = generation_speed(model, tokenizer, gen_tokens)
    params = stored_parameters(folder)
    size = weights_bytes(folder)
    return {
        "parameters": params,
        "size_bytes": size,
        "bytes_per_parameter": round(size / params, 4),
        "perplexity": round(ppl, 4),
        "eval_seconds": round(eval_s, 2),
        "hf_tokens_per_s": round(speed, 2),
    }


VLLM_SCRIPT = textwrap.dedent("""
    import json, statistics, sys, time
    from vllm import LLM, SamplingParams

    def timed(llm, prompts, params):
        t0 = time.perf_counter()
        out = llm.generate(prompts, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in out) / (time.perf_counter() - t0), out

    def main():
        folder, n, dtype, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        t0 = time.perf_counter()
        llm = LLM(model=folder, dtype=dtype, enforce_eager=True, max_model_len=512, seed=0,
                  max_num_seqs=max(batch, 1))
        load_s = time.perf_counter() - t0
        params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0)
        prompt = "The history of the English language"
        llm.generate(["Warm up"], SamplingParams(max_tokens=2, temperature=0.0), use_tqdm=False)
        runs = [timed(llm, [prompt], params) for _ in range(3)]
        res = {"load_s": load_s, "dtype": dtype, "tokens_per_s": statistics.median(r[0] for r in runs),
               "runs": [r[0] for r in runs], "text": runs[-1][1][0].outputs[0].text}
        if batch > 1:  # distinct prompts: the prefix cache shares nothing but the common suffix's blocks
            prompts = [f"Chapter {i}. {prompt}" for i in range(batch)]
            batch_runs = [timed(llm, prompts, params)[0] for _ in range(3)]
            res.update(batch=batch, batch_tokens_per_s=statistics.median(batch_runs), batch_runs=batch_runs)
        print("VLLM_RESULT " + json.dumps(res))

    if __name__ == "__main__":
        main()
""")


def served_dtype(folder: str) -> str:
    """The dtype raylm's serving app runs the folder in on this machine (`serving/app.py`): vLLM's `auto`
    where the CPU computes bf16 natively or the folder is quantized, float32 otherwise (emulated bf16
    is slower as soon as several sequences decode together)."""
    from pipelines.hardware import cpu_has_native_bf16

    config = json.loads(Path(folder, "config.json").read_text())
    return "auto" if cpu_has_native_bf16() or config.get("quantization_config") else "float32"


def vllm_speed(folder: str, new_tokens: int, batch: int = 16, timeout: int = 600) -> dict:
    """Load the folder in vLLM (a subprocess: the engine's memory is freed with it) in the dtype the
    serving app would pick, and time greedy decodes of `new_tokens` after a warm-up: one sequence three
    times, then `batch` sequences at once three times (skipped if batch <= 1). Returns {"load_s",
    "dtype", "tokens_per_s" (one sequence, the median), "runs", "batch_tokens_per_s" (all sequences'
    tokens per second, the median), "batch_runs", "text"} or {"error": ...}."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    # a script file, not `-c`: vLLM's worker processes re-import the main module
    script = Path(tempfile.mkdtemp(prefix="raylm-vllm-")) / "vllm_speed.py"
    script.write_text(VLLM_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), folder, str(new_tokens), served_dtype(folder), str(batch)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("VLLM_RESULT ")), None)
    if line is None:
        return {"error": (out.stdout + out.stderr)[-2000:]}
    return json.loads(line.removeprefix("VLLM_RESULT "))
