"""The compress stage's report: `report.json`, a markdown table and a Pareto plot (perplexity against
tokens/s and against size), every method next to the base model."""

from __future__ import annotations

import json
from pathlib import Path


def table(base: dict, results: dict) -> str:
    head = (
        "| model | params | params (shared / factorized) | size MB | bytes/param | perplexity | ppl ratio "
        "| size ratio | tok/s (HF) | tok/s (vLLM) | tok/s (vLLM, batch) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = [_row("base", base)] + [_row(name, r) for name, r in results.items()]
    return head + "\n".join(rows) + "\n"


def _alt_parameters(m: dict) -> str:
    """Parameters of the form the written (standard, exported) folder stands for: weight sharing's
    unique parameters, low rank's factorized ones; '-' where the folder is that form."""
    info = m.get("method_info") or {}
    alt = info.get("unique_parameters") or info.get("factorized_parameters")
    return f"{alt / 1e6:.1f}M" if alt and alt != m["parameters"] else "-"


def _row(name: str, m: dict) -> str:
    v, vb = m.get("vllm_tokens_per_s"), m.get("vllm_batch_tokens_per_s")
    return (
        f"| {name} | {m['parameters'] / 1e6:.1f}M | {_alt_parameters(m)} | {m['size_bytes'] / 1e6:.1f} "
        f"| {m['bytes_per_parameter']:.3f} "
        f"| {m['perplexity']:.3f} | {m.get('perplexity_ratio', 1.0):.3f} | {m.get('size_ratio', 1.0):.3f} "
        f"| {m['hf_tokens_per_s']:.1f} | {f'{v:.1f}' if v else '-'} | {f'{vb:.1f}' if vb else '-'} |"
    )


def write_report(out_dir: str, base_path: str, base: dict, results: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps({"base": {"path": base_path, **base}, "methods": results}, indent=2, default=str)
    )
    (out / "report.md").write_text(f"# Compression of {base_path}\n\n" + table(base, results))
    try:
        _plot(out / "pareto.png", base, results)
    except Exception as exc:  # a plot is a convenience; the numbers are in report.json
        (out / "pareto.txt").write_text(f"plot failed: {exc}\n")


def _plot(path: Path, base: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [("base", base)] + list(results.items())
    # vLLM's speed is what serving sees; use it when every point has it
    speed = "vllm_tokens_per_s" if all(m.get("vllm_tokens_per_s") for _, m in pts) else "hf_tokens_per_s"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], speed, f"generation tokens/s ({'vLLM' if speed.startswith('vllm') else 'transformers'})"),
        (axes[1], "size_bytes", "size on disk (MB)"),
    ):
        for name, m in pts:
            x = m[key] / (1e6 if key == "size_bytes" else 1)
            ax.scatter(x, m["perplexity"], marker="*" if name == "base" else "o")
            ax.annotate(name, (x, m["perplexity"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out perplexity (log)")
        ax.set_yscale("log")  # a broken method can be 1000x worse: keep the good ones readable
        ax.grid(alpha=0.3)
    fig.suptitle("compression trade-offs (lower perplexity is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
