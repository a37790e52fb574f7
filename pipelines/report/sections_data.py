"""Report sections of the data and tokenize stages: the funnel (rows after each operator, dropped and
quarantined by reason) and the tokenizer's statistics."""

from __future__ import annotations

from pathlib import Path

from pipelines.report import plots
from pipelines.report.blocks import NOT_RUN, Para, Section, Table, figure, fmt, get, kv
from pipelines.report.collect import RunData


def data(run: RunData, out: Path) -> Section:
    sec = Section("Data funnel", "data")
    s = run.data_stats
    if "data" not in run.manifests:
        sec.blocks.append(Para(NOT_RUN))
        return sec
    if not isinstance(s, dict):
        m = run.metrics("data")
        sec.blocks += [
            Para("stats.json not recorded; the manifest says:"),
            kv([(k, m.get(k)) for k in ("rows_in", "rows_out", "dropped", "quarantined")]),
        ]
        return sec
    sec.blocks.append(
        Para(s.get("identity") or f"rows in {fmt(s.get('rows_in'))}, rows out {fmt(s.get('rows_out'))}")
    )
    sec.blocks.append(
        figure(
            out,
            "data_funnel.png",
            "rows after each cleaning step and rows dropped by reason",
            lambda p: plots.data_funnel(s, p),
            "no per-step counts recorded",
        )
    )
    inputs = [i for i in s.get("inputs", []) if isinstance(i, dict)]
    if inputs:
        sec.blocks.append(
            Table(
                ["input", "format", "records", "rows out", "quarantined"],
                [
                    [
                        i.get("path"),
                        i.get("format"),
                        fmt(i.get("records")),
                        fmt(i.get("rows_out")),
                        fmt(sum((i.get("quarantined") or {}).values())),
                    ]
                    for i in inputs
                ],
            )
        )
    ops = [o for o in s.get("operators", []) if isinstance(o, dict)]
    if ops:
        sec.blocks.append(
            Table(
                ["#", "operator", "rows in", "rows out", "dropped", "notes"],
                [
                    [
                        o.get("index"),
                        o.get("op"),
                        fmt(o.get("rows_in")),
                        fmt(o.get("rows_out")),
                        ", ".join(f"{k} {fmt(v)}" for k, v in (o.get("dropped") or {}).items()) or "-",
                        ", ".join(f"{k} {fmt(v)}" for k, v in (o.get("counters") or {}).items()),
                    ]
                    for o in ops
                ],
            )
        )
    reasons = {
        **(s.get("dropped") or {}),
        **{f"quarantined: {k}": v for k, v in (s.get("quarantined") or {}).items()},
    }
    if reasons:
        sec.blocks.append(
            Table(
                ["reason", "rows"], [[k, fmt(v)] for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])]
            )
        )
    return sec


def tokenizer(run: RunData, out: Path) -> Section:
    sec = Section("Tokenizer", "tokenizer")
    if "tokenize" not in run.manifests:
        sec.blocks.append(Para(NOT_RUN))
        return sec
    s = run.tokenize_stats if isinstance(run.tokenize_stats, dict) else {}
    m = run.metrics("tokenize")
    tok = s.get("tokenizer") or {}
    trained = tok.get("trained")
    sec.blocks.append(
        kv(
            [
                (
                    "tokenizer",
                    None if trained is None else ("trained on this run's text" if trained else "given"),
                ),
                ("vocabulary", tok.get("vocab_size", m.get("vocab_size"))),
                ("special tokens", ", ".join(tok.get("special_tokens", [])) or None),
                ("training time s", tok.get("train_s")),
                ("documents", s.get("docs", m.get("docs"))),
                ("tokens", s.get("tokens", m.get("tokens"))),
                ("characters per token", s.get("chars_per_token")),
                ("sequence length", s.get("seq_len")),
                ("train sequences", get(s, "train", "sequences") or m.get("sequences")),
                ("held-out sequences", get(s, "heldout", "sequences") or m.get("heldout_sequences")),
                ("padding fraction", s.get("padding_fraction")),
                ("tokens/s", m.get("tokens_per_s")),
            ]
        )
    )
    return sec
