"""`run_recipe` ends every run with its report: a data-only run on a local Ray writes report/index.html
with the data funnel, says "not run" for the stages the recipe does not have, and saves the recipe (as
run, `--set` overrides applied); a second run reuses the stage and rewrites the report."""

from __future__ import annotations

import json

import pytest

from cluster.config import parse_recipe
from cluster.orchestrate import run_recipe

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_run_recipe_writes_the_report(tmp_path):
    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for i in range(60):
            text = f"Document {i % 50} tells what the river pilot saw on the water and on the land that day."
            f.write(json.dumps({"text": text}) + "\n")
    recipe = parse_recipe(
        f"name: report-run\nrun_dir: {tmp_path / 'run'}\ncluster: {{num_cpus: 1}}\n"
        f"data:\n  inputs: [{{path: {src}}}]\n  operators: [{{op: exact_dedup}}]\n",
        overrides=["seed=3"],
    )
    lines: list[str] = []
    first = run_recipe(recipe, log=lines.append)
    report = tmp_path / "run" / "report"
    assert [r.skipped for r in first] == [False]
    assert any(line.startswith("report: ") and line.endswith("index.html (and index.md)") for line in lines)
    md = (report / "index.md").read_text()
    assert "50 of 60 rows kept" in md and "exact_duplicate" in md
    assert "![rows after each cleaning step" in md and (report / "data_funnel.png").stat().st_size > 1000
    assert md.split("## Pretraining", 1)[1].split("\n## ", 1)[0].count("not run") == 1
    assert "seed: 3" in (report / "recipe.yaml").read_text()
    (report / "data_funnel.png").unlink()
    second = run_recipe(recipe, log=lines.append)
    assert [r.skipped for r in second] == [True] and (report / "data_funnel.png").is_file()
