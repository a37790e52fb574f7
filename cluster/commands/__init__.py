"""One module per stage command (`raylm data`, `raylm serve`, ...). Each registers its command on
`cluster.cli.app` when imported; `cluster.cli` imports the modules listed here."""

COMMAND_MODULES: list[str] = []
