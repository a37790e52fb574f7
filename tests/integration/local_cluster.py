"""A real multi-process Ray cluster on 127.0.0.1 for tests: a head node (`ray start --head` with the
dashboard) and worker nodes (`ray start --address`), each in its own process tree and temp dir.

It never touches other Ray instances on this machine: every port is picked free (none of Ray's fixed
defaults such as 6379, 8265, 10001 or 52365), each node has its own temp dir, token auth is on with a
token only this cluster knows, and teardown ends exactly the processes this helper started and their
descendants, by PID (never `ray stop`, which stops every Ray of the user).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from cluster.runtime import free_port

RAY = str(Path(sys.executable).with_name("ray"))




class LocalRayCluster:
    """`with LocalRayCluster(workers=1) as c:` gives `c.dashboard_url`, `c.gcs_address`, `c.token`,
    `c.env` (the nodes' environment)."""

    def __init__(self, workers: int = 1, cpus_per_node: int = 1, metrics_export_port: int | None = None,
                 startup_timeout_s: float = 120.0, extra_env: dict[str, str] | None = None):
        self.workers = workers
        self.cpus_per_node = cpus_per_node
        self.metrics_export_port = metrics_export_port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.token = secrets.token_hex(16)
        self._fresh()
        venv_bin = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            PATH=f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}",  # `python` on the nodes = this venv's
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
        )
        env.update(extra_env or {})
        self.env = env

    def _fresh(self) -> None:
        # Unix socket paths under the temp dir must stay below 107 bytes: keep the root short.
        self.root = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.procs: list[subprocess.Popen] = []
        self._seen: dict[int, float] = {}  # pid -> create_time of every process of this cluster

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def head_temp_dir(self) -> Path:
        return self.root / "h"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    # ----------------------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (kept open for the child's life)
        proc = subprocess.Popen([RAY, "start", "--block", *args], env={**self.env, "TMPDIR": str(self.root)},
                                stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _node_args(self, name: str) -> list[str]:
        return [
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus_per_node}",
            "--num-gpus=0",
            "--object-store-memory=100000000",
            f"--temp-dir={self.root / name}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]

    def start(self, attempts: int = 2) -> LocalRayCluster:
        """Start the nodes; on a start-up failure (Ray's raylet gives up after a fixed 30 s when the machine
        is overloaded) tear everything down and try again with fresh ports and folders."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once()
            except (RuntimeError, TimeoutError):
                if attempt == attempts:
                    raise
                self._fresh()
        raise AssertionError("unreachable")

    def _start_once(self) -> LocalRayCluster:
        try:
            self._spawn("head", [
                "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                f"--metrics-export-port={self.metrics_export_port}",
                "--disable-usage-stats", *self._node_args(self.head_temp_dir.name),
            ])
            self._wait(lambda: self.get("/api/version") is not None, "the head's dashboard")
            for i in range(self.workers):
                self._spawn(f"worker{i}", [f"--address={self.gcs_address}", *self._node_args(f"w{i}")])
            self._wait(lambda: self.alive_nodes() == 1 + self.workers, f"{1 + self.workers} alive nodes")
        except BaseException:
            self.stop()
            raise
        return self

    def get(self, path: str):
        """GET a dashboard endpoint with this cluster's token; the JSON answer, or None when not up."""
        req = urllib.request.Request(self.dashboard_url + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def alive_nodes(self) -> int:
        answer = self.get("/api/v0/nodes?detail=false&limit=100") or {}
        rows = answer.get("data", {}).get("result", {}).get("result", [])
        return sum(1 for n in rows if n.get("state") == "ALIVE")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            self._remember()
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a Ray node exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"no {what} after {self.startup_timeout_s:.0f}s:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                         for f in sorted(self.root.glob("*.log")))

    # ----------------------------------------------------------------------------------------------

    def _remember(self) -> None:
        """Record every descendant of the nodes' `ray start` processes (job drivers start new sessions,
        so the process group alone does not hold them all)."""
        for p in self.procs:
            try:
                top = psutil.Process(p.pid)
                for proc in [top, *top.children(recursive=True)]:
                    self._seen.setdefault(proc.pid, proc.create_time())
            except psutil.NoSuchProcess:
                continue

    def _ours_alive(self) -> list[psutil.Process]:
        alive = []
        for pid, created in self._seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                continue
        return alive

    def stop(self, grace_s: float = 10.0) -> None:
        """End this cluster's processes only: SIGTERM to each `ray start --block` (it stops its node's
        processes in order), then SIGKILL whatever of ours is left. Raises if anything survives."""
        self._remember()
        for p in reversed(self.procs):  # workers first, then the head
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        leftovers = self._ours_alive()
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        survivors = self._ours_alive()
        shutil.rmtree(self.root, ignore_errors=True)
        if survivors:
            raise RuntimeError(f"processes survived teardown: {[s.pid for s in survivors]}")

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

