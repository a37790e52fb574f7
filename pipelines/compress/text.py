"""Held-out text as token windows: the first `eval_tokens` tokens for perplexity, the following ones for
calibration, so calibration never sees the text a method is judged on."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class TextError(ValueError):
    """The held-out text cannot be read or is too short."""


def read_texts(path: str, max_chars: int, key: str = "compress.heldout") -> list[str]:
    """Texts of a JSON-lines file (`text` field) or a plain text file, up to about `max_chars` characters."""
    p = Path(path)
    if not p.is_file():
        raise TextError(f"{key}: {path} is not a file")
    texts, total = [], 0
    with p.open(encoding="utf-8") as f:
        for line in f:
            if path.endswith(".jsonl"):
                line = line.strip()
                if not line:
                    continue
                text = json.loads(line).get("text", "")
            else:
                text = line
            if text:
                texts.append(text)
                total += len(text)
            if total >= max_chars:
                break
    return texts


def _windows(tokenizer, path: str, seq_len: int, max_tokens: int, key: str) -> torch.Tensor:
    """The file's first ~`max_tokens` tokens (texts joined by EOS) cut into full windows [n, seq_len]."""
    texts = read_texts(path, max_chars=max_tokens * 6, key=key)  # ~4 characters per BPE token; margin
    eos = tokenizer.eos_token or ""
    ids = tokenizer(eos.join(texts), return_tensors="pt").input_ids[0]
    have = ids.numel() // seq_len
    return ids[: have * seq_len].view(have, seq_len)


def token_windows(
    tokenizer, path: str, seq_len: int, eval_tokens: int, calib_windows: int, key: str = "compress.heldout"
):
    """(eval windows [n, seq_len], calibration windows [m, seq_len]) as LongTensors."""
    n_eval = max(1, eval_tokens // seq_len)
    windows = _windows(tokenizer, path, seq_len, eval_tokens + calib_windows * seq_len, key)
    if len(windows) < n_eval + calib_windows:
        raise TextError(
            f"{key}: {path} gives {len(windows) * seq_len} tokens in full windows, fewer than the "
            f"{(n_eval + calib_windows) * seq_len} that eval_tokens + calibration need"
        )
    return windows[:n_eval].clone(), windows[n_eval : n_eval + calib_windows].clone()


def training_windows(tokenizer, path: str, seq_len: int, n: int, key: str = "compress.train_text"):
    """Up to `n` training windows [m, seq_len] of the file, after its first window, which is skipped (the
    calibration split's convention). A file with fewer gives all it has (`m < n`; a training loop cycles
    over them, and the method records `distinct_windows`); one with none is refused."""
    windows = _windows(tokenizer, path, seq_len, (n + 1) * seq_len, key)[1 : n + 1]
    if len(windows) == 0:
        raise TextError(
            f"{key}: {path} has fewer than {2 * seq_len} tokens: no training window after the first"
        )
    return windows.clone()


def interleaved_calibration(
    tokenizer, files: list[str], heldout: str, seq_len: int, eval_tokens: int, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eval windows of `heldout`, `n` calibration windows from `files` taken in turn: window 0 of each
    file, then window 1 of each, ..., so any first k windows hold about as many of each file). The
    held-out file may be one of them: its calibration windows follow its evaluation windows, as without
    `files`; the others give theirs after their first window (`training_windows`). A file shorter than
    its share gives what it has (then there are fewer than `n`)."""
    share = -(-n // len(files))
    eval_w, parts = None, []
    for path in files:
        if path == heldout:
            eval_w, calib = token_windows(tokenizer, heldout, seq_len, eval_tokens, share)
        else:
            calib = training_windows(tokenizer, path, seq_len, share, key="compress.calibration_text")
        parts.append(calib)
    if eval_w is None:
        eval_w, _ = token_windows(tokenizer, heldout, seq_len, eval_tokens, 0)
    order = [p[i] for i in range(share) for p in parts if i < len(p)]
    return eval_w, torch.stack(order[:n])


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean next-token loss) over the windows (each window scored on its own)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = windows[i : i + batch_size]
        logits = model(input_ids=x).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += x[:, 1:].numel()
    return float(torch.exp(torch.tensor(total / count)))
