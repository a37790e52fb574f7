"""write_report(): Markdown and static HTML with relative PNG links, "not run" for stages that did not
run, the recipe saved beside the report, and the `raylm report` command."""

from __future__ import annotations

import re

import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.config import parse_recipe
from pipelines.report import report_after_run, write_report
from tests.unit.report.conftest import make_run

RECIPE = """
name: synthetic
cluster: {num_cpus: 2}
serve:
  api_keys: [sk-very-secret]
  models: [{name: m, path: /nowhere}]
"""


def _links(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_full_report_links_every_figure_and_loads_nothing_external(full_run):
    out = write_report(str(full_run))
    report = full_run / "report"
    assert out == f"{full_run}/report"
    html, md = (report / "index.html").read_text(), (report / "index.md").read_text()
    links = _links(html)
    assert sorted(links) == sorted(
        [
            "data_funnel.png",
            "pretrain_loss.png",
            "finetune_loss.png",
            "dpo_margins.png",
            "compress_pareto.png",
            "serve_latency.png",
        ]
    )
    for name in links:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert not re.search(r'(src|href)="(https?:)?//', html)  # offline: no external CSS, JS, fonts
    assert "<script" not in html
    assert "not run" not in md
    # numbers from each stage reach the page
    for text in (
        "900 of 1,000 rows kept",
        "quality:language",
        "250,000",
        "6.9 -&gt; 6.6",
        "0 -&gt; 0.65",
        "prune_structured",
        "0.976",
        "p50 latency 0.6 s",
    ):
        assert text in html, text
    # model output is escaped, never markup
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


def test_rlhf_run_shows_reward_and_kl(tmp_path):
    run = make_run(tmp_path / "r", stages=("finetune",), objective="rlhf")
    write_report(str(run))
    report = run / "report"
    assert "rlhf_reward_kl.png" in _links((report / "index.html").read_text())
    assert (report / "rlhf_reward_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    body = (report / "index.md").read_text().split("## Preference tuning", 1)[1].split("\n## ", 1)[0]
    assert "| reward | -0.0119 | 0.213 |" in body
    assert "| kl | 0 | 2.64 |" in body
    assert "not run" not in body


def test_missing_stages_say_not_run(tmp_path):
    run = make_run(tmp_path / "r", stages=("data", "pretrain"))
    write_report(str(run))
    md = (run / "report" / "index.md").read_text()
    for section in ("## Tokenizer", "## Fine-tuning", "## Preference tuning", "## Compression", "## Serving"):
        body = md.split(section, 1)[1].split("\n## ", 1)[0]
        assert "not run" in body, section
    assert _links((run / "report" / "index.html").read_text()) == ["data_funnel.png", "pretrain_loss.png"]


def test_empty_folder_and_unreadable_files_do_not_crash(tmp_path, full_run):
    (tmp_path / "empty").mkdir()
    write_report(str(tmp_path / "empty"))
    assert (tmp_path / "empty" / "report" / "index.md").read_text().count("not run") >= 6
    (full_run / "compress" / "report.json").write_text("{")
    (full_run / "tokenize" / "stats.json").write_text("[1, 2]")  # valid JSON, wrong shape
    (full_run / "pretrain" / "metrics.jsonl").write_text('{"kind": "train", "step": "x", "loss": null}\n')
    write_report(str(full_run))
    md = (full_run / "report" / "index.md").read_text()
    assert "## Notes" in md and "report.json: unreadable" in md
    assert "no loss history recorded" in md


def test_recipe_is_saved_masked_and_reused(tmp_path):
    full_run = make_run(tmp_path / "r", stages=("data",))  # one figure: the recipe is what is tested
    cfg = parse_recipe(RECIPE)
    write_report(str(full_run), cfg)
    saved = yaml.safe_load((full_run / "report" / "recipe.yaml").read_text())
    assert saved["cluster"] == {"num_cpus": 2} and "pretrain" not in saved  # the keys the recipe set
    assert "dashboard_port" in (full_run / "report" / "recipe.resolved.yaml").read_text()
    write_report(str(full_run))  # no recipe given: the saved one is shown again
    for name in ("index.md", "index.html", "recipe.yaml", "recipe.resolved.yaml"):
        text = (full_run / "report" / name).read_text()
        assert "sk-very-secret" not in text, name
    assert "num_cpus: 2" in (full_run / "report" / "index.md").read_text()


def test_report_after_run_logs_instead_of_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    lines = []
    assert report_after_run(str(blocker), None, lines.append) is None  # the report folder cannot be made
    assert "report: not written" in lines[0] and "raylm report" in lines[0]


def test_report_command(full_run, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["report", str(full_run), "--out", str(tmp_path / "elsewhere")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "elsewhere" / "index.html").is_file() and not (full_run / "report").exists()
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such run folder" in missing.output


def test_a_rewrite_drops_stale_figures_but_keeps_other_files(tmp_path):
    run = make_run(tmp_path / "r", stages=("data", "serve"))
    out = tmp_path / "shared-folder"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"mine")
    write_report(str(run), out_dir=str(out))
    assert (out / "serve_latency.png").is_file()
    (run / "serve" / "manifest.json").unlink()  # the serve stage is redone, not finished yet
    write_report(str(run), out_dir=str(out))
    assert not (out / "serve_latency.png").exists() and (out / "holiday.png").read_bytes() == b"mine"
