"""Low-rank approximation: each target Linear W [out, in] is replaced by its truncated SVD
U_r diag(s_r) V_r^T, the rank chosen per layer by an energy rule (keep `energy` of sum(s^2)) or a fixed
budget (`rank`).

What is written: a *standard* Llama folder holding the reconstructed dense weights W_r = U_r S_r V_r^T,
so transformers and vLLM load it unchanged (the export route the issue allows for low-rank models). Its
size and speed are those of the base model; the factorized form's parameter count and transformers
generation speed are measured in-process and recorded in the manifest's `method_info` (serving the
factorized form needs custom modelling code: not done).
"""

from __future__ import annotations

import time

import torch

from pipelines.compress.calibration import decoder_linears


def choose_rank(s: torch.Tensor, energy: float | None, rank: int | None) -> int:
    """The rank kept: `rank` if given, else the smallest r with sum(s[:r]^2) >= energy * sum(s^2)."""
    if rank is not None:
        if rank > s.numel():
            raise ValueError(f"rank {rank} is larger than the layer's maximum rank {s.numel()}")
        return rank
    e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()
    return int(torch.searchsorted(e, torch.tensor(energy, dtype=e.dtype)).item()) + 1


@torch.no_grad()
def factorize(
    weight: torch.Tensor, energy: float | None, rank: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, in], B [out, r]) with B @ A the best rank-r approximation of weight (Eckart-Young)."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    r = choose_rank(s, energy, rank)
    root = s[:r].sqrt()
    return root.unsqueeze(1) * vh[:r], u[:, :r] * root.unsqueeze(0)


def _replace(model, name: str, new: torch.nn.Module) -> None:
    parent, leaf = name.rsplit(".", 1)
    setattr(model.get_submodule(parent), leaf, new)


@torch.no_grad()
def low_rank(model, targets: list[str], energy: float | None, rank: int | None, skip_if_not_smaller: bool):
    """Factorize the targets in place: each becomes Sequential(Linear(in, r), Linear(r, out)). Returns
    {layer: rank} (layers kept dense are left out) and the dense weights W_r for the standard export."""
    ranks, dense = {}, {}
    for name, lin in decoder_linears(model).items():
        if not any(name.endswith(t) for t in targets):
            continue
        a, b = factorize(lin.weight, energy, rank)
        r = a.shape[0]
        out_f, in_f = lin.weight.shape
        if skip_if_not_smaller and r * (in_f + out_f) >= in_f * out_f:
            continue
        first = torch.nn.Linear(in_f, r, bias=False)
        second = torch.nn.Linear(r, out_f, bias=lin.bias is not None)
        first.weight.copy_(a)
        second.weight.copy_(b)
        if lin.bias is not None:
            second.bias.copy_(lin.bias)
        _replace(model, name, torch.nn.Sequential(first, second))
        ranks[name] = r
        dense[name] = b @ a
    return ranks, dense


def apply(ctx, cfg, out_dir: str) -> dict:
    from pipelines.compress.measure import generation_speed

    model = ctx.load_model()
    before = sum(p.numel() for p in model.parameters())
    dense_speed = generation_speed(model, ctx.tokenizer, 16)
    ranks, dense = low_rank(model, cfg.targets, cfg.energy, cfg.rank, cfg.skip_if_not_smaller)
    after = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    factored_speed = generation_speed(model, ctx.tokenizer, 16)
    info = {
        "factorized_layers": len(ranks),
        "mean_rank": round(sum(ranks.values()) / max(1, len(ranks)), 1),
        "ranks": ranks,
        "factorized_parameters": after,
        "factorized_parameter_ratio": round(after / before, 4),
        "factorized_hf_tokens_per_s": round(factored_speed, 2),
        "dense_hf_tokens_per_s_same_process": round(dense_speed, 2),
        "factorized_speedup": round(factored_speed / dense_speed, 3),
        "measure_s": round(time.perf_counter() - t0, 1),
        "export": "dense W_r = B @ A in a standard Llama folder",
    }
    export = ctx.load_model()
    with torch.no_grad():
        for name, w in dense.items():
            export.get_submodule(name).weight.copy_(w)
    ctx.save(export, out_dir)
    return info
