"""The run report: `<run>/report/index.md`, a static `index.html` and PNG figures, from what the stages
recorded in the run folder (manifests, stats, metric histories).

`collect.py` reads the run folder, `sections*.py` decide what each section shows (as `blocks.py`
blocks), `plots.py` draws the figures, `render.py` writes Markdown and HTML. `run_recipe` writes the
report at the end of every run; `raylm report RUN_DIR` (re)writes it for any run folder.
"""

from pipelines.report.render import report_after_run, write_report

__all__ = ["report_after_run", "write_report"]
