"""Stage planners, in run order. Each module here has `plan(recipe, run_folder) -> StagePlan | None` for
one stage (None when the recipe has no section for it); `cluster.orchestrate` runs them in this order."""

# Stages append their module name here, in run order, as they land.
STAGE_MODULES: list[str] = [
    "cluster.stages.data",  # data: clean Parquet, stats.json, quarantine/
    "cluster.stages.tokenize",  # tokenize: tokenizer/, train/ and heldout/ packed sequences
    "cluster.stages.pretrain",  # pretrain: Ray Train + DeepSpeed -> model/ (HF folder), metrics, loss curve
    "cluster.stages.finetune",  # finetune: SFT / DPO, full or peft -> model/ (HF or adapter folder), summary
    "cluster.stages.compress",  # compress: quantize / prune / low-rank -> compress/<method>/ (HF folders)
    "cluster.stages.serve",  # serve: Ray Serve app over vLLM, sample requests (keep LAST)
]
