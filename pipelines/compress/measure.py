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
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


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
    import json, sys, time
    from vllm import LLM, SamplingParams

    def main():
        folder, n = sys.argv[1], int(sys.argv[2])
        t0 = time.perf_counter()
        llm = LLM(model=folder, dtype="bfloat16", enforce_eager=True, max_model_len=512, seed=0)
        load_s = time.perf_counter() - t0
        params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0)
        llm.generate(["Warm up"], SamplingParams(max_tokens=2, temperature=0.0))
        t0 = time.perf_counter()
        out = llm.generate(["The history of the English language"], params)
        took = time.perf_counter() - t0
        res = {"load_s": load_s, "tokens_per_s": len(out[0].outputs[0].token_ids) / took,
               "text": out[0].outputs[0].text}
        print("VLLM_RESULT " + json.dumps(res))

    if __name__ == "__main__":
        main()
""")


def vllm_speed(folder: str, new_tokens: int, timeout: int = 600) -> dict:
    """Load the folder in vLLM (a subprocess: the engine's memory is freed with it) and time a greedy
    decode. Returns {"load_s", "tokens_per_s", "text"} or {"error": ...}."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    # a script file, not `-c`: vLLM's worker processes re-import the main module
    script = Path(tempfile.mkdtemp(prefix="raylm-vllm-")) / "vllm_speed.py"
    script.write_text(VLLM_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), folder, str(new_tokens)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("VLLM_RESULT ")), None)
    if line is None:
        return {"error": (out.stdout + out.stderr)[-2000:]}
    return json.loads(line.removeprefix("VLLM_RESULT "))
