"""The count collector: reports sent without waiting are read once complete (`Reporter.settled`), and the
cleaning stage's completeness rule (`counts_complete`) tells a finished count from one still arriving."""

from __future__ import annotations

import threading
import time

from pipelines.data.stage import counts_complete
from pipelines.data.stats import Reporter, StatsCollector


def test_settled_waits_for_late_reports():
    collector = StatsCollector()
    reporter = Reporter(collector, remote=False)
    reporter.send([("op:0:x", {"rows_in": 10, "rows_out": 7})])

    def late():  # a report still on its way when the pass ends
        time.sleep(0.3)
        reporter.send([("op:0:x", {"rows_in": 5, "rows_out": 5})])

    threading.Thread(target=late).start()
    t0 = time.monotonic()
    counts, complete = reporter.settled(lambda c: c.get("op:0:x", {}).get("rows_in") == 15, timeout_s=5)
    assert complete and counts["op:0:x"] == {"rows_in": 15, "rows_out": 12}
    assert 0.25 < time.monotonic() - t0 < 5


def test_settled_gives_up_after_the_timeout():
    reporter = Reporter(StatsCollector(), remote=False)
    reporter.send([("op:0:x", {"rows_in": 1})])
    t0 = time.monotonic()
    counts, complete = reporter.settled(lambda c: False, timeout_s=0.2)
    assert not complete and counts == {"op:0:x": {"rows_in": 1}}
    assert time.monotonic() - t0 >= 0.2


def _stats(balanced: bool, last_rows_out: int, rows_out: int = 90) -> dict:
    return {
        "balanced": balanced,
        "rows_out": rows_out,
        "inputs": [{"rows_out": 100}],
        "operators": [{"rows_out": 95}, {"rows_out": last_rows_out}],
    }


def test_counts_complete_needs_balance_and_the_last_steps_rows():
    assert counts_complete(_stats(True, 90))
    assert not counts_complete(_stats(False, 90))  # a batch's drops not in yet
    assert not counts_complete(_stats(True, 80))  # a batch that dropped nothing not in yet
    no_ops = {
        "balanced": True,
        "rows_out": 100,
        "inputs": [{"rows_out": 60}, {"rows_out": 40}],
        "operators": [],
    }
    assert counts_complete(no_ops)
    assert not counts_complete({**no_ops, "inputs": [{"rows_out": 60}]})
