"""The transformers class of a factorized low-rank Llama folder (what `low_rank` writes with
`export: factorized`).

`config.low_rank_ranks` lists the factorized linears, e.g. {"model.layers.3.mlp.up_proj": 192}. Each is
two linears, Linear(in, r) then Linear(r, out), so the folder stores `<name>.0.weight` [r, in] and
`<name>.1.weight` [out, r]: the names `nn.Sequential` gives them. Every other weight is a plain Llama
weight, so `model_type` stays "llama".

This file imports only torch and transformers: the stage copies it into the folder as
`modeling_raylm_low_rank.py` and names it in the config's `auto_map`. So transformers loads the folder with
`trust_remote_code=True` even where raylm is not installed. raylm's own loader (`load_causal_lm`) uses
this class directly and needs no remote code. vLLM loads the folder through raylm's plugin
(`serving/vllm_low_rank_llama.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

ARCHITECTURE = "RaylmLowRankLlamaForCausalLM"
MODELING_FILE = "modeling_raylm_low_rank.py"


def factorize_modules(model: torch.nn.Module, ranks: dict[str, int]) -> None:
    """Replace each listed Linear by an (untrained) Sequential(Linear(in, r), Linear(r, out)) pair."""
    for name, r in ranks.items():
        lin = model.get_submodule(name)
        kw = {"dtype": lin.weight.dtype, "device": lin.weight.device}
        pair = torch.nn.Sequential(
            torch.nn.Linear(lin.in_features, int(r), bias=False, **kw),
            torch.nn.Linear(int(r), lin.out_features, bias=lin.bias is not None, **kw),
        )
        parent, leaf = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), leaf, pair)


class RaylmLowRankLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM with the linears in `config.low_rank_ranks` as rank-r factor pairs."""

    def __init__(self, config):
        super().__init__(config)
        factorize_modules(self, dict(getattr(config, "low_rank_ranks", None) or {}))


def load_causal_lm(folder: str, **kwargs):
    """`AutoModelForCausalLM.from_pretrained`, except that a factorized low-rank folder loads as the class
    above (without remote code)."""
    config = Path(folder, "config.json")
    archs = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    cls = RaylmLowRankLlamaForCausalLM if ARCHITECTURE in archs else AutoModelForCausalLM
    return cls.from_pretrained(folder, **kwargs)
