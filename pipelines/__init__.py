"""raylm's stages: data, models, train, compress, eval. Each stage is `run(cfg, inputs) -> outputs`
over directories and never imports `cluster/` (the control plane composes the stages)."""
