"""Composing stages into a run: which stages a recipe has, their inputs, their folders, in order.

Each stage's planner (`cluster/stages/<stage>.py`, listed in run order in `cluster.stages`) looks at the
recipe and returns a `StagePlan` (or None when the recipe has no
section for it). `run_recipe` connects to Ray once and runs the plans in order through the run folder's
stage contract, so finished stages are skipped and re-runs resume.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster.config import Recipe
from cluster.runtime import ray_session
from cluster.stages import STAGE_MODULES
from pipelines.run_folder import RunFolder, StageResult


@dataclass
class StagePlan:
    name: str
    """Stage folder name inside the run folder."""
    config: Any
    """What the stage's manifest hashes: a change here redoes the stage."""
    body: Callable[[str], Mapping[str, Any] | None]
    """`body(out_dir) -> metrics`; runs with Ray connected."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Input name -> folder (another stage's folder or a user path)."""
    folder: str = ""


def plan_stages(cfg: Recipe, only: set[str] | None = None) -> list[StagePlan]:
    """The recipe's stages in run order; `only` keeps just the stages (module names) listed."""
    folder = RunFolder(cfg.resolved_run_dir())
    plans = []
    for module in STAGE_MODULES:
        if only is not None and module.rsplit(".", 1)[-1] not in only:
            continue
        plan = importlib.import_module(module).plan(cfg, folder)
        if plan is not None:
            plan.folder = folder.stage_dir(plan.name)
            plans.append(plan)
    return plans


def run_recipe(
    cfg: Recipe, force: set[str] = frozenset(), log: Callable[[str], None] = print,
    only: set[str] | None = None,
) -> list[StageResult]:
    """Run every planned stage in order; `force` names stages to redo (`all` for every one); `only`
    restricts the run to the named stages (e.g. `raylm data` runs {"data", "tokenize"})."""
    folder = RunFolder(cfg.resolved_run_dir())
    plans = plan_stages(cfg, only)
    results: list[StageResult] = []
    if not plans:
        log(f"{cfg.name}: the recipe has no stage sections, nothing to run")
        return results
    c = cfg.cluster
    with ray_session(c.address, c.num_cpus, c.object_store_memory_gb, c.dashboard, c.dashboard_host,
                     c.dashboard_port, c.namespace, c.serve_ingress, c.arrow_memory_pool) as resources:
        log(f"Ray: {int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs; "
            f"run folder {folder.root}")
        for i, plan in enumerate(plans, 1):
            t0 = time.perf_counter()
            log(f"[{i}/{len(plans)}] {plan.name} ...")
            result = folder.run_stage(plan.name, plan.config, plan.inputs, plan.body,
                                      force="all" in force or plan.name in force)
            took = time.perf_counter() - t0
            log(f"[{i}/{len(plans)}] {plan.name} {'reused (manifest matches)' if result.skipped else 'done'}"
                f" in {took:.1f}s -> {result.folder}")
            results.append(result)
    from pipelines.report import report_after_run  # matplotlib: imported only when a run ends

    report_after_run(folder.root, cfg, log)  # <run>/report/index.html; logs (never raises) on failure
    return results
