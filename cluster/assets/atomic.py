"""Atomic asset folders and their completion markers.

An asset is built inside a hidden temp folder next to its target and renamed into place only once it is
whole, with its `manifest.json` written last. So a run that is interrupted (Ctrl-C, OOM kill, a full
disk) never leaves a folder that looks finished: either the target is absent, or it holds the previous
asset, or it holds a complete new one. A folder is "complete" only if its manifest says so, names the same
asset and builder version, and every file it lists is still there with the recorded size (a cheap `stat`,
no hashing, so the check stays fast on a 300 MB model folder).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
TMP_MARK = ".tmp-"


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}{TMP_MARK}"


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete temp folders a killed earlier run left next to `target`; returns what was removed.

    A temp folder is private to one run, so any left over is garbage: keeping it would only waste disk.
    """
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        if entry.name.startswith(_tmp_prefix(target)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(folder: Path) -> None:
    """Give `folder` the permissions a plainly created folder would have (umask applied).

    `mkdtemp` makes a private 0700 folder and some writers (safetensors) make 0600 files; a cache read
    by Ray workers or containers running as another user needs the usual 0755/0644.
    """
    mask = _umask()
    for dirpath, _dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temp folder on the same filesystem as `target`; on success it replaces `target`.

    On any exception the temp folder is removed and `target` is left exactly as it was. Replacing an
    existing target renames it aside first (two renames, each atomic) and deletes it afterwards, so a
    crash between the renames leaves no target rather than a mixed one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    work = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    publish_permissions(work)
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = target.parent / f"{_tmp_prefix(target)}old-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(target, old)
    os.replace(work, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def list_files(folder: Path) -> dict[str, int]:
    """Relative path -> size in bytes of every regular file under `folder` (the manifest excluded)."""
    out: dict[str, int] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            out[path.relative_to(folder).as_posix()] = path.stat().st_size
    return out


def write_manifest(folder: Path, asset: str, version: int, summary: dict[str, Any], **extra: Any) -> dict:
    """Write `folder/manifest.json` marking the asset complete; call it last, inside `atomic_dir`."""
    manifest = {
        "asset": asset,
        "version": version,
        "complete": True,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "summary": summary,
        **extra,
        "files": list_files(folder),
    }
    tmp = folder / f"{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    """The parsed manifest of `folder`, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def incomplete_reason(folder: Path, asset: str, version: int) -> str | None:
    """Why `folder` is not a complete asset `asset` at builder `version`; None when it is complete."""
    folder = Path(folder)
    if not folder.is_dir():
        return "absent"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"no readable {MANIFEST}"
    if not manifest.get("complete") or manifest.get("asset") != asset:
        return f"{MANIFEST} does not mark a complete {asset!r}"
    if manifest.get("version") != version:
        return f"built by builder version {manifest.get('version')}, current is {version}"
    for rel, size in (manifest.get("files") or {}).items():
        path = folder / rel
        try:
            actual = path.stat().st_size
        except OSError:
            return f"file missing: {rel}"
        if actual != size:
            return f"file changed size: {rel} ({actual} != {size} bytes)"
    return None
