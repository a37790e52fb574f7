"""Fine-tuning data: instruction pairs and preference triples, read, checked, templated and tokenized.

Everything here runs in the driver before any worker starts (instruction sets are small: thousands of
records), so a bad file is refused, and bad records are quarantined and counted, before training.

- A record is `{instruction, output}` (or `{prompt, response}`) for SFT and `{prompt, chosen, rejected}`
  for DPO. Records with an empty or missing field, a rejected answer equal to the chosen one, or longer
  than `max_seq_len` once templated, go to the quarantine with the reason; nothing is dropped silently.
- The prompt is rendered with the tokenizer's chat template (a user turn plus the assistant's generation
  prompt) or, for a tokenizer without one, `SIMPLE_TEMPLATE`. The response is what the full conversation
  adds after the prompt (the template's end-of-turn tokens included); with the simple template it is the
  answer plus eos. Prompt and response are tokenized separately and concatenated, so the boundary between
  them is exact, and the labels are -100 on the prompt: the loss is on the response tokens only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100
"""Label of a position whose next token is not trained on (cross_entropy's ignore_index)."""

SIMPLE_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
"""The prompt for tokenizers without a chat template (Alpaca's layout, without its preamble)."""


class FinetuneDataError(ValueError):
    """Fine-tuning data or a template that cannot be used; `problems` name the key and file."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class Quarantine:
    """Records that could not be used, with the reason (written to the stage's `quarantine/`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, where: str, reason: str, record: Any) -> None:
        self.rows.append({"where": where, "reason": reason, "record": record})

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            key = r["reason"].split(":")[0]
            out[key] = out.get(key, 0) + 1
        return out


# ------------------------------------------------------------------------------------------------
# Reading


def read_records(paths: list[str], key: str = "finetune.data") -> list[tuple[str, Any]]:
    """(where, record) for every record of the JSONL / Parquet files; unparsable JSON lines are returned
    as `(where, None)` so the caller quarantines them."""
    from pipelines.assets import resolve_path

    out: list[tuple[str, Any]] = []
    problems = []
    for raw in paths:
        path = Path(resolve_path(raw))
        if not path.is_file():
            problems.append(f"{key}: {raw}: no such file")
            continue
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            for i, rec in enumerate(pq.read_table(path).to_pylist()):
                out.append((f"{path.name}:row {i}", rec))
            continue
        if path.suffix not in (".jsonl", ".json"):
            problems.append(f"{key}: {raw}: expected a .jsonl or .parquet file")
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((f"{path.name}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                out.append((f"{path.name}:{n}", {"_unparsable": line[:200], "_error": str(exc)}))
    if problems:
        raise FinetuneDataError(problems)
    return out


def _text(record: dict, *names: str) -> str | None:
    for n in names:
        if n in record:
            v = record[n]
            return v if isinstance(v, str) else None
    return None


@dataclass(frozen=True)
class Example:
    """One usable record: a prompt (the instruction), its reference answer and, for DPO, a rejected one."""

    prompt: str
    chosen: str
    rejected: str | None = None


def normalize(records: list[tuple[str, Any]], quarantine: Quarantine) -> list[Example]:
    """Records -> examples; records with missing or empty fields are quarantined."""
    out = []
    for where, rec in records:
        if not isinstance(rec, dict) or "_unparsable" in rec:
            quarantine.add(where, "unparsable: not a JSON object", rec)
            continue
        prompt = _text(rec, "instruction", "prompt")
        chosen = _text(rec, "output", "response", "chosen")
        rejected = _text(rec, "rejected")
        if "rejected" in rec and not (rejected or "").strip():
            quarantine.add(where, "empty field: rejected", rec)
            continue
        missing = [
            n for n, v in (("instruction/prompt", prompt), ("output/chosen", chosen)) if not (v or "").strip()
        ]
        if missing:
            quarantine.add(where, f"empty field: {', '.join(missing)}", rec)
            continue
        if rejected is not None and rejected.strip() == chosen.strip():  # no preference to learn
            quarantine.add(where, "identical answers: chosen equals rejected", rec)
            continue
        out.append(Example(prompt.strip(), chosen.strip(), rejected.strip() if rejected else None))
    return out


def split_heldout(examples: list[Example], n: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, heldout): whole instructions go to the held-out side until it has at least `n` examples (an
    instruction with several answers is never on both sides)."""
    by_prompt: dict[str, list[Example]] = {}
    for ex in examples:
        by_prompt.setdefault(ex.prompt, []).append(ex)
    prompts = sorted(by_prompt)
    random.Random(seed).shuffle(prompts)
    held: list[Example] = []
    train: list[Example] = []
    for p in prompts:
        (held if len(held) < n else train).extend(by_prompt[p])
    return train, held


def build_preferences(examples: list[Example], how: str, seed: int) -> list[Example]:
    """Give every example without a rejected answer one: `other_answer` takes the answer of an example
    with a different prompt and a different answer; `shuffled_words` shuffles the answer's words (an
    answer of one word gets another example's answer instead: shuffling cannot change it)."""
    rng = random.Random(seed)
    answers = [ex.chosen for ex in examples]
    out = []
    for i, ex in enumerate(examples):
        if ex.rejected is not None:
            out.append(ex)
            continue
        rejected = None
        words = ex.chosen.split()
        if how == "shuffled_words" and len(set(words)) > 1:
            for _ in range(10):
                shuffled = words[:]
                rng.shuffle(shuffled)
                if shuffled != words:
                    rejected = " ".join(shuffled)
                    break
        if rejected is None:
            for _ in range(100):
                j = rng.randrange(len(examples))
                if j != i and examples[j].prompt != ex.prompt and answers[j] != ex.chosen:
                    rejected = answers[j]
                    break
        if rejected is None:
            raise FinetuneDataError(
                ["finetune.data: cannot build a rejected answer: every record has the same prompt or answer"]
            )
        out.append(Example(ex.prompt, ex.chosen, rejected))
    return out


# ------------------------------------------------------------------------------------------------
# Templates and tokenization


@dataclass(frozen=True)
class Template:
    """How a prompt and its response become text."""

    kind: str  # "chat" | "simple"

    def prompt(self, tokenizer, instruction: str) -> str:
        if self.kind == "simple":
            return SIMPLE_TEMPLATE.format(instruction=instruction)
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )

    def response(self, tokenizer, instruction: str, answer: str) -> str:
        """The text after the prompt: the answer and the template's end of turn. The simple template's end
        (eos) is added as an id by `encode`, not as text (a tokenizer may not parse its eos string)."""
        if self.kind == "simple":
            return answer
        prompt = self.prompt(tokenizer, instruction)
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}],
            tokenize=False,
        )
        if not full.startswith(prompt):
            raise FinetuneDataError(
                [
                    "finetune.template: the tokenizer's chat template does not render the prompt (user "
                    "turn + generation prompt) as the start of the conversation (user + assistant turns), "
                    "so the response tokens cannot be told apart; use template: simple"
                ]
            )
        return full[len(prompt) :]


def choose_template(tokenizer, mode: str) -> Template:
    """The recipe's `template` made concrete for this tokenizer; refuses a chat template that is missing
    or does not render a user turn and a generation prompt."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if mode == "chat" and not has_chat:
        raise FinetuneDataError(
            [
                "finetune.template: chat, but the base model's tokenizer has no chat template; "
                "use simple or auto"
            ]
        )
    template = Template("chat" if (mode == "chat" or (mode == "auto" and has_chat)) else "simple")
    if template.kind == "chat":
        try:
            template.response(tokenizer, "ping", "pong")
        except FinetuneDataError:
            raise
        except Exception as exc:  # noqa: BLE001  # a template that fails to render user/assistant turns
            raise FinetuneDataError(
                [
                    "finetune.template: the tokenizer's chat template cannot render a user/assistant "
                    f"turn: {exc}"
                ]
            ) from None
    return template


def encode(tokenizer, template: Template, instruction: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one example: prompt ids then response ids; labels are -100 on the prompt and
    the ids themselves on the response (the model shifts nothing: `response_logprobs` compares logits at t
    with labels at t+1)."""
    prompt_ids = tokenizer(template.prompt(tokenizer, instruction), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(template.response(tokenizer, instruction, answer), add_special_tokens=False)[
        "input_ids"
    ]
    if template.kind == "simple":
        response_ids = [*response_ids, tokenizer.eos_token_id]
        if tokenizer.bos_token_id is not None:  # raylm pretraining starts every document with bos
            prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    ids = [*prompt_ids, *response_ids]
    labels = [IGNORE] * len(prompt_ids) + list(response_ids)
    return ids, labels


@dataclass
class Encoded:
    """Tokenized examples: SFT items are `{"ids", "labels"}`, DPO items `{"chosen": {...}, "rejected":
    {...}}`; `prompts`/`answers` keep the text for the match metrics."""

    items: list[dict[str, Any]]
    prompts: list[str]
    answers: list[str]


def encode_examples(
    tokenizer,
    template: Template,
    examples: list[Example],
    objective: str,
    max_seq_len: int,
    quarantine: Quarantine,
) -> Encoded:
    """Tokenize; examples longer than max_seq_len (either side of a DPO pair) are quarantined."""
    out = Encoded([], [], [])
    for ex in examples:
        ids, labels = encode(tokenizer, template, ex.prompt, ex.chosen)
        item: dict[str, Any] = {"ids": ids, "labels": labels}
        lengths = [len(ids)]
        if objective in ("dpo", "reward"):
            r_ids, r_labels = encode(tokenizer, template, ex.prompt, ex.rejected or "")
            item = {"chosen": item, "rejected": {"ids": r_ids, "labels": r_labels}}
            lengths.append(len(r_ids))
        if max(lengths) > max_seq_len:
            quarantine.add(
                "finetune.data",
                f"too long: {max(lengths)} tokens > max_seq_len {max_seq_len}",
                {"prompt": ex.prompt[:200], "chosen": ex.chosen[:200]},
            )
            continue
        out.items.append(item)
        out.prompts.append(ex.prompt)
        out.answers.append(ex.chosen)
    return out


def collate(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad a list of `{"ids", "labels"}` to the longest: numpy `input_ids`, `attention_mask`,
    `labels` (-100 on padding)."""
    import numpy as np

    n = max(len(it["ids"]) for it in items)
    ids = np.full((len(items), n), pad_id, dtype=np.int64)
    labels = np.full((len(items), n), IGNORE, dtype=np.int64)
    mask = np.zeros((len(items), n), dtype=np.int64)
    for r, it in enumerate(items):
        k = len(it["ids"])
        ids[r, :k] = it["ids"]
        labels[r, :k] = it["labels"]
        mask[r, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_pairs(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """DPO micro-batch: the chosen sequences then the rejected ones, in one padded batch (one forward)."""
    return collate([it["chosen"] for it in items] + [it["rejected"] for it in items], pad_id)
