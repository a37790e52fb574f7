"""The recipe's `data` and `tokenizer` sections.

```yaml
data:
  inputs:
    - {path: "assets:corpus/fortunes.jsonl"}
    - {path: "data/table.csv", format: csv}
  columns: {source: str, score: float}
  operators:
    - {op: clean_special_characters}
    - {op: quality_filter, min_words: 5}
    - {op: zscore_outliers, columns: [score], threshold: 3}
tokenizer:
  vocab_size: 8000
  seq_len: 256
```

Operators are applied in the listed order. A recipe whose operators name a column the data does not have
at that step (declared columns plus what earlier operators add, minus what they may drop), or an unknown
operator, fails when the recipe is loaded, naming it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config_base import SectionConfig
from pipelines.data.ops import AnyOperator
from pipelines.data.ops.base import ColumnType

InputFormat = Literal["auto", "jsonl", "csv", "parquet", "text", "hf"]


class InputConfig(SectionConfig):
    """One input: a file, a folder, or a glob, local or `s3://`."""

    path: str
    """File, folder or glob (`data/*.jsonl`); `assets:corpus/x.jsonl` names a file in the asset cache; local
    paths, `~`, `$VARS` and `s3://bucket/prefix` work."""
    format: InputFormat = "auto"
    """jsonl (one JSON object per line), csv (header row), parquet, text (plain text files), hf (a Hugging
    Face dataset saved with `save_to_disk`). auto: from the file extension (`.jsonl`/`.json`, `.csv`,
    `.parquet`, `.txt`/`.md`/`.rst`), or hf for a folder holding `state.json` or `dataset_dict.json`."""
    text_field: str | None = None
    """Field (JSON key, CSV column, Parquet column) holding the text when it is not named like
    `data.text_column`; it is renamed to the text column."""
    text_unit: Literal["file", "paragraph", "line"] = "file"
    """For text files: one record per file, per paragraph (blank-line separated) or per non-blank line."""
    encoding: str = "utf-8"
    """Encoding of jsonl, csv and text files; undecodable records go to the quarantine."""
    split: str | None = None
    """For an hf DatasetDict: which split to read (required when it has several)."""
    limit: int | None = Field(default=None, ge=1)
    """Read at most this many records from this input (in file order), e.g. to size a quickstart."""


class DataConfig(SectionConfig):
    """The data stage: read the inputs, apply the operators in order, write cleaned Parquet."""

    inputs: list[InputConfig] = Field(min_length=1)
    """What to read; records of every input are cleaned together."""
    text_column: str | None = "text"
    """The text column (a string column every record must have). None: tabular data without text."""
    columns: dict[str, ColumnType] = {}
    """Other columns to keep, with their types (str, float, int, bool). A value of the wrong type (e.g.
    "abc" in a float column) sends its record to the quarantine; a missing value is kept as missing. Fields
    not listed here are not kept."""
    operators: list[AnyOperator] = []
    """Cleaning operators, applied in this order; each is `{op: <name>, ...its keys}` (`raylm keys data`
    lists them; docs/data.md describes each)."""
    rows_per_file: int = Field(default=100_000, ge=1)
    """Most rows per cleaned Parquet file."""
    batch_size: int = Field(default=1024, ge=1)
    """Rows per batch handed to an operator."""
    block_mb: int = Field(default=16, ge=1)
    """Largest block Ray Data builds in this stage, in MiB (its `target_max_block_size`; Ray's default is
    128). A task that cleans and writes holds one output block at a time (`parquet_sink.py`) and reads
    at least one block: smaller blocks bound a worker's memory (measured on the data benchmark, 800k
    documents, before that sink: the largest worker 0.66 GB at 16 against 0.88 GB at 128; the run's peak
    2.2 against 2.5 GB)."""
    keep_checkpoints: bool = False
    """Keep the intermediate Parquet checkpoints (written before operators that need the whole dataset)
    in `<stage>/_work/` instead of deleting them at the end."""

    @field_validator("columns")
    @classmethod
    def _no_reserved(cls, value: dict[str, ColumnType]) -> dict[str, ColumnType]:
        for name in value:
            if name == "row_id" or name.startswith("_"):
                raise ValueError(f"column name '{name}' is reserved (row_id and names starting with '_')")
        return value

    @model_validator(mode="after")
    def _columns_flow(self) -> DataConfig:
        problems = []
        if self.text_column and self.text_column in self.columns and self.columns[self.text_column] != "str":
            problems.append(f"text column '{self.text_column}' is declared {self.columns[self.text_column]}")
        if not self.text_column and any(i.format == "text" for i in self.inputs):
            problems.append("text inputs need a text column (text_column is null)")
        schema = self.initial_schema()
        droppable: dict[str, str] = {}  # column -> the operator that may drop it
        for i, op in enumerate(self.operators):
            where = f"operators[{i}] ({op.op})"
            for name in sorted((op.reads() or set()) & set(droppable)):
                problems.append(
                    f"{where}: needs column '{name}', which {droppable[name]} may drop; "
                    f"list the columns that step may drop with `columns:`"
                )
            problems += [f"{where}: {p}" for p in op.check(schema)]
            schema.update(op.writes())
            removed = op.may_remove()
            if removed is None:
                droppable.update({c: where for c in schema if c not in ("row_id", self.text_column)})
            else:
                droppable.update({c: where for c in removed})
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def initial_schema(self) -> dict[str, ColumnType]:
        """Columns every record has after reading: row_id, the text column, the declared columns."""
        schema: dict[str, ColumnType] = {"row_id": "int"}
        if self.text_column:
            schema[self.text_column] = "str"
        schema.update({k: v for k, v in self.columns.items() if k != self.text_column})
        return schema


class TokenizerConfig(SectionConfig):
    """The tokenize stage: train (or take) a tokenizer, tokenize the cleaned text, pack it into fixed-length
    sequences with document separators, and write train and held-out Parquet shards."""

    path: str | None = None
    """An existing Hugging Face tokenizer folder to use instead of training one (copied into the stage
    folder). None: train a byte-level BPE on the cleaned text."""
    vocab_size: int = Field(default=8000, ge=300)
    """Vocabulary size of the trained BPE, special tokens included (at least 256 bytes + specials)."""
    min_frequency: int = Field(default=2, ge=1)
    """A pair must occur this often to be merged."""
    max_train_chars: int | None = Field(default=50_000_000, ge=1000)
    """Train the BPE on a random sample of documents holding about this many characters (all documents
    when there are fewer). None: all of them."""
    bos_token: str = "<s>"
    """Beginning-of-sequence token."""
    eos_token: str = "</s>"
    """End-of-sequence token: separates packed documents."""
    pad_token: str = "<pad>"
    """Padding token (attention mask 0)."""
    unk_token: str = "<unk>"
    """Unknown token (a byte-level BPE never needs it; Hugging Face tools expect one)."""
    chat_start_token: str = "<|im_start|>"
    """Opens a chat turn in the chat template (ChatML)."""
    chat_end_token: str = "<|im_end|>"
    """Closes a chat turn."""
    extra_special_tokens: list[str] = []
    """More special tokens to reserve in the vocabulary."""
    chat_template: str | None = None
    """Jinja chat template saved with the tokenizer. None: ChatML with `chat_start_token`/`chat_end_token`
    (`<|im_start|>role\\ncontent<|im_end|>\\n` per message)."""
    seq_len: int = Field(default=256, ge=8)
    """Tokens per packed training sequence."""
    add_bos: bool = False
    """Start each document with `bos_token` (documents are always followed by `eos_token`)."""
    heldout_fraction: float = Field(default=0.01, ge=0, lt=1)
    """Share of documents (chosen by a seeded hash of their row_id) that go to `heldout/` instead of
    `train/`; a document is never split between the two."""
    shuffle: bool = True
    """Write the train sequences in a seeded random order (Ray Data's `random_shuffle`). Pretraining
    streams them in file order with only a small local shuffle buffer, so without this a corpus read
    source by source is also trained source by source (the quickstart's first 150 steps saw only the
    Bible). The held-out split keeps its order."""
    column: str | None = None
    """Text column to tokenize. None: the data section's `text_column`."""
    input: str | None = None
    """A folder of Parquet files with the text column to tokenize. None: this run's data stage output."""
    batch_size: int = Field(default=1024, ge=1)
    """Documents packed together; each batch's last sequence is padded."""
    rows_per_file: int = Field(default=8192, ge=1)
    """Most sequences per Parquet shard."""

    @model_validator(mode="after")
    def _tokens_distinct(self) -> TokenizerConfig:
        specials = self.special_tokens()
        if len(set(specials)) != len(specials):
            raise ValueError(f"special tokens must be distinct, got {specials}")
        return self

    def special_tokens(self) -> list[str]:
        """Every special token, in vocabulary order (ids 0, 1, 2, ...)."""
        return [
            self.pad_token,
            self.unk_token,
            self.bos_token,
            self.eos_token,
            self.chat_start_token,
            self.chat_end_token,
            *self.extra_special_tokens,
        ]

    def resolved_chat_template(self) -> str:
        if self.chat_template is not None:
            return self.chat_template
        start, end = self.chat_start_token, self.chat_end_token
        return (
            "{% for message in messages %}{{ '"
            + start
            + "' + message['role'] + '\\n' + message['content'] + '"
            + end
            + "' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '"
            + start
            + "assistant\\n' }}{% endif %}"
        )
