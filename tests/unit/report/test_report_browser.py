"""The report's index.html in a real headless browser (Debian's chromium): it renders every section,
every <img> loads (naturalWidth > 0) and the console stays free of errors. A deliberately broken page
checks that the checker does see a missing image and a script error."""

from __future__ import annotations

from pipelines.report import write_report
from tests.unit.report.conftest import make_run
from tests.unit.report.headless import Browser


def test_report_html_renders_with_every_image_and_no_console_error(tmp_path):
    full = make_run(tmp_path / "full")
    partial = make_run(tmp_path / "partial", stages=("data", "pretrain"))
    write_report(str(full))
    write_report(str(partial))
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><head><title>b</title></head><body>"
        '<img src="missing.png"><script>undefinedFunction()</script></body></html>'
    )
    with Browser() as browser:
        page = browser.load(full / "report" / "index.html")
        half = browser.load(partial / "report" / "index.html")
        bad = browser.load(broken)

    assert page.title == "raylm run report: full"
    assert {
        "Stages",
        "Data funnel",
        "Tokenizer",
        "Pretraining",
        "Fine-tuning",
        "Compression",
        "Serving",
        "Recipe",
    } <= set(page.headings)
    # funnel, pretrain loss, finetune loss, DPO margins, Pareto, serving latency
    assert len(page.images) == 6, page.images
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in page.images), page.images
    assert page.errors == []

    assert len(half.images) == 2 and all(i["naturalWidth"] > 0 for i in half.images), half.images
    assert half.errors == []

    assert bad.images[0]["naturalWidth"] == 0
    assert any("missing.png" in e for e in bad.errors), bad.errors
    assert any("exception" in e for e in bad.errors), bad.errors
