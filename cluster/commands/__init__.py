"""One module per stage command (`raylm data`, `raylm serve`, ...). Each registers its command on
`cluster.cli.app` when imported; `cluster.cli` imports the modules listed here."""

COMMAND_MODULES: list[str] = [
    "cluster.commands.data",  # raylm data
    "cluster.commands.pretrain",  # raylm pretrain
    "cluster.commands.finetune",  # raylm finetune
    "cluster.commands.compress",  # raylm compress
    "cluster.commands.serve",  # raylm serve
    "cluster.commands.jobs",  # raylm submit | jobs | logs | stop | pack-code
    "cluster.commands.k8s",  # raylm k8s
    "cluster.commands.report",  # raylm report
]
