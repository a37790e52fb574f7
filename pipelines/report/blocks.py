"""The report's document model: plain blocks (`render.py` turns them into Markdown and HTML, so both
formats always show the same thing), and the small helpers every section uses to fill them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_RUN = "not run"


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Image:
    file: str
    """File name inside the report folder (linked relatively, so the folder can be moved or zipped)."""
    alt: str


@dataclass
class Code:
    text: str
    summary: str | None = None
    """Set: shown collapsed under this summary (HTML `<details>`)."""


Block = Para | Table | Image | Code


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)


def fmt(v: Any, digits: int = 4) -> str:
    """Numbers for people: thousands separators for integers, 4 significant digits for floats."""
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"
    return str(v)


def figure(out: Path, name: str, alt: str, draw: Callable[[Path], bool], missing: str) -> Block:
    try:
        return Image(name, alt) if draw(out / name) else Para(missing)
    except Exception as exc:  # a figure is a convenience: the numbers are in the tables
        return Para(f"figure {name} could not be drawn: {type(exc).__name__}: {exc}")


def kv(pairs: list[tuple[str, Any]]) -> Table:
    return Table(["", "value"], [[k, fmt(v)] for k, v in pairs if v is not None])


def get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d
