"""A checkpoint's digests: two workers' folders merged as Ray Train merges them load as valid; a file cut
short, a flipped byte, a missing file or a missing rank's list each refuse to load, naming the problem."""

from __future__ import annotations

import shutil

import pytest

from pipelines.train.checkpoint_integrity import CheckpointCorrupt, verify_checksums, write_checksums


@pytest.fixture
def merged(tmp_path):
    """Each rank writes into its own folder; the checkpoint is their union (Ray Train's merge)."""
    out = tmp_path / "checkpoint"
    for rank in range(2):
        d = tmp_path / f"rank{rank}"
        (d / "state").mkdir(parents=True)
        (d / "state" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(bytes(range(256)) * (rank + 3))
        if rank == 0:
            (d / "state" / "mp_rank_00_model_states.pt").write_bytes(b"model" * 1000)
            (d / "latest").write_text("state")
        write_checksums(d, rank, world=2)
        shutil.copytree(d, out, dirs_exist_ok=True)
    return out


def test_an_intact_checkpoint_verifies_on_every_rank(merged):
    assert verify_checksums(merged, 0, 2) == 3
    assert verify_checksums(merged, 1, 2) == 1


def test_a_truncated_file_is_refused_with_its_name(merged):
    f = merged / "state" / "mp_rank_00_model_states.pt"
    f.write_bytes(f.read_bytes()[:100])  # a copy cut short
    with pytest.raises(
        CheckpointCorrupt, match=r"mp_rank_00_model_states.pt has 100 bytes, 5000 were written"
    ):
        verify_checksums(merged, 0, 2)
    assert verify_checksums(merged, 1, 2) == 1  # rank 1's own files are fine


def test_a_changed_byte_is_refused(merged):
    f = merged / "state" / "zero_pp_rank_1_optim_states.pt"
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupt, match="zero_pp_rank_1_optim_states.pt does not match its SHA-256"):
        verify_checksums(merged, 1, 2)


def test_a_missing_file_or_rank_list_is_refused(merged):
    (merged / "latest").unlink()
    with pytest.raises(CheckpointCorrupt, match="latest is missing"):
        verify_checksums(merged, 0, 2)
    (merged / "raylm-checksums-rank1.json").unlink()  # that rank's save never finished
    with pytest.raises(CheckpointCorrupt, match=r"no checksum list from rank\(s\) \[1\]"):
        verify_checksums(merged, 0, 2)


def test_the_message_is_found_inside_a_wrapped_worker_error():
    from pipelines.train.checkpoint_integrity import corrupt_checkpoint_message

    inner = (
        "Traceback ...\nCheckpointCorrupt: checkpoint /c is damaged: state/x.pt has 3 bytes, 9 were written\n"
    )

    class TrainingFailedError(RuntimeError):
        pass

    try:
        try:
            raise RuntimeError(f"worker 1 failed:\n{inner}")
        except RuntimeError as e:
            raise TrainingFailedError("training failed") from e
    except TrainingFailedError as wrapped:
        got = corrupt_checkpoint_message(wrapped)
    assert got == "checkpoint /c is damaged: state/x.pt has 3 bytes, 9 were written"
    assert corrupt_checkpoint_message(ValueError("something else")) is None
