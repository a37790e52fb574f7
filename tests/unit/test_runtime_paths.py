"""`isolate_side_files` keeps Ray's socket paths short whatever $RAYLM_HOME and TMPDIR are (AF_UNIX paths
are limited to 107 bytes; Ray appends ~70 to its temp dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = (
    "import json; from cluster.runtime import isolate_side_files; s = isolate_side_files(); "
    "print(json.dumps({'ray_temp': str(s.ray_temp), 'scratch': str(s.scratch)}))"
)


def probe(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deep_home_and_deep_inherited_tmpdir_still_give_a_short_ray_temp(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_TMPDIR",)}
    env.update(RAYLM_HOME=str(deep / "home"), TMPDIR=str(deep))  # a child of a run inherits a deep TMPDIR
    got = probe(env)
    assert got["scratch"].startswith(str(deep / "home"))
    assert got["ray_temp"].startswith("/tmp/raylm-") and len(got["ray_temp"]) <= 36
    assert not Path(got["ray_temp"]).parent.exists()  # removed at exit


def test_free_port_avoids_the_ephemeral_range_and_never_repeats():
    import socket

    from cluster.runtime import _ephemeral_low, free_port

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(20000 <= p < _ephemeral_low() for p in ports)
    with socket.socket() as sock:  # free when handed out: a server can bind it
        sock.bind(("127.0.0.1", ports[-1]))
