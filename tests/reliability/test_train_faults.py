"""Training under faults (issue 10, item 1), on the real `raylm pretrain` command in its own process:

1. one Ray Train worker process is killed by its PID part-way: Ray Train (FailureConfig(max_failures))
   restarts the worker group from the last checkpoint, not from step 0, and the loss curve continues;
2. then the driver itself is killed (SIGKILL, no clean-up): Ray's processes go with it, and the same
   command run again resumes from the last registered checkpoint and finishes;
3. a checkpoint damaged on disk (a file cut short, as an interrupted copy leaves it) is refused with a
   message naming the file, never loaded.

Figures go to benchmarks/results/reliability.json (section `train_faults`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipelines.train.token_data import write_token_data
from tests.reliability.results import record_result
from tests.unit.train.conftest import pydoc_texts

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MAX_STEPS, INTERVAL = 80, 20
RAYLM = str(Path(sys.executable).parent / "raylm")


def _recipe(tmp: Path) -> Path:
    tokens = tmp / "tokenize"
    write_token_data(str(tokens), pydoc_texts(), seq_len=64, vocab_size=400)
    text = f"""
name: faults
run_dir: {tmp / "run"}
cluster: {{num_cpus: 2}}
model: {{family: decoder, preset: tiny}}
pretrain:
  data: {tokens}
  num_workers: 2
  micro_batch_size: 16
  precision: fp32
  warmup_steps: 1
  max_steps: {MAX_STEPS}
  log_every: 1
  eval_interval: 1000
  eval_sequences: 8
  checkpoint_interval: {INTERVAL}
  keep_checkpoints: 2
  max_failures: 2
"""
    path = tmp / "recipe.yaml"
    path.write_text(text)
    return path


def _launch(recipe: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "RAY_TMPDIR")}
    return subprocess.Popen(
        [RAYLM, "pretrain", str(recipe)], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env
    )


def _checkpoints(run_dir: Path) -> dict[str, int]:
    """Checkpoints Ray Train has registered (its run snapshot lists them, with the step each was reported
    at): a folder on disk that the snapshot does not name yet is not resumable."""
    found = {}
    for snap in (run_dir / "checkpoints" / "pretrain").glob("pretrain-*/checkpoint_manager_snapshot.json"):
        try:
            state = json.loads(snap.read_text())
        except (ValueError, OSError):
            continue  # being rewritten
        for r in state.get("checkpoint_results") or []:
            found[r["checkpoint_dir_name"]] = r["metrics"]["step"]
    return found


def _train_workers(driver: psutil.Process) -> list[psutil.Process]:
    found = []
    for proc in driver.children(recursive=True):
        try:
            title = " ".join(proc.cmdline()) or proc.name()
        except psutil.Error:
            continue
        if "RayTrainWorker" in title:
            found.append(proc)
    return found


def _wait(what: str, cond, timeout: float, proc: subprocess.Popen, log: Path):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (rc {proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out after {timeout} s waiting for {what}:\n{log.read_text()[-3000:]}")


def _still_running(procs: list[psutil.Process], timeout: float) -> list[tuple[int, str]]:
    """(pid, name) of those of `procs` still running after up to `timeout` s (a zombie has exited: it is
    merely not reaped yet by a parent that is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    left.append((p.pid, p.name()))
            except psutil.Error:
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _records(stage: Path) -> list[dict]:
    return [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]


def _kill_a_worker(run_dir: Path, proc: subprocess.Popen, log: Path, figures: dict) -> int:
    """After the first checkpoint, SIGKILL one training worker; return the checkpoint step it died after,
    once a new worker group is up."""
    driver = psutil.Process(proc.pid)
    _wait("the first checkpoint", lambda: _checkpoints(run_dir), 600, proc, log)
    workers = _wait("the training workers", lambda: _train_workers(driver), 60, proc, log)
    at_kill = max(_checkpoints(run_dir).values())
    victim = workers[-1]
    t_kill = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    figures["worker_killed_pid"] = victim.pid
    figures["worker_killed_after_checkpoint_step"] = at_kill
    old_pids = {p.pid for p in workers}

    def restarted():
        new = [p for p in _train_workers(driver) if p.pid not in old_pids]
        return len(new) >= 2 and new

    _wait("the restarted worker group", restarted, 300, proc, log)
    figures["worker_group_restart_s"] = round(time.monotonic() - t_kill, 1)
    return at_kill


def test_worker_kill_driver_kill_and_a_damaged_checkpoint(tmp_path):
    recipe = _recipe(tmp_path)
    run_dir, stage = tmp_path / "run", tmp_path / "run" / "pretrain"
    figures: dict = {}

    # ---- 1. a worker killed by its PID after the first registered checkpoint
    log1 = tmp_path / "first.log"
    proc = _launch(recipe, log1)
    driver = psutil.Process(proc.pid)
    at_kill = _kill_a_worker(run_dir, proc, log1, figures)
    seen = set(_checkpoints(run_dir))

    # ---- 2. the driver killed (no clean-up) once the restarted group has registered a newer checkpoint
    _wait("a checkpoint after the restart", lambda: set(_checkpoints(run_dir)) - seen, 600, proc, log1)
    tree = list(driver.children(recursive=True))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    last_ckpt = max(_checkpoints(run_dir).values())  # what the dead driver's run had registered
    # Ray's processes share the driver's fate. Ray's agents (runtime-env, dashboard) poll for their raylet
    # and can outlive it (below): wait up to 60 s for the others, then 5 s more for the agents.
    agents = ("Agent", "RuntimeEnv", "DashboardA")
    named = []
    for p in tree:
        try:
            named.append((p, any(a in p.name() for a in agents)))
        except psutil.Error:
            continue  # already gone
    left = _still_running([p for p, agent in named if not agent], 60)
    left += _still_running([p for p, agent in named if agent], 5)
    # The agents hold no resources. What matters is that nothing that trains or schedules is left: no
    # raylet, GCS or worker.
    figures["processes_left_after_driver_kill"] = [name for _, name in left]
    for pid, _ in left:  # ours (started by the driver we launched): stop them before the relaunch
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert not [n for _, n in left if not any(a in n for a in agents)], left
    figures["driver_killed_after_checkpoint_step"] = last_ckpt

    log2 = tmp_path / "second.log"
    t_relaunch = time.monotonic()
    proc = _launch(recipe, log2)
    assert proc.wait(600) == 0, log2.read_text()[-3000:]
    figures["relaunch_s"] = round(time.monotonic() - t_relaunch, 1)
    summary = json.loads((stage / "summary.json").read_text())
    figures["relaunch_resumed_from_step"] = summary["start_step"]
    assert summary["step"] == MAX_STEPS
    # from the last checkpoint, not from 0: the one the snapshot named at the kill, or one more that was
    # saved in the kill's last moments (Ray Train names it in the snapshot a little later)
    assert last_ckpt <= summary["start_step"] <= last_ckpt + INTERVAL
    records = _records(stage)
    resumes = [r["step"] for r in records if r["kind"] == "resume"]
    assert len(resumes) == 2, resumes  # the worker-group restart, then the relaunch
    resumed_at = resumes[0]
    figures["worker_resumed_from_step"] = resumed_at
    assert resumed_at >= at_kill > 0  # from the checkpoint there when the worker died (or a later one)
    assert resumes[1] == summary["start_step"]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, MAX_STEPS + 1))  # every step once in the curve
    losses = [r["loss"] for r in train]
    # the loss after each resume continues the curve: far below where step 1 started
    for step in (resumed_at, summary["start_step"]):
        assert losses[step] < losses[0] - 0.5, (step, losses[step], losses[0])
    figures["loss_step1"] = round(losses[0], 3)
    figures["loss_after_relaunch"] = round(losses[summary["start_step"]], 3)

    # ---- 3. a damaged checkpoint never loads: cut the newest one's model file short, ask for more steps
    newest = max(_checkpoints(run_dir).items(), key=lambda kv: kv[1])[0]
    folder = next((run_dir / "checkpoints" / "pretrain").glob(f"pretrain-*/{newest}"))
    model_file = next(folder.rglob("mp_rank_00_model_states.pt"))
    size = model_file.stat().st_size
    model_file.write_bytes(model_file.read_bytes()[:1000])
    log3 = tmp_path / "damaged.log"
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "RAY_TMPDIR")}
    done = subprocess.run(
        [
            RAYLM,
            "pretrain",
            str(recipe),
            "--set",
            f"pretrain.max_steps={MAX_STEPS + INTERVAL}",
            "--set",
            "pretrain.max_failures=0",
        ],  # one attempt: a retry would meet the same damaged file
        stdout=log3.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        timeout=600,
    )
    text = log3.read_text()
    message = f"mp_rank_00_model_states.pt has 1000 bytes, {size} were written"
    assert done.returncode != 0
    assert message in text, text[-3000:]
    assert "Traceback" not in text.split(message)[-1]  # the CLI ends on the message, not a traceback
    figures["damaged_checkpoint_refused"] = message
    record_result("train_faults", figures)
