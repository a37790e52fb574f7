"""Debian packages as data sources: use them where installed, else fetch and unpack them privately.

Several assets (WordNet, the English corpus) come from Debian packages. Installing those would pull in
dict servers and touch the system, and all we need is their files, so when a package is not installed we
`apt-get download` the .deb files and `dpkg -x` them into a scratch folder that is deleted after the
step. apt is used ONLY as root on a Debian system (`apt-get update` needs root, and a non-root process
must not try to change the system); anywhere else a missing package becomes a `MissingPrereq` carrying
the exact command that gets it, and the steps that do not need Debian still run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class MissingPrereq(Exception):
    """A prerequisite this process may not or cannot install; the message says how to get it."""


class DebianError(RuntimeError):
    """apt or dpkg failed while fetching packages we are allowed to fetch."""


SCRATCH_PREFIX = ".debs-"
_apt_updated = False  # `apt-get update` runs at most once per process, and only when a lookup failed


@dataclass
class DebianTree:
    """A filesystem root holding the packages' files: `/` when installed, else the unpacked copies."""

    root: Path
    versions: dict[str, str] = field(default_factory=dict)

    def path(self, absolute: str) -> Path:
        """Where the packaged file `absolute` (e.g. `/usr/share/wordnet`) is in this tree."""
        return self.root / absolute.lstrip("/")


def is_debian() -> bool:
    return Path("/etc/debian_version").exists() and shutil.which("dpkg-query") is not None


def apt_usable() -> bool:
    """True when this process may use apt: root, on Debian, with apt-get and dpkg-deb present."""
    return (
        hasattr(os, "geteuid") and os.geteuid() == 0 and is_debian()
        and shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None
    )


def system_version(package: str) -> str | None:
    """The installed version of Debian `package`, or None when it is not (fully) installed."""
    if shutil.which("dpkg-query") is None:
        return None
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
                          capture_output=True, text=True)
    if proc.returncode != 0 or "\t" not in proc.stdout:
        return None
    status, version = proc.stdout.split("\t", 1)
    return version.strip() if status.strip() == "install ok installed" else None


def install_command(packages: list[str]) -> str:
    """The command a user runs to get `packages` (we never run it ourselves: it installs system-wide)."""
    return f"sudo apt-get install -y --no-install-recommends {' '.join(packages)}"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _download(packages: list[str], dest: Path, log: Callable[[str], object]) -> None:
    global _apt_updated
    # Downloading as root into a root-owned folder: apt's `_apt` sandbox user could not write there.
    cmd = ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *packages]
    proc = _run(cmd, cwd=dest)
    if proc.returncode != 0 and not _apt_updated:
        log("  apt-get download failed; running `apt-get update` once and retrying")
        upd = _run(["apt-get", "-q", "update"])
        _apt_updated = True
        if upd.returncode != 0:
            raise DebianError(f"apt-get update failed: {upd.stderr.strip()[-300:]}")
        proc = _run(cmd, cwd=dest)
    if proc.returncode != 0:
        raise DebianError(f"apt-get download {' '.join(packages)} failed: {proc.stderr.strip()[-400:]}")


def _deb_field(deb: Path, name: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


@contextmanager
def debian_packages(packages: list[str], scratch_parent: Path,
                    log: Callable[[str], object] = print) -> Iterator[DebianTree]:
    """Yield a `DebianTree` holding all `packages`; unpacked copies are deleted on exit.

    Raises `MissingPrereq` when some are not installed and apt may not be used here.
    """
    versions = {p: system_version(p) for p in packages}
    if all(versions.values()):
        yield DebianTree(Path("/"), {p: v for p, v in versions.items() if v})
        return
    missing = [p for p, v in versions.items() if not v]
    if not apt_usable():
        where = "not root" if is_debian() else "not a Debian system with apt"
        raise MissingPrereq(f"Debian packages not installed: {' '.join(missing)} ({where}, so not fetched). "
                            f"Get them with: {install_command(missing)}  (or re-run as root on Debian)")
    scratch_parent.mkdir(parents=True, exist_ok=True)
    for stale in scratch_parent.glob(f"{SCRATCH_PREFIX}*"):  # left by a killed run (callers hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=scratch_parent))
    try:
        debs, root = scratch / "debs", scratch / "root"
        debs.mkdir()
        root.mkdir()
        log(f"  fetching Debian packages (download + unpack, no install): {' '.join(packages)}")
        t0 = time.monotonic()
        _download(packages, debs, log)
        fetched: dict[str, str] = {}
        for deb in sorted(debs.glob("*.deb")):
            proc = _run(["dpkg-deb", "-x", str(deb), str(root)])
            if proc.returncode != 0:
                raise DebianError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()[-300:]}")
            fetched[_deb_field(deb, "Package")] = _deb_field(deb, "Version")
        absent = [p for p in packages if p not in fetched]
        if absent:
            raise DebianError(f"apt-get download did not produce: {' '.join(absent)}")
        size = sum(d.stat().st_size for d in debs.glob("*.deb"))
        log(f"  fetched {len(fetched)} .deb files ({size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f}s")
        yield DebianTree(root, fetched)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
