"""The summary table's line per stage, from manifest metrics shaped as the stages write them."""

from __future__ import annotations

from cluster.headline import headline


def test_each_stage_says_what_matters():
    assert headline("data", {"rows_in": 21328, "rows_out": 18611, "dropped": 2717, "quarantined": 0}) == (
        "18,611 of 21,328 rows kept (2,717 dropped, 0 quarantined)")
    line = headline("pretrain", {"step": 150, "heldout_loss": 6.5238, "heldout_ppl": 681.2,
                                 "tokens_per_s": 1921.4, "mfu": 0.358, "checkpoint": "/x"})
    assert line == "step 150, held-out loss 6.524 (ppl 681), 1,921 tokens/s, MFU 35.8%"
    chained = {
        "objective": "sft+dpo",
        "sft": {"heldout_before": {"heldout_loss": 1.9222}, "heldout_after": {"heldout_loss": 1.7882}},
        "dpo": {"heldout_before": {"heldout_accuracy": 0.0, "heldout_margin": 0.0},
                "heldout_after": {"heldout_accuracy": 0.875, "heldout_margin": 0.0297}},
    }
    assert headline("finetune", chained) == (
        "sft: held-out loss 1.922 -> 1.788; dpo: preference accuracy 0.00 -> 0.88, margin 0.000 -> 0.030")
    rlhf = {"objective": "rlhf", "heldout_before": {"heldout_reward": -0.019, "heldout_kl": 0.0},
            "heldout_after": {"heldout_reward": 0.006, "heldout_kl": 1.44}}
    assert headline("finetune", rlhf) == "rlhf: reward -0.019 -> 0.006, KL 0.000 -> 1.440"
    assert headline("compress", {"summary": {"quantize-w8a8-sq": "ppl x1.012 size x0.608"}}) == (
        "quantize-w8a8-sq: ppl x1.012 size x0.608")
    serve = {"models": ["a", "b"], "startup_s": 117.2, "samples": {"requests": 6, "output_tokens_per_s": 8.3}}
    assert headline("serve", serve) == "2 model(s) ready in 117 s, 6 sample requests at 8.3 tokens/s"


def test_a_stage_without_a_rule_or_of_another_shape_shows_its_first_metrics():
    line = headline("report", {"pages": 1, "images": {"n": 7}, "x": 0.123456})
    assert line == "pages=1, images.n=7, x=0.1235"
    # a list where a dict was expected (an older manifest): the generic line, not a crash
    assert headline("compress", {"summary": ["a"], "base": {"perplexity": 20.5}}) == "base.perplexity=20.5"
