"""Pretraining through the real stage on a local 2-CPU Ray: Ray Train workers running DeepSpeed on CPU
(gloo), data streamed from Parquet through Ray Data, checkpoints that survive a worker failure and a
re-run, and exported folders that transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import parse_recipe
from cluster.orchestrate import run_recipe
from cluster.runtime import ray_session
from pipelines.train.token_data import write_token_data
from tests.unit.train.conftest import pydoc_texts

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_session(num_cpus=2) as resources:
        yield resources


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain") / "tokenize"
    write_token_data(str(root), pydoc_texts(), seq_len=64, vocab_size=400)
    return str(root)


def recipe(run_dir: Path, tokens: str, family: str, **pretrain) -> str:
    settings = (
        dict(
            data=tokens,
            num_workers=2,
            micro_batch_size=4,
            precision="fp32",
            warmup_steps=1,
            eval_interval=2,
            eval_sequences=8,
            checkpoint_interval=2,
            keep_checkpoints=2,
        )
        | pretrain
    )
    lines = [
        f"name: it-{family}",
        f"run_dir: {run_dir}",
        "cluster: {num_cpus: 2}",
        f"model: {{family: {family}, preset: tiny}}",
        "pretrain:",
    ]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def records(stage: Path) -> list[dict]:
    return [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]


def test_decoder_zero2_resumes_on_rerun_and_exports(ray_cluster, tokens, tmp_path):
    """A worker killed mid-run (FailureConfig) and a killed driver are tested on the real command in
    tests/reliability/test_train_faults.py; here: ZeRO-2 state saved and resumed by a longer re-run."""
    run_dir = tmp_path / "run"
    stage = run_dir / "pretrain"
    # 1. four steps, a checkpoint every two
    cfg = parse_recipe(recipe(run_dir, tokens, "decoder", zero_stage=2, max_steps=4))
    (result,) = run_recipe(cfg, only={"pretrain"})
    summary = json.loads((stage / "summary.json").read_text())
    assert (summary["start_step"], summary["step"]) == (0, 4)
    assert result.manifest.metrics["step"] == 4
    # a driver killed right after the last checkpoint leaves the steps it had not drained yet out of the
    # lasting log: here steps 3-4. The checkpoint carries them; the re-run puts them back.
    (log,) = (run_dir / "checkpoints" / "pretrain").glob("pretrain-*/raylm_metrics.jsonl")
    kept_lines = [line for line in log.read_text().splitlines() if json.loads(line).get("step", 0) <= 2]
    log.write_text("".join(line + "\n" for line in kept_lines))
    # 2. the same recipe with more steps: the re-run continues from step 4, not from 0
    cfg = parse_recipe(recipe(run_dir, tokens, "decoder", zero_stage=2, max_steps=6))
    (result,) = run_recipe(cfg, only={"pretrain"})
    summary = json.loads((stage / "summary.json").read_text())
    assert (summary["start_step"], summary["step"], summary["steps_this_run"]) == (4, 6, 2)
    steps = [r["step"] for r in records(stage) if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the log covers both runs, each step once (3-4 from the checkpoint)
    losses = [r["loss"] for r in records(stage) if r["kind"] == "train"]
    assert all(0 < v < 10 for v in losses) and losses[-1] < losses[0]
    evals = [r for r in records(stage) if r["kind"] == "eval"]
    assert evals and all(r["heldout_ppl"] > 1 for r in evals)
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1
    assert len(summary["memory_peak_gb_per_worker"]) == 2
    # the workers run on tcmalloc (`pretrain.allocator: auto`; `make setup` installs it)
    assert summary["allocator_per_worker"] == ["tcmalloc", "tcmalloc"]
    assert (stage / "loss_curve.png").stat().st_size > 5000
    assert list((stage / "tensorboard").glob("events.out.tfevents.*"))
    kept = [p for p in (run_dir / "checkpoints" / "pretrain").glob("pretrain-*/checkpoint_*") if p.is_dir()]
    assert len(kept) == 2  # keep_checkpoints
    # 3. the exported folder: transformers loads it with its tokenizer and generates
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    tok = AutoTokenizer.from_pretrained(stage / "model")
    ids = tok("The with statement", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    # 4. unchanged recipe: the manifest matches, nothing runs
    (again,) = run_recipe(cfg, only={"pretrain"})
    assert again.skipped


@pytest.mark.parametrize(
    "family,zero,cls,extra",
    [
        # T5: stopped by the time budget after its first step (max_steps is far away)
        ("encoder-decoder", 1, "T5ForConditionalGeneration", {"max_steps": 50, "time_budget_s": 0.01}),
        # BERT: ZeRO-3 (the export gathers the partitioned weights), activation checkpointing, 2 micro-batches
        # accumulated per step
        ("encoder", 3, "BertForMaskedLM",
         {"max_steps": 1, "activation_checkpointing": True, "grad_accum_steps": 2}),
    ],
)
def test_denoising_families_train_a_step_and_export(ray_cluster, tokens, tmp_path, family, zero, cls, extra):
    """One worker each: a worker group's start-up dominates on 2 cores."""
    import transformers

    run_dir = tmp_path / "run"
    cfg = parse_recipe(recipe(run_dir, tokens, family, zero_stage=zero, warmup_steps=0, num_workers=1,
                              **extra))
    run_recipe(cfg, only={"pretrain"})
    stage = run_dir / "pretrain"
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["step"] == 1 and 0 < summary["loss"] < 10
    assert summary["stop_reason"] == ("time_budget_s" if "time_budget_s" in extra else "max_steps")
    (record,) = [r for r in records(stage) if r["kind"] == "train"]
    accum = extra.get("grad_accum_steps", 1)  # micro-batches of 4 rows x 64; only the last row is padded
    assert 256 * (accum - 1) < record["tokens"] <= 256 * accum
    model = getattr(transformers, cls).from_pretrained(stage / "model")
    tok = transformers.AutoTokenizer.from_pretrained(stage / "model")
    assert model.config.vocab_size >= len(tok)
    if family == "encoder-decoder":
        assert tok.convert_tokens_to_ids("<extra_id_0>") != tok.unk_token_id  # sentinels exported
    else:
        assert tok.mask_token == "<mask>"


def test_continued_pretraining_starts_from_the_folders_weights(ray_cluster, tokens, tmp_path):
    """`pretrain.init_from`: the workers load the folder (here under ZeRO-3, partitioned as it loads) and
    train it; the model section is the folder's config (no `model:` in the recipe)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.unit.train.test_init_from import save_llama

    init = save_llama(tmp_path / "init", f"{tokens}/tokenizer")
    # trained a little here, so that its held-out perplexity is far from a new model's (the vocabulary, 400)
    opt = torch.optim.AdamW(init.parameters(), lr=3e-3)
    train = _rows(f"{tokens}/train", 64)
    for i in range(60):
        x = train[(i * 8) % 64 : (i * 8) % 64 + 8]
        init(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    init.eval().save_pretrained(tmp_path / "init")
    start_ppl = _heldout_ppl(init, tokens, 8)
    assert start_ppl < 200
    run_dir = tmp_path / "run"
    text = recipe(
        run_dir, tokens, "decoder", init_from=str(tmp_path / "init"), zero_stage=3, num_workers=2,
        max_steps=2, warmup_steps=0, lr=1e-3, weight_decay=0.0,
    )
    text = text.replace("model: {family: decoder, preset: tiny}\n", "")
    run_recipe(parse_recipe(text), only={"pretrain"})
    stage = run_dir / "pretrain"
    summary = json.loads((stage / "summary.json").read_text())
    assert (summary["step"], summary["init_from"], summary["preset"]) == (2, str(tmp_path / "init"), None)
    trained = AutoModelForCausalLM.from_pretrained(stage / "model")
    assert trained.config.head_dim == 16 and trained.config.num_attention_heads == 4  # the folder's shape
    before, after = init.state_dict(), trained.state_dict()
    assert before.keys() == after.keys()
    # two AdamW steps at lr 1e-3 move each weight by at most ~2e-3: the run started from these weights
    # (a new model would be 0.02-scale noise away), and it trained (they moved)
    drift = max((after[k] - before[k]).abs().max().item() for k in before)
    assert 1e-4 < drift < 3e-3, drift
    evals = [r for r in records(stage) if r["kind"] == "eval"]
    # held-out perplexity of the started-from model, measured here on the same rows, is where it begins
    print("held-out perplexity, folder -> after 2 steps:", start_ppl, evals[-1]["heldout_ppl"])
    assert evals and 0.8 < evals[-1]["heldout_ppl"] / start_ppl < 1.02


def _rows(folder: str, n: int):
    import pyarrow.parquet as pq
    import torch

    return torch.tensor(pq.read_table(folder).column("input_ids").to_pylist()[:n], dtype=torch.long)


def _heldout_ppl(model, tokens: str, rows: int) -> float:
    """As the stage's evaluation computes it: packed rows, each document attending to itself only (no KV
    cache, so transformers reads the documents' bounds from position_ids)."""
    import math

    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from pipelines.train.objectives import forward_loss, prepare_batch
    from pipelines.train.token_data import rows_to_numpy
    from pipelines.train.vocab import family_tokenizer, objective_spec

    tok = family_tokenizer(AutoTokenizer.from_pretrained(f"{tokens}/tokenizer"), "decoder")
    spec = objective_spec(tok, "decoder", vocab_size=len(tok))
    batch = prepare_batch(spec, rows_to_numpy(pq.read_table(f"{tokens}/heldout").slice(0, rows)), None)
    model.config.use_cache = False
    with torch.no_grad():
        loss, _ = forward_loss(spec, model, {k: v for k, v in batch.items() if k != "tokens"})
    model.config.use_cache = True
    return math.exp(loss.item())
