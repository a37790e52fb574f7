"""The tokenize stage's output, as pretraining reads it.

`<tokenize>/` holds `tokenizer/` (a Hugging Face tokenizer folder), `train/` and `heldout/` (Parquet shards
of packed fixed-length sequences: `input_ids` list<int32>, `attention_mask` list<int8>, `position_ids`
list<int32>) and `stats.json`. `inspect_token_data()` checks such a folder from its Parquet footers and one
row group (nothing is loaded whole) and says what is wrong with it, naming the recipe key.

`write_token_data()` writes a folder of the same format from a list of texts (a byte-level BPE trained on
them, documents packed with eos separators and position resets): the fixture of the tests and the
benchmarks, which must not depend on the data stage's own code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.run_folder import _fs, join, read_json

COLUMNS = ("input_ids", "attention_mask", "position_ids")
SEQUENCE_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("attention_mask", pa.list_(pa.int8())),
        ("position_ids", pa.list_(pa.int32())),
    ]
)


class TokenDataError(ValueError):
    """A token folder pretraining cannot use; `problems` name the recipe key and what is wrong."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class TokenData:
    root: str
    seq_len: int
    train_rows: int
    heldout_rows: int
    tokenizer_size: int
    """len(tokenizer) of `tokenizer/`."""
    max_token_id: int
    """Largest token id in the first row group of the first train shard (a cheap consistency probe)."""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_dir(self) -> str:
        return join(self.root, "tokenizer")

    @property
    def train_dir(self) -> str:
        return join(self.root, "train")

    @property
    def heldout_dir(self) -> str:
        return join(self.root, "heldout")


def parquet_files(folder: str) -> list[str]:
    """Parquet files under a folder (local or URI), sorted; [] when it does not exist."""
    fs, path = _fs(folder)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if "://" in folder:
        scheme = folder.split("://", 1)[0]
        return [f"{scheme}://{f}" for f in files]
    return files


def _rows(files: list[str]) -> int:
    total = 0
    for f in files:
        fs, path = _fs(f)
        with fs.open_input_file(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def inspect_token_data(root: str, key: str = "pretrain.data") -> TokenData:
    """Check a token folder (see module docs); raise `TokenDataError` naming `key` for what is wrong."""
    problems: list[str] = []
    fs, path = _fs(root)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise TokenDataError([f"{key}: {root}: no such folder (run the tokenize stage: `raylm data RECIPE`)"])
    tok_dir = join(root, "tokenizer")
    tokenizer_size = 0
    try:
        tokenizer_size = len(load_tokenizer(tok_dir))
    except Exception as exc:
        problems.append(
            f"{key}: {tok_dir}: not a loadable Hugging Face tokenizer folder ({type(exc).__name__}: "
            f"{str(exc)[:200]})"
        )
    train_files, heldout_files = parquet_files(join(root, "train")), parquet_files(join(root, "heldout"))
    train_rows, heldout_rows = _rows(train_files), _rows(heldout_files)
    if train_rows == 0:
        problems.append(
            f"{key}: {join(root, 'train')}: the training set is empty (no Parquet rows): nothing to train on"
        )
    seq_len, max_id = 0, -1
    stats = read_json(join(root, "stats.json")) or {}
    if train_rows:
        first = next(f for f in train_files if _rows([f]))
        ffs, fpath = _fs(first)
        with ffs.open_input_file(fpath) as handle:
            pf = pq.ParquetFile(handle)
            missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
            if missing:
                problems.append(
                    f"{key}: {first}: missing column(s) {', '.join(missing)} (expected packed "
                    f"sequences with {', '.join(COLUMNS)})"
                )
            else:
                group = pf.read_row_group(0, columns=list(COLUMNS))
                ids = group.column("input_ids").combine_chunks()
                lengths = np.unique(pc_list_lengths(ids))
                if len(lengths) != 1:
                    problems.append(
                        f"{key}: {first}: sequences of different lengths {lengths[:5].tolist()}: "
                        "expected packed fixed-length sequences"
                    )
                seq_len = int(lengths.max())
                max_id = int(np.max(ids.flatten().to_numpy())) if len(ids) else -1
        declared = stats.get("seq_len")
        if declared and seq_len and int(declared) != seq_len:
            problems.append(f"{key}: stats.json says seq_len {declared} but the rows hold {seq_len} tokens")
    stats_vocab = (stats.get("tokenizer") or {}).get("vocab_size")
    if tokenizer_size and stats_vocab and int(stats_vocab) != tokenizer_size:
        problems.append(
            f"{key}: tokenizer/vocab mismatch: the data was tokenized with a {stats_vocab}-token "
            f"vocabulary (stats.json) but tokenizer/ holds {tokenizer_size} tokens"
        )
    if tokenizer_size and max_id >= tokenizer_size:
        problems.append(
            f"{key}: tokenizer/vocab mismatch: token id {max_id} in {join(root, 'train')} is outside "
            f"the tokenizer's {tokenizer_size} tokens (the data was tokenized with another "
            "tokenizer)"
        )
    if problems:
        raise TokenDataError(problems)
    return TokenData(
        root=root,
        seq_len=seq_len,
        train_rows=train_rows,
        heldout_rows=heldout_rows,
        tokenizer_size=tokenizer_size,
        max_token_id=max_id,
        stats=stats,
    )


def pc_list_lengths(arr: pa.ListArray) -> np.ndarray:
    offsets = arr.offsets.to_numpy()
    return np.diff(offsets)


def load_tokenizer(folder: str):
    """A Hugging Face tokenizer from a local folder (an `s3://` folder is copied to a temp dir first)."""
    from transformers import AutoTokenizer

    if "://" in folder:
        import tempfile

        local = tempfile.mkdtemp(prefix="tokenizer-")
        pafs.copy_files(folder, local)
        folder = local
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def rows_to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    """Packed-sequence Arrow rows -> {column: [rows, seq_len] array} without a Python loop."""
    out = {}
    for name in COLUMNS:
        col = table.column(name).combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False)
        out[name] = flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 0)
    return out


# ------------------------------------------------------------------------------------------------
# The fixture writer (tests, benchmarks)


def pack_documents(docs: list[list[int]], seq_len: int, eos_id: int, pad_id: int, bos_id: int | None = None):
    """Concatenate documents (each [bos] + tokens + eos), cut into seq_len rows, pad the last one;
    position_ids restart at every document start and at every row start."""
    ids, pos = [], []
    for doc in docs:
        toks = ([bos_id] if bos_id is not None else []) + list(doc) + [eos_id]
        ids += toks
        pos += list(range(len(toks)))
    n_rows = max(1, -(-len(ids) // seq_len))
    total = n_rows * seq_len
    mask = [1] * len(ids) + [0] * (total - len(ids))
    pos = pos + [0] * (total - len(pos))
    ids = ids + [pad_id] * (total - len(ids))
    ids_a = np.asarray(ids, np.int32).reshape(n_rows, seq_len)
    mask_a = np.asarray(mask, np.int8).reshape(n_rows, seq_len)
    pos_a = np.asarray(pos, np.int64).reshape(n_rows, seq_len)
    # a document continuing into the next row restarts its positions there
    for r in range(1, n_rows):
        row = pos_a[r]
        if row[0] != 0:
            first_start = np.argmax(row == 0) if (row == 0).any() else seq_len
            row[:first_start] -= row[0]
    return ids_a, mask_a, pos_a.astype(np.int32)


def _table(ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> pa.Table:
    n, length = ids.shape
    offsets = pa.array(np.arange(0, (n + 1) * length, length, dtype=np.int32), pa.int32())

    def lists(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), kind))

    return pa.Table.from_arrays(
        [lists(ids, pa.int32()), lists(mask, pa.int8()), lists(pos, pa.int32())], schema=SEQUENCE_SCHEMA
    )


def write_token_data(
    out_dir: str,
    texts: list[str],
    seq_len: int = 64,
    vocab_size: int = 512,
    heldout_fraction: float = 0.1,
    shards: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a tokenize-stage-format folder (tokenizer/, train/, heldout/, stats.json) from `texts`."""
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    root = Path(out_dir)
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    hf.save_pretrained(str(root / "tokenizer"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_held = max(1, int(len(texts) * heldout_fraction))
    splits = {"heldout": [texts[i] for i in order[:n_held]], "train": [texts[i] for i in order[n_held:]]}
    stats: dict[str, Any] = {
        "seq_len": seq_len,
        "tokenizer": {
            "vocab_size": len(hf),
            "eos_id": hf.eos_token_id,
            "pad_id": hf.pad_token_id,
            "bos_id": hf.bos_token_id,
        },
    }
    for split, docs in splits.items():
        ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
        ids_a, mask_a, pos_a = pack_documents(ids, seq_len, hf.eos_token_id, hf.pad_token_id, hf.bos_token_id)
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        parts = np.array_split(np.arange(len(ids_a)), shards if split == "train" else 1)
        for i, part in enumerate(parts):
            if len(part):
                pq.write_table(
                    _table(ids_a[part], mask_a[part], pos_a[part]), str(folder / f"part-{i:05d}.parquet")
                )
        stats[split] = {"docs": len(docs), "sequences": int(len(ids_a)), "tokens": int(mask_a.sum())}
    (root / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats
