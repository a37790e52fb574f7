"""A short recovery fine-tune after a structural change: next-token loss with AdamW on calibration
windows, in this process. A few dozen steps on a small model take a minute on a CPU; a longer recovery
belongs to the finetune stage (Ray Train), pointed at the compressed folder."""

from __future__ import annotations

import time

import torch


def recovery_finetune(model, windows: torch.Tensor, steps: int, lr: float, batch_size: int = 4) -> dict:
    """Train `model` in place for `steps` steps, cycling over `windows`; returns first/last loss."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    t0 = time.perf_counter()
    n = len(windows)
    for step in range(steps):
        idx = torch.arange(step * batch_size, (step + 1) * batch_size) % n
        x = windows[idx]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return {
        "steps": steps,
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }
