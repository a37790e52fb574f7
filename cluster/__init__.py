"""raylm's control plane: the CLI, the recipe schema, connecting to Ray and submitting work.

`cluster/` imports the stages in `pipelines/` and composes them; no stage imports `cluster/`.
"""
