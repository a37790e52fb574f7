"""raylm's vLLM plugin: the model classes raylm adds to vLLM, registered by the `vllm.general_plugins`
entry point in pyproject.toml. vLLM calls `register()` in every process it starts: the API process, the
engine core and its workers, and a Ray Serve LLM replica.

ARCHITECTURES is plain data, so `raylm serve --plan` can check a folder's architecture without
importing vLLM.
"""

from __future__ import annotations

ARCHITECTURES = {
    # compress `low_rank` with export: factorized (pipelines/compress/low_rank_hf.py is its transformers twin)
    "RaylmLowRankLlamaForCausalLM": "serving.vllm_low_rank_llama:LowRankLlamaForCausalLM",
}
ENTRY_POINT = "serving.vllm_plugin:register"


def register() -> None:
    """Add raylm's architectures to vLLM's model registry (lazily: vLLM imports a class when a folder
    names it). Safe to call more than once."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for arch, target in ARCHITECTURES.items():
        if arch not in known:
            ModelRegistry.register_model(arch, target)


def installed() -> bool:
    """Whether vLLM will find this plugin: the installed raylm distribution declares the entry point."""
    from importlib.metadata import entry_points

    return any(ep.value == ENTRY_POINT for ep in entry_points(group="vllm.general_plugins"))
