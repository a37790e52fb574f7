"""PII scrubbing: e-mail addresses, credit-card-like numbers (Luhn-checked), IP addresses (v4 and v6,
validated by `ipaddress`) and phone numbers are replaced by placeholders, and each kind is counted.

Kinds are matched in that order (a card number is never also counted as a phone number). Phone numbers
are matched in common written forms only: North-American `(555) 123-4567`, `555-123-4567`,
`555.123.4567` (optionally with `+1`/`1-`), and international numbers written with a leading `+` (8 to
15 digits); a bare run of digits is not a phone number, so years and counts survive.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from pipelines.data.ops.base import RowResult, TextOperator

PiiKind = Literal["email", "credit_card", "ip", "phone"]
ALL_KINDS: tuple[str, ...] = ("email", "credit_card", "ip", "phone")

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w]|\.\d)"
)
IPV6_CANDIDATE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+1|1)[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[.-]\d{4}(?![\w-])"  # North American
    r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-])"  # international with a leading +
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _is_ipv6(match: str) -> bool:
    if match.count(":") < 2 or not any(c in "0123456789abcdefABCDEF" for c in match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


def _is_phone(match: str) -> bool:
    return 8 <= sum(c.isdigit() for c in match) <= 15 if match.startswith("+") else True


_CHECKS = {
    "email": (EMAIL, None),
    "credit_card": (CARD, _is_card),
    "ip": (IPV4, None),
    "ipv6": (IPV6_CANDIDATE, _is_ipv6),
    "phone": (PHONE, _is_phone),
}
# Cheap tests that rule a text out before any regex runs.
_MAY_HOLD = {
    "email": lambda t: "@" in t,
    "credit_card": lambda t: any(c.isdigit() for c in t),
    "ip": lambda t: "." in t,
    "ipv6": lambda t: "::" in t or t.count(":") >= 3,
    "phone": lambda t: any(c.isdigit() for c in t),
}


def scrub(text: str, kinds: tuple[str, ...], placeholders: dict[str, str]) -> tuple[str, dict[str, int]]:
    """Replace PII in `text`; return the new text and the count of each kind replaced."""
    counts: dict[str, int] = {}
    for kind in kinds:
        for check in ("ip", "ipv6") if kind == "ip" else (kind,):
            if not _MAY_HOLD[check](text):
                continue
            pattern, valid = _CHECKS[check]
            n = 0

            def replace(m: re.Match, valid=valid, placeholder=placeholders[kind]) -> str:
                nonlocal n
                if valid is not None and not valid(m.group()):
                    return m.group()
                n += 1
                return placeholder

            text = pattern.sub(replace, text)
            if n:
                counts[kind] = counts.get(kind, 0) + n
    return text, counts


class ScrubPII(TextOperator):
    """Replace e-mail addresses, credit-card numbers, IP addresses and phone numbers with placeholders
    and count each kind (`stats.json`: `pii:<kind>` replacements, `docs_with_pii`)."""

    op: Literal["scrub_pii"] = "scrub_pii"
    """Operator name."""
    kinds: list[PiiKind] = Field(default=list(ALL_KINDS), min_length=1)
    """Which kinds to replace."""
    placeholders: dict[PiiKind, str] = {
        "email": "<EMAIL>",
        "credit_card": "<CREDIT_CARD>",
        "ip": "<IP>",
        "phone": "<PHONE>",
    }
    """Replacement text per kind."""

    def apply(self, df: pd.DataFrame, state: Any = None) -> RowResult:
        kinds = tuple(k for k in ALL_KINDS if k in self.kinds)
        placeholders = {k: self.placeholders.get(k, f"<{k.upper()}>") for k in kinds}
        out, totals, docs = [], {}, 0
        for v in df[self.column].tolist():
            if not isinstance(v, str):
                out.append(v)
                continue
            new, counts = scrub(v, kinds, placeholders)
            out.append(new)
            if counts:
                docs += 1
                for k, n in counts.items():
                    totals[k] = totals.get(k, 0) + n
        df = df.copy(deep=False)
        df[self.output or self.column] = pd.Series(out, index=df.index, dtype="object")
        counters = {f"pii:{k}": n for k, n in totals.items()}
        if docs:
            counters["docs_with_pii"] = docs
        return RowResult(df, counters=counters)
