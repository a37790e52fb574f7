"""Checksums that make a half-written checkpoint refuse to load.

Ray Train already registers a checkpoint only after every worker's files are uploaded (the run's
checkpoint snapshot names it last), so a save killed before that point is never offered for resuming. What
that does not catch is a file damaged after the fact or cut short by a crash inside the storage layer
(a full disk, a truncated copy). DeepSpeed's `load_checkpoint` would then fail deep inside `torch.load`, or
worse, load a shorter tensor file without complaint. So each worker writes, next to its own files, a list
of their sizes and SHA-256 digests; on resume each worker checks its list, and rank 0 checks that every
rank's list is there, before DeepSpeed reads anything. Nothing in DeepSpeed or Ray Train does this (their
checkpoints carry no digests), hence our own few lines.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PREFIX = "raylm-checksums-rank"


class CheckpointCorrupt(RuntimeError):
    """A checkpoint whose files do not match the digests written when it was saved."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: str | Path, rank: int, world: int, step: int | None = None) -> Path:
    """Record every file this worker wrote under `folder` (its local checkpoint folder, before Ray Train
    merges the workers' folders), and the training step it holds. Written last, so its presence means the
    files before it are complete."""
    root = Path(folder)
    files = {
        str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": _digest(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(PREFIX)
    }
    out = root / f"{PREFIX}{rank}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "world": world, "step": step, "files": files}, indent=1))
    tmp.replace(out)
    return out


def verify_checksums(folder: str | Path, rank: int, world: int) -> int:
    """Check this rank's files (and, on rank 0, that all `world` ranks left a list). Returns the number of
    files checked; raises `CheckpointCorrupt` naming the checkpoint and the first bad file."""
    root = Path(folder)
    if rank == 0:
        missing = [r for r in range(world) if not (root / f"{PREFIX}{r}.json").is_file()]
        if missing:
            raise CheckpointCorrupt(
                f"checkpoint {root} is incomplete: no checksum list from rank(s) {missing} (the save was "
                "interrupted, or it was written by a different number of workers); delete it to resume "
                "from an earlier one"
            )
    own = root / f"{PREFIX}{rank}.json"
    if not own.is_file():
        raise CheckpointCorrupt(f"checkpoint {root} is incomplete: {own.name} is missing")
    try:
        listed = json.loads(own.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointCorrupt(f"checkpoint {root}: {own.name} is unreadable ({e})") from None
    for rel, want in listed.items():
        path = root / rel
        if not path.is_file():
            raise CheckpointCorrupt(f"checkpoint {root} is damaged: {rel} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointCorrupt(
                f"checkpoint {root} is damaged: {rel} has {size} bytes, {want['bytes']} were written"
            )
        if _digest(path) != want["sha256"]:
            raise CheckpointCorrupt(f"checkpoint {root} is damaged: {rel} does not match its SHA-256")
    return len(listed)


def corrupt_checkpoint_message(error: BaseException) -> str | None:
    """The `CheckpointCorrupt` message inside a failed run's error, or None. Ray Train hands the driver its
    own exception type with each worker's traceback as text, so the message is found in that text."""
    texts, seen, e = [], set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        texts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = "\n".join(texts)
    marker = f"{CheckpointCorrupt.__name__}: "
    if marker not in text:
        return None
    return text.split(marker, 1)[1].splitlines()[0]
