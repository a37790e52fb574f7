"""The one line per stage in `raylm run`'s final summary table: what a person wants to know about the
stage (rows kept, held-out loss, what tuning changed, what compression cost, where the models are served),
from its manifest's metrics. A stage without a rule here shows its first few metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# fine-tuning passes: (held-out metric, label, format), the first present one is shown as before -> after
_PASS_METRICS = {
    "sft": [("heldout_loss", "held-out loss", ".3f")],
    "dpo": [("heldout_accuracy", "preference accuracy", ".2f"), ("heldout_margin", "margin", ".3f")],
    "reward": [("heldout_accuracy", "ranking accuracy", ".2f")],
    "rlhf": [("heldout_reward", "reward", ".3f"), ("heldout_kl", "KL", ".3f")],
}


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, int | float) else "?"


def _data(m: dict) -> str:
    return (f"{m['rows_out']:,} of {m['rows_in']:,} rows kept "
            f"({_num(m.get('dropped'), ',')} dropped, {_num(m.get('quarantined'), ',')} quarantined)")


def _tokenize(m: dict) -> str:
    return (f"{m['sequences']:,} sequences, {m['tokens']:,} tokens, "
            f"vocabulary {_num(m.get('vocab_size'), ',')}")


def _pretrain(m: dict) -> str:
    out = f"step {m['step']}, held-out loss {_num(m.get('heldout_loss'), '.3f')}"
    out += f" (ppl {_num(m.get('heldout_ppl'), ',.0f')}), {_num(m.get('tokens_per_s'), ',.0f')} tokens/s"
    if isinstance(m.get("mfu"), float):
        out += f", MFU {m['mfu']:.1%}"
    return out


def _finetune_pass(objective: str, m: dict) -> str:
    before, after = m.get("heldout_before") or {}, m.get("heldout_after") or {}
    parts = []
    for key, label, fmt in _PASS_METRICS.get(objective, _PASS_METRICS["sft"]):
        if key in after:
            parts.append(f"{label} {_num(before.get(key), fmt)} -> {_num(after[key], fmt)}")
    return f"{objective}: " + (", ".join(parts) or f"step {m.get('step')}")


def _finetune(m: dict) -> str:
    passes = [k for k in ("sft", "reward", "dpo", "rlhf") if isinstance(m.get(k), dict)]
    if passes:  # a chained objective (sft+dpo): one part per pass
        return "; ".join(_finetune_pass(k, m[k]) for k in passes)
    return _finetune_pass(str(m.get("objective", "sft")), m)


def _compress(m: dict) -> str:
    summary = m.get("summary") or {}
    return "; ".join(f"{name}: {what}" for name, what in summary.items()) or "no method ran"


def _serve(m: dict) -> str:
    models = m.get("models") or []
    samples = m.get("samples") or {}
    out = f"{len(models)} model(s) ready in {_num(m.get('startup_s'), '.0f')} s"
    if samples.get("requests"):
        rate = _num(samples.get("output_tokens_per_s"), ".1f")
        out += f", {samples['requests']} sample requests at {rate} tokens/s"
    return out


_RULES: dict[str, Callable[[dict], str]] = {
    "data": _data,
    "tokenize": _tokenize,
    "pretrain": _pretrain,
    "finetune": _finetune,
    "compress": _compress,
    "serve": _serve,
}


def headline(stage: str, metrics: dict[str, Any]) -> str:
    rule = _RULES.get(stage)
    if rule is not None:
        try:
            return rule(metrics)
        except (KeyError, TypeError, ValueError, AttributeError):  # another shape: the generic line
            pass
    flat = _flat(metrics)
    return ", ".join(f"{k}={v}" for k, v in list(flat.items())[:4])


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, int | float | str | bool):
            out[f"{prefix}{k}"] = round(v, 4) if isinstance(v, float) else v
    return out
