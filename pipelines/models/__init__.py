"""Architecture presets: the three Transformer families as plain transformers models built from a config.

`ModelConfig` is the recipe's `model` section; `build_model(cfg, vocab)` returns a randomly initialised
`LlamaForCausalLM` (decoder), `T5ForConditionalGeneration` (encoder-decoder) or `BertForMaskedLM`
(encoder). Training, parallelism and compression import this package, never the reverse.
"""

from pipelines.models.build import (
    ModelConfigError,
    Vocab,
    build_model,
    count_parameters,
    hf_config,
    max_positions,
)
from pipelines.models.config import ModelConfig
from pipelines.models.presets import PRESET_NAMES, PRESETS

__all__ = [
    "PRESETS",
    "PRESET_NAMES",
    "ModelConfig",
    "ModelConfigError",
    "Vocab",
    "build_model",
    "count_parameters",
    "hf_config",
    "max_positions",
]
