"""A synthetic run folder for the report tests: every stage's manifest and side files in the shapes the
real stages write (copied from a quickstart run, shortened), so the tests take milliseconds, not the
20 minutes of a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipelines.run_folder import Manifest, write_manifest

ALL_STAGES = ("data", "tokenize", "pretrain", "finetune", "compress", "serve")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _history(steps: int, start: float, end: float, eval_every: int, pairwise: bool = False) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        loss = start + (end - start) * step / steps + 0.05 * math.sin(step)
        row = {"kind": "train", "step": step, "loss": loss, "tokens_per_s": 1000.0}
        if pairwise:
            row.update(margin=0.01 * step - 0.02, accuracy=min(1.0, 0.1 * step))
        rows.append(row)
        if step % eval_every == 0:
            ev = {"kind": "eval", "step": step, "heldout_loss": loss + 0.2}
            if pairwise:
                ev.update(
                    heldout_margin=0.01 * step,
                    heldout_accuracy=0.5 + step / (4 * steps),
                    heldout_logp_accuracy=0.6,
                )
            rows.append(ev)
    return rows


def _manifest(root: Path, stage: str, metrics: dict, config: dict | None = None, wall: float = 1.5) -> None:
    write_manifest(
        str(root / stage),
        Manifest(
            stage=stage,
            config=config or {"seed": 0},
            config_hash=f"{abs(hash(stage)) % 10**16:016d}",
            metrics=metrics,
            timings={"wall_s": wall},
            versions={"python": "3.11.7", "raylm": "0.1.0"},
            created_at="2026-11-28T00:00:00+00:00",
        ),
    )


def make_run(root: Path, stages: tuple[str, ...] = ALL_STAGES, objective: str = "sft+dpo") -> Path:
    """Write the listed stages' outputs under `root` (a run folder) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    if "data" in stages:
        (root / "data").mkdir()
        (root / "data" / "stats.json").write_text(
            json.dumps(
                {
                    "rows_in": 1000,
                    "rows_out": 900,
                    "identity": "rows_in 1000 = rows_out 900 + dropped 95 + quarantined 5",
                    "dropped": {"quality:language": 60, "exact_duplicate": 35},
                    "quarantined": {"invalid utf-8": 5},
                    "inputs": [
                        {
                            "path": "corpus.jsonl",
                            "format": "jsonl",
                            "records": 1000,
                            "rows_out": 995,
                            "quarantined": {"invalid utf-8": 5},
                        }
                    ],
                    "operators": [
                        {
                            "index": 0,
                            "op": "quality_filter",
                            "rows_in": 995,
                            "rows_out": 935,
                            "dropped": {"quality:language": 60},
                            "counters": {},
                        },
                        {
                            "index": 1,
                            "op": "exact_dedup",
                            "rows_in": 935,
                            "rows_out": 900,
                            "dropped": {"exact_duplicate": 35},
                            "counters": {},
                        },
                    ],
                }
            )
        )
        _manifest(root, "data", {"rows_in": 1000, "rows_out": 900, "dropped": 95, "quarantined": 5})
    if "tokenize" in stages:
        (root / "tokenize").mkdir()
        (root / "tokenize" / "stats.json").write_text(
            json.dumps(
                {
                    "docs": 900,
                    "tokens": 250_000,
                    "chars_per_token": 3.6,
                    "seq_len": 256,
                    "padding_fraction": 0.002,
                    "train": {"sequences": 970},
                    "heldout": {"sequences": 10},
                    "tokenizer": {
                        "vocab_size": 8000,
                        "trained": True,
                        "train_s": 1.2,
                        "special_tokens": ["<s>", "</s>", "<|im_start|>"],
                    },
                }
            )
        )
        _manifest(root, "tokenize", {"docs": 900, "tokens": 250_000, "sequences": 970, "vocab_size": 8000})
    if "pretrain" in stages:
        _jsonl(root / "pretrain" / "metrics.jsonl", _history(40, 9.0, 6.5, 20))
        _manifest(
            root,
            "pretrain",
            {
                "family": "decoder",
                "preset": "small",
                "step": 40,
                "heldout_loss": 6.9,
                "heldout_ppl": 990.0,
                "tokens_per_s": 1400.0,
                "world_size": 2,
                "memory_peak_gb_per_worker": [1.2, 1.3],
            },
        )
    if "finetune" in stages:
        sft = {
            "objective": "sft",
            "method": "lora",
            "step": 10,
            "trainable_share": 0.0123,
            "heldout_before": {"heldout_loss": 6.9},
            "heldout_after": {"heldout_loss": 6.6},
            "match": {
                "prompts": 2,
                "before": {"rouge_l": 0.0},
                "after": {"rouge_l": 0.03},
                "samples": [{"prompt": "hi <s>", "reference": "hello", "before": "..\n\n", "after": "the"}],
            },
        }
        dpo = {
            "objective": "dpo",
            "method": "lora",
            "step": 8,
            "heldout_before": {"heldout_accuracy": 0.0, "heldout_margin": 0.0},
            "heldout_after": {"heldout_accuracy": 0.65, "heldout_margin": 0.014},
        }
        if objective == "rlhf":  # RLOO records: reward of the rollouts and KL to the reference
            history = []
            for step in range(1, 9):
                history.append({"kind": "train", "step": step, "reward": 0.05 * step, "kl": 0.3 * step})
                if step % 4 == 0:
                    history += [{"kind": "eval", "step": step, "heldout_reward": step / 25, "heldout_kl": 1}]
            summary = {
                "objective": "rlhf",
                "method": "lora",
                "step": 8,
                "heldout_before": {"heldout_reward": -0.0119, "heldout_kl": 0.0},
                "heldout_after": {"heldout_reward": 0.213, "heldout_kl": 2.64},
            }
            _jsonl(root / "finetune" / "metrics.jsonl", history)
            (root / "finetune" / "summary.json").write_text(json.dumps(summary))
            _manifest(root, "finetune", summary)
        elif objective == "sft+dpo":
            _jsonl(root / "finetune" / "sft" / "metrics.jsonl", _history(10, 6.9, 6.5, 5))
            _jsonl(root / "finetune" / "dpo" / "metrics.jsonl", _history(8, 0.693, 0.68, 4, pairwise=True))
            _manifest(root, "finetune", {"objective": "sft+dpo", "method": "lora", "sft": sft, "dpo": dpo})
        else:
            summary = dpo if objective in ("dpo", "reward") else sft
            summary = {**summary, "objective": objective}
            _jsonl(
                root / "finetune" / "metrics.jsonl", _history(8, 0.693, 0.6, 4, pairwise=objective != "sft")
            )
            (root / "finetune" / "summary.json").write_text(json.dumps(summary))
            _manifest(root, "finetune", summary)
    if "compress" in stages:
        base = {
            "parameters": 5_000_000,
            "size_bytes": 20_000_000,
            "perplexity": 1358.0,
            "hf_tokens_per_s": 80.0,
        }
        methods = {
            "quantize-w8a8": {
                "parameters": 5_000_000,
                "size_bytes": 11_000_000,
                "perplexity": 1359.0,
                "perplexity_ratio": 1.0007,
                "size_ratio": 0.55,
                "hf_tokens_per_s": 40.0,
            },
            "prune_structured": {
                "parameters": 4_500_000,
                "size_bytes": 18_000_000,
                "perplexity": 1325.0,
                "perplexity_ratio": 0.976,
                "size_ratio": 0.9,
                "hf_tokens_per_s": 190.0,
            },
        }
        (root / "compress").mkdir()
        (root / "compress" / "report.json").write_text(
            json.dumps({"base": {"path": "/m", **base}, "methods": methods})
        )
        _manifest(
            root,
            "compress",
            {"base": base, "methods": methods, "summary": {"quantize-w8a8": "ppl x1.001 size x0.550"}},
        )
    if "serve" in stages:
        samples = [
            {
                "model": m,
                "prompt": p,
                "answer": "Paris.\n\n<b>x</b>",
                "ttft_s": 0.1 + i / 10,
                "latency_s": 0.5 + i / 10,
                "completion_tokens": 8,
            }
            for i, (m, p) in enumerate((("base", "capital?"), ("tuned", "capital?"), ("tuned", "sea?")))
        ]
        _jsonl(root / "serve" / "samples.jsonl", samples)
        _manifest(
            root,
            "serve",
            {
                "models": ["base", "tuned"],
                "url": "http://127.0.0.1:8000/v1",
                "startup_s": 90.0,
                "samples": {
                    "requests": 3,
                    "latency_p50_s": 0.6,
                    "ttft_p50_s": 0.2,
                    "output_tokens_per_s": 30.0,
                },
                "kv_cache": {"base": {"planned_tokens": 1152, "engine_tokens": 1152, "relative_error": 0.0}},
            },
        )
    return root


@pytest.fixture
def full_run(tmp_path) -> Path:
    return make_run(tmp_path / "run")
