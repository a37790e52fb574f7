"""PII scrubbing: what is replaced, what is not, and the counts."""

from __future__ import annotations

import ipaddress
import re

import pandas as pd
import pytest

from pipelines.data.ops.pii import ScrubPII, luhn_ok


def _luhn_reference(number: str) -> bool:
    digits = [int(d) for d in number][::-1]
    return (sum(digits[0::2]) + sum(sum(divmod(2 * d, 10)) for d in digits[1::2])) % 10 == 0


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111111",
        "5500005555555559",
        "378282246310005",
        "4111111111111112",
        "1234567812345678",
        "6011111111111117",
    ],
)
def test_luhn_matches_reference(number):
    assert luhn_ok(number) == _luhn_reference(number)


@pytest.mark.parametrize(
    "text,expected,counts",
    [
        ("mail john.doe+x@mail.example.co.uk now", "mail <EMAIL> now", {"email": 1}),
        (
            "call (555) 123-4567 or 555.123.4567 or +1 555-123-4567",
            "call <PHONE> or <PHONE> or <PHONE>",
            {"phone": 3},
        ),
        ("intl +44 20 7946 0958.", "intl <PHONE>.", {"phone": 1}),
        (
            "card 4111 1111 1111 1111, bad 4111 1111 1111 1112",
            "card <CREDIT_CARD>, bad 4111 1111 1111 1112",
            {"credit_card": 1},
        ),
        ("hosts 192.168.0.1, 2001:db8::1 and ::1", "hosts <IP>, <IP> and <IP>", {"ip": 3}),
    ],
)
def test_replacements_and_counts(text, expected, counts):
    res = ScrubPII().apply(pd.DataFrame({"text": [text]}))
    assert res.df["text"].iloc[0] == expected
    assert res.counters == {**{f"pii:{k}": v for k, v in counts.items()}, "docs_with_pii": 1}


@pytest.mark.parametrize(
    "text",
    [
        "In 1999 2000 2001 there were 12345678 people.",
        "Version 1.2.3.4.5 at 12:30:45",
        "Genesis 3:16 and John 3:16",
        "256.1.1.1 is no address",
        "ISBN 978-3-16-148410-0",
    ],
)
def test_no_false_positives(text):
    res = ScrubPII().apply(pd.DataFrame({"text": [text]}))
    assert res.df["text"].iloc[0] == text and res.counters == {}


def test_kinds_and_placeholders_are_configurable():
    op = ScrubPII(kinds=["email"], placeholders={"email": "[mail]"})
    res = op.apply(pd.DataFrame({"text": ["a@b.io 555-123-4567"]}))
    assert res.df["text"].iloc[0] == "[mail] 555-123-4567"


def test_ip_replacements_are_valid_addresses():
    text = "10.0.0.1 300.1.1.1 fe80::1ff:fe23:4567:890a"
    found = re.findall(r"[0-9a-fA-F:.]{7,}", text)
    valid = []
    for f in found:
        try:
            ipaddress.ip_address(f)
            valid.append(f)
        except ValueError:
            pass
    res = ScrubPII(kinds=["ip"]).apply(pd.DataFrame({"text": [text]}))
    assert res.counters["pii:ip"] == len(valid) == 2
