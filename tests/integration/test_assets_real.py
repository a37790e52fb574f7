"""The real prepared asset cache (`make setup`; `$RAYLM_HOME` or ~/.cache/raylm) is usable offline.

These read the actual assets: NLTK tokenizes and lemmatizes from our folder alone, the corpus and the
instruction files hold what their manifests promise, and the reference model loads from its safetensors
folder with plain transformers and answers a chat prompt in English.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest

from cluster.assets.atomic import incomplete_reason
from cluster.assets.checks import check_assets
from cluster.assets.steps import step_named
from pipelines.assets import asset_paths

pytestmark = pytest.mark.assets

PATHS = asset_paths()


def _require(name: str) -> None:
    step = step_named(name)
    reason = incomplete_reason(step.target(PATHS), step.name, step.version)
    assert reason is None, f"asset {name!r} not prepared at {step.target(PATHS)}: {reason} (run `make setup`)"


@pytest.fixture
def only_our_nltk_data(monkeypatch):
    """NLTK searches our folder and nothing else, so a pass cannot come from some other nltk_data."""
    import nltk
    import nltk.tokenize

    monkeypatch.setattr(nltk.data, "path", [str(PATHS.nltk_data)])
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    yield
    nltk.tokenize._get_punkt_tokenizer.cache_clear()


def test_word_and_sentence_tokenize_work_offline(only_our_nltk_data):
    import nltk

    _require("punkt_tab")
    assert nltk.word_tokenize("The cats are running.") == ["The", "cats", "are", "running", "."]
    assert nltk.sent_tokenize("Mr. Brown met Dr. Smith at 5 p.m. on Monday. They talked.") == [
        "Mr. Brown met Dr. Smith at 5 p.m. on Monday.", "They talked."]
    found = nltk.data.find("tokenizers/punkt_tab/english/")
    assert str(found).startswith(str(PATHS.nltk_data))


def test_wordnet_lemmatizer(only_our_nltk_data):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.stem import WordNetLemmatizer

    _require("wordnet")
    lemmatizer = WordNetLemmatizer()
    assert lemmatizer.lemmatize("cats") == "cat"
    assert lemmatizer.lemmatize("geese") == "goose"
    assert lemmatizer.lemmatize("running", pos="v") == "run"
    # Read through a reader on our folder too, so the lexnames file we generated is exercised. (Without
    # an Open Multilingual Wordnet it warns that multilingual lookups are off: expected, not asserted.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reader = WordNetCorpusReader(str(PATHS.nltk_data / "corpora" / "wordnet"), None)
    assert reader.get_version() == "3.0"
    assert reader.synsets("dog")[0].lexname() == "noun.animal"


def test_corpus_has_100k_documents_from_at_least_6_sources():
    _require("corpus")
    manifest = json.loads((PATHS.corpus / "manifest.json").read_text(encoding="utf-8"))
    counts: dict[str, int] = {}
    nbytes = 0
    for path in sorted(PATHS.corpus.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                record = json.loads(line)
                assert record["source"] == path.stem
                assert isinstance(record["text"], str) and record["text"].strip(), f"{path.name}:{i} is empty"
                counts[path.stem] = counts.get(path.stem, 0) + 1
                nbytes += len(record["text"].encode("utf-8"))
    assert len(counts) >= 6, counts
    assert sum(counts.values()) > 100_000, counts
    assert nbytes > 40e6, f"only {nbytes / 1e6:.1f} MB of text"
    assert {k: v["docs"] for k, v in manifest["summary"]["sources"].items()} == counts
    assert min(counts.values()) >= 50, counts


def test_instruction_pairs():
    _require("instructions")
    chat = [json.loads(line) for line in (PATHS.instructions / "chatterbot.jsonl").open(encoding="utf-8")]
    assert len(chat) >= 2000
    assert all(r["instruction"].strip() and r["output"].strip() and r["category"] for r in chat)
    assert all(len(r["instruction"]) > 1 for r in chat)  # no single-character "pairs" from malformed YAML
    evals = [json.loads(line) for line in (PATHS.instructions / "humaneval.jsonl").open(encoding="utf-8")]
    assert len(evals) == 164
    assert evals[0]["task_id"] == "HumanEval/0" and "def " in evals[0]["instruction"]
    assert all(r["output"].strip() for r in evals)


def test_reference_model_loads_from_safetensors_and_answers_in_english():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require("reference_model")
    folder = PATHS.reference_model
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.gguf"))

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.dtype == torch.bfloat16
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    words = re.findall(r"[A-Za-z]+", reply)
    assert len(words) >= 3, reply
    assert sum(len(w) for w in words) / max(1, len(reply.replace(" ", ""))) > 0.7, reply
    assert "Paris" in reply, reply


def test_check_assets_reports_everything_usable(only_our_nltk_data):
    rows = check_assets()
    assert all(ok for ok, _ in rows.values()), rows
