"""Low-rank approximation: each target Linear W [out, in] is replaced by its truncated SVD
U_r diag(s_r) V_r^T, the rank chosen per layer by an energy rule (keep `energy` of sum(s^2)) or a fixed
budget (`rank`).

What is written (`export`):
- factorized (the default): the factor pairs themselves, A = S_r^1/2 V_r^T [r, in] and B = U_r S_r^1/2
  [out, r], stored as `<layer>.0.weight` and `<layer>.1.weight` under the architecture
  `RaylmLowRankLlamaForCausalLM` (`low_rank_hf.py`; vLLM runs it through raylm's plugin,
  `serving/vllm_low_rank_llama.py`). The folder holds r * (in + out) numbers per layer instead of
  in * out, and vLLM computes with the two smaller matrices.
- dense: a *standard* Llama folder of the reconstructed weights W_r = B A, which transformers and vLLM
  load unchanged, at the base model's size and speed.

`data_aware: true` (in the spirit of DRONE, Chen et al. 2021, and SVD-LLM's whitening): the error that
matters is the layer's output error on its real inputs, ||(W - W_r) X^T||_F, not ||W - W_r||_F. With
the input covariance X^T X = L L^T (Cholesky, damped), ||(W - W_r) X^T|| = ||(W - W_r) L|| (up to the
orthogonal factor of X), so the best rank-r W_r is the truncated SVD of W L, un-whitened by L^{-1}:
W_r = U_r S_r V_r^T L^{-1}.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from pipelines.compress import low_rank_hf
from pipelines.compress.calibration import decoder_linears
from pipelines.compress.low_rank_hf import ARCHITECTURE, MODELING_FILE


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
    weight: torch.Tensor,
    energy: float | None,
    rank: int | None,
    covariance: torch.Tensor | None = None,
    dampening: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, in], B [out, r]) with B @ A the best rank-r approximation of weight (Eckart-Young); with
    the input `covariance` (X^T X, any positive scale) the best one for the output on those inputs."""
    w = weight.double()
    if covariance is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
    else:
        chol = whitening(covariance, dampening)
        u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
        vh = torch.linalg.solve_triangular(chol, vh, upper=False, left=False)  # V^T L^{-1}
    r = choose_rank(s, energy, rank)
    root = s[:r].sqrt()
    return (root.unsqueeze(1) * vh[:r]).float(), (u[:, :r] * root.unsqueeze(0)).float()


def whitening(covariance: torch.Tensor, dampening: float) -> torch.Tensor:
    """Lower Cholesky factor L of the damped covariance (L L^T = C + damp * mean(diag C) * I)."""
    c = covariance.double()
    c = c + dampening * c.diagonal().mean().clamp_min(1e-12) * torch.eye(len(c), dtype=c.dtype)
    return torch.linalg.cholesky(c)


@torch.no_grad()
def low_rank(
    model,
    targets: list[str],
    energy: float | None,
    rank: int | None,
    skip_if_not_smaller: bool,
    covariances: dict[str, torch.Tensor] | None = None,
    dampening: float = 0.01,
):
    """Factorize the targets in place: each becomes Sequential(Linear(in, r), Linear(r, out)). Returns
    {layer: rank} (layers kept dense are left out)."""
    ranks = {}
    for name, lin in decoder_linears(model).items():
        if not any(name.endswith(t) for t in targets):
            continue
        cov = covariances.get(name) if covariances is not None else None
        a, b = factorize(lin.weight, energy, rank, cov, dampening)
        r = a.shape[0]
        out_f, in_f = lin.weight.shape
        if skip_if_not_smaller and r * (in_f + out_f) >= in_f * out_f:
            continue
        low_rank_hf.factorize_modules(model, {name: r})  # the pair the folder's class loads into
        first, second = model.get_submodule(name)
        first.weight.copy_(a)
        second.weight.copy_(b)
        if lin.bias is not None:
            second.bias.copy_(lin.bias)
        ranks[name] = r
    return ranks


def target_covariances(model, targets: list[str], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """X^T X / n of each target layer's input on the calibration windows (GPTQ's Hessian, halved)."""
    from pipelines.compress.calibration import input_hessians

    layers = {n: m for n, m in decoder_linears(model).items() if any(n.endswith(t) for t in targets)}
    return {k: h / 2 for k, h in input_hessians(model, windows, layers).items()}


def write_factorized(ctx, model, ranks: dict[str, int], out_dir: str) -> None:
    """Save the factorized model as a `RaylmLowRankLlamaForCausalLM` folder: its weights, a config that
    names the architecture and lists the ranks, and the modelling file for `trust_remote_code` users."""
    ctx.save(model, out_dir)
    path = Path(out_dir, "config.json")
    config = json.loads(path.read_text())
    config["architectures"] = [ARCHITECTURE]
    config["low_rank_ranks"] = dict(ranks)
    config["auto_map"] = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{ARCHITECTURE}"}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(low_rank_hf.__file__, Path(out_dir, MODELING_FILE))


def apply(ctx, cfg, out_dir: str) -> dict:
    from pipelines.compress.measure import generation_speed
    from pipelines.compress.recovery import recover

    model = ctx.load_model()
    before = sum(p.numel() for p in model.parameters())
    dense_speed = generation_speed(model, ctx.tokenizer, 16)
    covs = (
        target_covariances(model, cfg.targets, ctx.calib(cfg.calibration_samples)) if cfg.data_aware else None
    )
    ranks = low_rank(model, cfg.targets, cfg.energy, cfg.rank, cfg.skip_if_not_smaller, covs, cfg.dampening)
    del covs
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
        "data_aware": cfg.data_aware,
        "export": (
            f"factorized: {ARCHITECTURE} (factor pairs; raylm's vLLM plugin serves it)"
            if cfg.export == "factorized"
            else "dense W_r = B @ A in a standard Llama folder"
        ),
    }
    if cfg.recovery_steps:  # the factors train
        info["recovery"] = recover(ctx, model, cfg)
    if cfg.export == "factorized":
        write_factorized(ctx, model, ranks, out_dir)
        return info
    export = ctx.load_model()  # dense: the base with each factorized layer's W_r = B @ A
    with torch.no_grad():
        for name in ranks:
            pair = model.get_submodule(name)
            export.get_submodule(name).weight.copy_(pair[1].weight @ pair[0].weight)
    ctx.save(export, out_dir)
    return info
