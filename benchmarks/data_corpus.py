"""The benchmark's input: N documents built from the bundled corpus (paragraphs; bible verses), written
as JSON Lines shards, with what real crawls have in them: exact and near duplicates, PII, a numeric
column with missing values, outliers and wrong types, corrupt lines and invalid UTF-8."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from pipelines.assets import asset_paths

_PARAGRAPHS = re.compile(r"\n\s*\n")
SHARD_DOCS = 50_000  # documents per shard at most, past 16 shards


def paragraphs(corpus_dir: Path | None = None) -> list[tuple[str, str]]:
    """(source, paragraph) pairs of 8..400 words from every corpus file, in a fixed order."""
    corpus_dir = corpus_dir or asset_paths().corpus
    out = []
    for path in sorted(corpus_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                pieces = (
                    rec["text"].split("\n")
                    if rec.get("source") == "bible_kjv"
                    else _PARAGRAPHS.split(rec["text"])
                )
                for p in pieces:
                    p = p.strip()
                    if 8 <= len(p.split()) <= 400:
                        out.append((rec.get("source", path.stem), p))
    if not out:
        raise FileNotFoundError(f"no corpus under {corpus_dir}: run `raylm setup`")
    return out


def build(n_docs: int, out_dir: Path, seed: int = 0, shards: int | None = None) -> dict:
    """Write `n_docs` records as `shards` JSONL files in `out_dir`; return what was injected. By default 16
    shards, and more past 800k documents so that no shard holds more than 50k (about 11.6 MB), as a
    crawl's files keep their size while their number grows."""
    shards = shards or max(16, -(-n_docs // SHARD_DOCS))
    rng = random.Random(seed)
    paras = paragraphs()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [(out_dir / f"part-{i:03d}.jsonl").open("wb") for i in range(shards)]
    injected = {
        "exact_duplicates": 0,
        "near_duplicates": 0,
        "pii": 0,
        "corrupt_json": 0,
        "bad_utf8": 0,
        "bad_type": 0,
        "missing_score": 0,
        "outliers": 0,
    }
    texts: list[str] = []
    for k in range(n_docs):
        source, text = paras[k % len(paras)]
        if k >= len(paras):
            # Past the corpus: the first half of this paragraph and the second half of another, so the
            # documents stay as long as the corpus's on average and only their number grows with N
            # (joining two whole paragraphs made them 1.6x longer, which mixed length into the growth).
            # The partner depends on the round (k // len(paras)) too: with k alone, document k and
            # k + len(paras) were the same text, so past 2x the corpus most "documents" were duplicates.
            rnd, j = divmod(k, len(paras))
            head = text.split()
            tail = paras[(j * 7919 + rnd * 104_729 + 13) % len(paras)][1].split()
            text = " ".join(head[: len(head) // 2] + tail[len(tail) // 2 :])
        r = rng.random()
        if texts and r < 0.03:
            text = texts[rng.randrange(len(texts))]
            if rng.random() < 0.5:
                text = "  " + text.upper() + "\n"
            injected["exact_duplicates"] += 1
        elif texts and r < 0.05:
            base = texts[rng.randrange(len(texts))]
            words = base.split()
            if len(words) >= 40:
                text = " ".join(words[:-1] + ["indeed"])
                injected["near_duplicates"] += 1
        elif r < 0.06:
            text = f"{text} Contact j.smith{k}@example.com or call 555-123-{k % 10000:04d}."
            injected["pii"] += 1
        texts.append(text)
        score: object = round(rng.gauss(50, 10), 3)
        r2 = rng.random()
        if r2 < 0.02:
            score = None
            injected["missing_score"] += 1
        elif r2 < 0.023:
            score = round(rng.choice([-1, 1]) * rng.uniform(400, 900), 3)
            injected["outliers"] += 1
        elif r2 < 0.024:
            score = "high"
            injected["bad_type"] += 1
        rec = {"id": k, "text": text, "source": source, "n_words": len(text.split()), "score": score}
        line = json.dumps(rec, ensure_ascii=False).encode("utf-8")
        r3 = rng.random()
        if r3 < 0.0005:
            line = line[: len(line) // 2]
            injected["corrupt_json"] += 1
        elif r3 < 0.001:
            line = line[:10] + b"\xff\xfe" + line[10:]
            injected["bad_utf8"] += 1
        files[k % shards].write(line + b"\n")
    for f in files:
        f.close()
    return injected
