"""Metrics from the workers to the driver: a live progress bar, the metrics log, TensorBoard and the loss
curve.

Rank 0 sends one record per step to `MetricsSink`, a small actor owned by the driver (so it outlives
worker restarts and works when the workers are on other nodes); the driver drains it every second into
a progress bar (loss, held-out loss, tokens/s) and the run's metrics log. The log lives beside the
checkpoints, so a resumed run's loss curve covers every attempt; the stage folder gets a copy
(`metrics.jsonl`), TensorBoard event files (`tensorboard/`) and `loss_curve.png`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.run_folder import _fs, join


def metrics_sink_class():
    import ray

    @ray.remote(num_cpus=0)
    class MetricsSink:
        def __init__(self):
            self.records: list[dict[str, Any]] = []

        def put(self, record: dict[str, Any]) -> None:
            self.records.append(record)

        def drain(self) -> list[dict[str, Any]]:
            out, self.records = self.records, []
            return out

    return MetricsSink


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    fs, path = _fs(uri)
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode("utf-8")
    except (FileNotFoundError, OSError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_jsonl(uri: str, records: list[dict[str, Any]]) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write("".join(json.dumps(r, default=str) + "\n" for r in records).encode("utf-8"))


def dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the latest record per (kind, step): steps redone after a restart replace the first try."""
    latest: dict[tuple, dict[str, Any]] = {}
    for r in records:
        # every restart is kept (two can resume from the same checkpoint); other kinds keep the latest
        latest[(r.get("kind"), r.get("step"), r.get("at") if r.get("kind") == "resume" else None)] = r
    return sorted(latest.values(), key=lambda r: (r.get("step") or 0, r.get("kind") != "train"))


class Monitor:
    """Drains the sink into a progress bar and the lasting log while training runs."""

    def __init__(
        self, sink, log_uri: str, max_steps: int, log: Callable[[str], None] = print, desc: str = "pretrain"
    ):
        from tqdm import tqdm

        self.sink, self.log_uri, self.log = sink, log_uri, log
        self.records = read_jsonl(log_uri)
        self.final: dict[str, Any] | None = None
        self.bar = tqdm(
            total=max_steps,
            desc=desc,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self._last_write = 0.0
        self._heldout: float | None = None

    def poll(self) -> None:
        import ray

        try:
            new = ray.get(self.sink.drain.remote(), timeout=30)
        except Exception:  # a busy cluster: try again next time
            return
        for r in new:
            if r.get("kind") == "final":
                self.final = r
                continue
            self.records.append(r)
            if r.get("kind") == "eval":
                self._heldout = r.get("heldout_loss")
            elif r.get("kind") == "train":
                self.bar.n = r["step"]
                post = {"loss": f"{r['loss']:.3f}", "tok/s": f"{r['tokens_per_s']:,.0f}"}
                if r.get("mfu") is not None:  # fine-tuning records have no MFU
                    post["mfu"] = f"{100 * r['mfu']:.1f}%"
                if self._heldout is not None:
                    post["heldout"] = f"{self._heldout:.3f}"
                self.bar.set_postfix(post, refresh=False)
                self.bar.refresh()
        if new and "://" not in self.log_uri:
            # appended at once: a driver killed now loses no step from the lasting log (read back and
            # de-duplicated by the re-run); remote storage gets the whole file every 10 s instead
            Path(self.log_uri).parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_uri, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, default=str) + "\n" for r in new if r.get("kind") != "final"))
        elif new and time.monotonic() - self._last_write > 10:
            self.flush()

    def flush(self) -> None:
        self.records = dedupe(self.records)
        write_jsonl(self.log_uri, self.records)
        self._last_write = time.monotonic()

    def close(self) -> None:
        self.poll()
        self.flush()
        self.bar.close()


def write_tensorboard(
    records: list[dict[str, Any]], folder: str, prefix: str = "pretrain", extra_keys: tuple[str, ...] = ()
) -> bool:
    """TensorBoard event files of the records (tensorboardX, which ray[train] installs), as `prefix/key`."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return False
    writer = SummaryWriter(logdir=folder)
    keys = (
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "step_time_s",
        "mfu",
        "memory_gb",
        "heldout_loss",
        "heldout_ppl",
        *extra_keys,
    )
    for r in records:
        for k in keys:
            v = r.get(k)
            if isinstance(v, int | float) and math.isfinite(v):
                writer.add_scalar(f"{prefix}/{k}", v, global_step=r["step"])
    writer.close()
    return True


def plot_loss_curve(records: list[dict[str, Any]], path: str, title: str = "pretraining loss") -> None:
    """Training loss per step and held-out loss per evaluation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    held = [(r["step"], r["heldout_loss"]) for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if held:
        ax.plot(*zip(*held, strict=True), "o-", label="held-out loss", linewidth=1.5, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def copy_local(src_uri: str, dst_uri: str) -> None:
    """Copy a folder between local paths and URIs (pyarrow)."""
    import pyarrow.fs as pafs

    sfs, spath = _fs(src_uri)
    dfs, dpath = _fs(dst_uri)
    dfs.create_dir(dpath, recursive=True)
    pafs.copy_files(spath, dpath, source_filesystem=sfs, destination_filesystem=dfs)


__all__ = [
    "Monitor",
    "copy_local",
    "dedupe",
    "join",
    "metrics_sink_class",
    "plot_loss_curve",
    "read_jsonl",
    "write_jsonl",
    "write_tensorboard",
]


def fit_with_progress(trainer, monitor: Monitor, what: str) -> tuple[Any, float]:
    """Run `trainer.fit()` in a thread while the driver drains the metrics sink into the progress bar;
    re-raise the run's error here. Returns (Ray Train's result, fit seconds). `what` names the run in
    errors ("pretraining", "fine-tuning")."""
    import threading
    import time

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # surfaced in the driver thread below
            outcome["error"] = exc

    t_fit = time.perf_counter()
    thread = threading.Thread(target=fit, name=f"raylm-{what}-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=1.0)
            monitor.poll()
    finally:
        monitor.close()
    fit_s = time.perf_counter() - t_fit
    error = outcome.get("error") or outcome["result"].error
    if error is not None:
        from pipelines.train.checkpoint_integrity import corrupt_checkpoint_message

        damaged = corrupt_checkpoint_message(error)
        if damaged:  # the user's move, not a bug: say which file, without Ray's nested tracebacks
            from cluster.config import RecipeError

            raise RecipeError([f"{what} cannot resume: {damaged}"]) from None
        raise error
    result = outcome["result"]
    if result.checkpoint is None:
        raise RuntimeError(f"{what} ended without a checkpoint")
    return result, fit_s
