"""Ray Data settings for an embedded, single-node Ray, set as environment variables that Ray's
processes inherit (Ray Data reads them in the worker that lists a Parquet dataset, not from DataContext).

Why, measured on the data benchmark (2-core development VM; docs/data.md, "Where the memory goes"):
- `RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=1`. Ray 2.60's Parquet reader (datasource V2) starts a pool of 32
  `FooterReader` actors, one worker process each, every time it lists a Parquet folder, to spread footer
  reads over a cluster's nodes. The data stage lists its checkpoints several times; on 2 cores each
  listing started up to 32 Python processes of about 107 MB, and the 200k-document run's peak (2,313 MB)
  had seven of them alive at once. One actor reads a single node's footers as well (it drives up to 128
  reads at once): the peak fell to 1,766 MB and the run went from 5,031 to 5,687 docs/s.
- `RAY_DATA_PARQUET_BIN_PACKING_BYTES=16 MiB` (Ray's default: 128 MiB), the size of the read units it
  packs a Parquet folder's row groups into, like `data.block_mb`'s default. A data-stage pass reads a
  checkpoint, cleans and writes in one fused task, and Ray's Parquet writer holds a task's whole output
  until it writes, so the read unit bounds a worker: at 3.2M documents the final pass's workers held
  1,148 MB each with 128 MiB units and 540 MB with 16 MiB ones (the run's peak 3,286 against 2,070 MB).
A running cluster keeps Ray's defaults (set the variables in the job's runtime_env to change them there).
"""

from __future__ import annotations

FOOTER_ACTORS_VAR = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
READ_UNIT_VAR = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
READ_UNIT_BYTES = 16 * 1024**2


def embedded_ray_data_env() -> dict[str, str]:
    """Environment for the Ray Data of an embedded (one-node) Ray."""
    return {FOOTER_ACTORS_VAR: "1", READ_UNIT_VAR: str(READ_UNIT_BYTES)}
