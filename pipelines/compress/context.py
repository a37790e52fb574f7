"""What every compression method gets: the base folder, its tokenizer, calibration windows, the dtype to
write, and a loader for a fresh float32 copy of the base model (methods mutate the copy they load)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CompressContext:
    base: str
    """The base model folder."""
    tokenizer: object
    calibration: torch.Tensor
    """Calibration token windows [n, seq_len] (held-out text that perplexity is not measured on)."""
    dtype: torch.dtype
    """Dtype of the float weights a method writes."""

    train_text: str | None = None
    """Text file the training methods (recovery, distillation) learn from; None: the calibration windows."""
    evaluation: torch.Tensor | None = None
    """The held-out perplexity windows, for methods that compare variants in-process (layer_drop's
    control); None: they use the calibration windows."""

    def train_windows(self, n: int) -> torch.Tensor:
        """Up to n windows of training text (of the calibration windows' length): fewer when the text is
        shorter (`text.training_windows`; callers cycle over them and record how many were distinct)."""
        if self.train_text is None:
            return self.calibration[:n]
        from pipelines.compress.text import training_windows

        return training_windows(self.tokenizer, self.train_text, self.calibration.shape[1], n)

    def load_model(self):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32)
        return model.eval()

    def calib(self, n: int) -> torch.Tensor:
        return self.calibration[:n]

    def save(self, model, out_dir: str) -> None:
        """Save a float (unquantized) model and the tokenizer as a standard Hugging Face folder."""
        model = model.to(self.dtype)
        model.config.dtype = self.dtype
        model.config.use_cache = True
        model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def folder_dtype(folder: str, wanted: str) -> torch.dtype:
    """`auto`: the dtype the base folder's config records (float32 if none), else the named one."""
    if wanted != "auto":
        return getattr(torch, wanted)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32
