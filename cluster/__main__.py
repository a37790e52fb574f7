"""`python -m cluster ...` = `raylm ...` (what a submitted job runs: no console script needed on the
cluster). `python -m cluster.cli` would load the CLI module twice and miss the commands registered on it."""

from cluster.cli import main

main()
