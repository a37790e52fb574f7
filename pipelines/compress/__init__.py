"""Compression passes over a plain transformers causal LM, one module per method, each writing a new
Hugging Face folder that transformers and vLLM load:

- `quantize` (+ `gptq`, `smoothquant`): W8A8 / W4A16 in compressed-tensors' format;
- `prune_structured`: attention heads (GQA-consistent), MLP channels, whole layers -> a smaller Llama config,
  optionally with the layers that read them refit by least squares (`reconstruct`);
- `prune_unstructured`: magnitude or Wanda sparsity;
- `low_rank`: truncated SVD with an energy or budget rank rule, plain or data-aware (input-whitened),
  written as its factor pairs (`low_rank_hf`; vLLM runs them through raylm's plugin) or a dense export;
- `distill`: a shallower student trained on the teacher's soft targets (in-process or on Ray Train);
- `weight_share`: ALBERT-style cross-layer sharing with a tied recovery fine-tune (exported untied);
- `layer_drop`: LayerDrop training, then a shallower sub-network (compared with a control).
- `recovery`: the short next-token fine-tune that prune_structured, low_rank and weight_share run after
  their change (constant lr, or warm-up + cosine).

`stage.run_compress` applies the recipe's `compress.methods` to one base model and measures each result
(`measure`); `config` holds the recipe section, `checks` the refusals made before any work starts.
"""
