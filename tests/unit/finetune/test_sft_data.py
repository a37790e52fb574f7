"""Fine-tuning data: response-only labels against a hand computation, the templates, quarantine of bad
records, the held-out split and the preference-pair builder."""

from __future__ import annotations

import pytest

from pipelines.train.sft_data import (
    IGNORE,
    SIMPLE_TEMPLATE,
    Example,
    FinetuneDataError,
    Quarantine,
    Template,
    build_preferences,
    choose_template,
    collate,
    encode,
    encode_examples,
    normalize,
    read_records,
    split_heldout,
)
from tests.unit.finetune.conftest import write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


def test_simple_template_labels_only_the_response(tokenizer):
    ids, labels = encode(tokenizer, Template("simple"), "Say hello to apple.", "Hello, apple!")
    # by hand: bos + the rendered prompt's ids, then the answer's ids and eos
    prompt = tokenizer(SIMPLE_TEMPLATE.format(instruction="Say hello to apple."), add_special_tokens=False)
    answer = tokenizer("Hello, apple!", add_special_tokens=False)["input_ids"]
    expected_ids = [tokenizer.bos_token_id, *prompt["input_ids"], *answer, tokenizer.eos_token_id]
    assert ids == expected_ids
    n_prompt = 1 + len(prompt["input_ids"])
    assert labels == [IGNORE] * n_prompt + [*answer, tokenizer.eos_token_id]
    assert tokenizer.decode([t for t in labels if t != IGNORE], skip_special_tokens=True) == "Hello, apple!"


def test_chat_template_response_is_the_assistant_turn(tokenizer):
    tokenizer = _with_chat_template(tokenizer)
    template = choose_template(tokenizer, "auto")
    assert template.kind == "chat"
    ids, labels = encode(tokenizer, template, "Hi", "Hello there")
    text = tokenizer.decode(ids)
    assert text.startswith("<s>user: Hi\n") or text.startswith("user: Hi\n")
    response = tokenizer.decode([t for t in labels if t != IGNORE])
    assert response == "Hello there</s>\n"  # the answer and the template's end of turn, nothing else


def _with_chat_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}user: {{ m['content'] }}\n"
        "{% else %}assistant: {{ m['content'] }}</s>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tok


def test_templates_that_cannot_work_are_refused(tokenizer):
    with pytest.raises(
        FinetuneDataError, match="finetune.template: chat, but the base model's tokenizer has no"
    ):
        choose_template(tokenizer, "chat")
    assert choose_template(tokenizer, "auto").kind == "simple"  # no chat template: the simple one
    bad = _with_chat_template(tokenizer)
    # a generation prompt that is not the start of the assistant turn: the response cannot be located
    bad.chat_template = bad.chat_template.replace(
        "{% if add_generation_prompt %}assistant: ", "{% if add_generation_prompt %}ASSISTANT> "
    )
    with pytest.raises(FinetuneDataError, match="does not render the prompt"):
        choose_template(bad, "auto")


def test_bad_records_are_quarantined_with_their_reason(tmp_path, tokenizer):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"instruction": "a", "output": "b"},
            {"instruction": "  ", "output": "b"},
            {"prompt": "p", "chosen": "c", "rejected": ""},
            "[1, 2]",
            "{broken",
            {"instruction": "long " * 100, "output": "x"},
            {"prompt": "p", "chosen": "same", "rejected": " same "},
        ],
    )
    q = Quarantine()
    examples = normalize(read_records([str(path)]), q)
    assert [e.prompt for e in examples] == ["a", "long " * 99 + "long"]
    enc = encode_examples(tokenizer, Template("simple"), examples, "sft", 64, q)
    assert len(enc.items) == 1
    assert q.counts() == {"empty field": 2, "unparsable": 2, "identical answers": 1, "too long": 1}
    assert [r["where"] for r in q.rows[:4]] == ["d.jsonl:2", "d.jsonl:3", "d.jsonl:4", "d.jsonl:5"]


def test_missing_or_unknown_files_are_refused(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(FinetuneDataError) as err:
        read_records([str(tmp_path / "none.jsonl"), str(tmp_path / "x.csv")])
    assert err.value.problems == [
        f"finetune.data: {tmp_path / 'none.jsonl'}: no such file",
        f"finetune.data: {tmp_path / 'x.csv'}: expected a .jsonl or .parquet file",
    ]


def test_parquet_records_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": ["q1", "q2"], "output": ["a1", "a2"]}), tmp_path / "d.parquet")
    examples = normalize(read_records([str(tmp_path / "d.parquet")]), Quarantine())
    assert examples == [Example("q1", "a1"), Example("q2", "a2")]


def test_heldout_split_keeps_an_instruction_on_one_side():
    examples = [Example(f"q{i % 5}", f"a{i}") for i in range(20)]  # 5 instructions, 4 answers each
    train, held = split_heldout(examples, 6, seed=0)
    assert len(held) == 8 and len(train) == 12  # two whole instructions
    assert not {e.prompt for e in held} & {e.prompt for e in train}


def test_preference_builder():
    examples = [Example(f"q{i}", f"answer number {i}") for i in range(10)] + [Example("q", "c", "r")]
    other = build_preferences(examples, "other_answer", seed=0)
    assert other[-1] == Example("q", "c", "r")  # a given rejected answer is kept
    for ex in other[:-1]:
        assert ex.rejected != ex.chosen and ex.rejected in {e.chosen for e in examples}
    shuffled = build_preferences(examples, "shuffled_words", seed=0)
    for ex in shuffled[:-1]:
        assert ex.rejected != ex.chosen and sorted(ex.rejected.split()) == sorted(ex.chosen.split())
    with pytest.raises(FinetuneDataError):
        build_preferences([Example("q", "a"), Example("q", "a")], "other_answer", seed=0)


def test_collate_pads_right_and_masks_labels():
    batch = collate(
        [{"ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"ids": [8], "labels": [IGNORE]}], pad_id=0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
