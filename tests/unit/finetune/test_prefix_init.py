"""Prefix tuning starts from real key/values: with `prefix_init`, the untuned prefix model behaves exactly as
the base model reading that text first, instead of peft's random start (much worse than the base)."""

from __future__ import annotations


def _models(tiny_base, prefix_init_ids):
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.train.finetune_config import FinetuneConfig
    from pipelines.train.peft_setup import apply_method

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, local_files_only=True)
    cfg = FinetuneConfig(method="prefix", num_virtual_tokens=6)
    tuned = apply_method(base, cfg, prefix_init_ids)
    return tuned.eval()


def test_initialized_prefix_equals_the_base_model_reading_the_text(tiny_base):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    text_ids = tok("Repeat the word apple twice.", add_special_tokens=False).input_ids
    assert len(text_ids) >= 6
    prefix = text_ids[:6]
    x = tok("Say hello to river.", add_special_tokens=False).input_ids
    tuned = _models(tiny_base, prefix)
    reference = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, local_files_only=True)
    reference.eval()
    with torch.no_grad():
        got = tuned(input_ids=torch.tensor([x])).logits[0]
        want = reference(input_ids=torch.tensor([prefix + x])).logits[0, len(prefix):]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_random_start_is_not_the_base_and_short_text_repeats(tiny_base):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    x = tok("Say hello to river.", add_special_tokens=False).input_ids
    reference = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, local_files_only=True)
    reference.eval()
    short = tok("apple", add_special_tokens=False).input_ids[:2]
    with torch.no_grad():
        random_start = _models(tiny_base, [])(  # empty prefix_init: peft's own start
            input_ids=torch.tensor([x])).logits[0]
        repeated = _models(tiny_base, short)(input_ids=torch.tensor([x])).logits[0]
        cycled = (short * 3)[:6]
        want = reference(input_ids=torch.tensor([cycled + x])).logits[0, 6:]
    torch.testing.assert_close(repeated, want, rtol=1e-4, atol=1e-4)
    assert (random_start - want).abs().max() > 1e-2
