"""compress.calibration_text: calibration windows drawn in turn from several files, the held-out file's
after its evaluation windows; a missing file is refused by name before work starts."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from pipelines.compress.checks import CompressInputError
from pipelines.compress.config import CompressConfig
from pipelines.compress.stage import preflight
from pipelines.compress.text import interleaved_calibration, token_windows, training_windows
from tests.unit.train.conftest import pydoc_texts


@pytest.fixture()
def other_file(tmp_path):
    path = tmp_path / "other.jsonl"
    with path.open("w") as f:
        for text in reversed(pydoc_texts(80)):
            f.write(json.dumps({"text": text.upper()}) + "\n")
    return str(path)


@pytest.fixture()
def tok(tiny_base):
    t = AutoTokenizer.from_pretrained(tiny_base)
    t.model_max_length = 10**9
    return t


def test_windows_alternate_between_the_files(tok, heldout_file, other_file):
    eval_w, calib = interleaved_calibration(tok, [heldout_file, other_file], heldout_file, 64, 256, 5)
    ref_eval, ref_held = token_windows(tok, heldout_file, 64, 256, 3)
    ref_other = training_windows(tok, other_file, 64, 3)
    assert torch.equal(eval_w, ref_eval)  # evaluation is always the held-out file's first windows
    assert calib.shape == (5, 64)
    expected = [ref_held[0], ref_other[0], ref_held[1], ref_other[1], ref_held[2]]
    for got, want in zip(calib, expected, strict=True):
        assert torch.equal(got, want)
    assert not any(torch.equal(w, e) for w in calib for e in eval_w)  # never an evaluation window


def test_without_calibration_text_it_is_the_heldout_split(tok, heldout_file):
    eval_w, calib = interleaved_calibration(tok, [heldout_file], heldout_file, 64, 256, 4)
    ref_eval, ref_calib = token_windows(tok, heldout_file, 64, 256, 4)
    assert torch.equal(eval_w, ref_eval) and torch.equal(calib, ref_calib)


def test_a_missing_calibration_file_is_named(tiny_base, heldout_file, tmp_path):
    cfg = CompressConfig(
        heldout=heldout_file,
        calibration_text=[heldout_file, str(tmp_path / "nope.jsonl")],
        methods=[{"method": "quantize", "scheme": "W8A8"}],
    )
    missing = r"compress.calibration_text\[1\]: .*nope.jsonl is not a file"
    with pytest.raises(CompressInputError, match=missing):
        preflight(cfg, tiny_base)
