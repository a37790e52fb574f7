"""A factorized low-rank folder (compress `low_rank`, export: factorized) runs in vLLM through raylm's
plugin (`serving/vllm_low_rank_llama.py`) and computes what transformers computes from the same folder:
the same greedy tokens, and the same log-probabilities for them (float32 on both sides). Slow: one vLLM
engine start-up (about 60 s on a 2-core VM), on the compression tests' tiny Llama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.unit.compress.conftest import ctx, heldout_file, tiny_base  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow]

PROMPT = list(range(5, 25))
NEW = 8

SCRIPT = textwrap.dedent(f"""
    import json, sys
    from vllm import LLM, SamplingParams

    def main():
        llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, seed=0)
        params = SamplingParams(max_tokens={NEW}, min_tokens={NEW}, temperature=0.0, logprobs=1)
        out = llm.generate([{{"prompt_token_ids": {PROMPT}}}], params)[0].outputs[0]
        lps = [lp[t].logprob for lp, t in zip(out.logprobs, out.token_ids)]
        print("RESULT " + json.dumps({{"ids": list(out.token_ids), "logprobs": lps}}), flush=True)

    if __name__ == "__main__":
        main()
""")


def test_factorized_folder_in_vllm_matches_transformers(ctx, tmp_path):  # noqa: F811 - the fixture
    pytest.importorskip("vllm")
    from pipelines.compress import low_rank
    from pipelines.compress.config import LowRankMethod
    from pipelines.compress.low_rank_hf import load_causal_lm

    folder = str(tmp_path / "fact")
    # every layout the vLLM class has: layer 0 all three factorized (gate and up share one A GEMM), layer 1
    # only up (beside a dense gate and down), layer 2 only down (row-parallel A), layer 3 vLLM's own MLP
    targets = ["layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj",
               "layers.1.mlp.up_proj", "layers.2.mlp.down_proj"]
    info = low_rank.apply(ctx, LowRankMethod(rank=8, data_aware=True, targets=targets), folder)
    config = json.loads((tmp_path / "fact" / "config.json").read_text())
    assert sorted(config["low_rank_ranks"]) == sorted(f"model.{t}" for t in targets)
    assert info["factorized_layers"] == 5

    model = load_causal_lm(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        seq = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        # vLLM reports log-probabilities of the raw logits (before min_tokens masks EOS), so these come
        # from a plain forward pass over the generated sequence, not from generate's processed scores
        logits = model(seq).logits[0, len(PROMPT) - 1 : -1]
    want_ids = seq[0, len(PROMPT):].tolist()
    want_lps = torch.log_softmax(logits, -1)[torch.arange(NEW), want_ids].tolist()

    script = tmp_path / "vllm_low_rank.py"  # a file: vLLM's workers re-import the main module
    script.write_text(SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run([sys.executable, str(script), folder], capture_output=True, text=True, env=env,
                         timeout=600)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, (run.stdout + run.stderr)[-3000:]
    got = json.loads(line.removeprefix("RESULT "))
    assert got["ids"] == want_ids, (got, want_ids)
    assert max(abs(a - b) for a, b in zip(got["logprobs"], want_lps, strict=True)) < 1e-4, (got, want_lps)
