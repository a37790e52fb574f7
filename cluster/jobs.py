"""Sending a recipe's run to a Ray cluster as a Ray job, and following it (`raylm submit|jobs|logs|stop`).

A submitted run is `python -m cluster run <recipe>` (= `raylm run`) executed by Ray's job supervisor on the
head node. Ray sets `RAY_ADDRESS` for that process, so the run connects to the cluster it is on instead of
starting an embedded Ray. The runtime environment carries what the run needs:

- the recipe, always (in a folder `.raylm-job/` of the job's working dir), and
- raylm's code: `code="upload"` ships `cluster/`, `pipelines/`, `serving/` as installed here (the job's
  working dir); `code="image"` uses the raylm installed in the cluster's image; `code="<URI>.zip"` has
  each node fetch a `raylm pack-code` zip from `s3://`, `gs://`, `https://` or a shared `file://` path.

A run's folder must be somewhere every node sees (a shared path or `s3://`): the job's working dir is a
temporary folder of one node. `run_dir` or `cluster.storage` says where; a submission without either, or
with a relative `run_dir`, is refused before anything is sent.

Ray 2.60 clusters have token authentication on: requests to the dashboard carry `Authorization: Bearer
<token>`. The token is read the way Ray reads it: `$RAY_AUTH_TOKEN`, else the file `$RAY_AUTH_TOKEN_PATH`,
else `~/.ray/auth_token` (on the head, `ray get-auth-token` prints it).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from cluster.config import Recipe, load_recipe

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

JOB_DIR = ".raylm-job"
"""Folder of the job's working dir holding the shipped recipe."""
CODE_PACKAGES = ("cluster", "pipelines", "serving")
"""raylm's top-level packages: what `code="upload"` ships."""
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.safetensors", "*.bin", "*.pt", "*.gguf", "*.ckpt")
_METADATA_PREFIX = "raylm."


class JobsError(RuntimeError):
    """A job operation that cannot go on; the message says what to do."""


# --------------------------------------------------------------------------------------------------
# Reaching the cluster


def dashboard_url(address: str) -> str:
    """`HEAD:8265` or `http(s)://HEAD:8265` -> the dashboard's URL. GCS and Ray Client addresses are
    refused with a hint, since the Job Submission API is served by the dashboard."""
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise JobsError(f"{address} is a Ray Client address; jobs are submitted to the dashboard: "
                        "--address http://HEAD:8265")
    if "://" not in address:
        address = f"http://{address}"
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JobsError(f"--address {address!r}: expected http://HEAD:8265")
    if parsed.port == 6379:
        raise JobsError(f"{address} is the GCS port (6379); jobs go to the dashboard: --address http://HEAD:8265")
    return address


def auth_token() -> str | None:
    """The cluster's token, looked up as Ray does: `$RAY_AUTH_TOKEN`, the file `$RAY_AUTH_TOKEN_PATH`,
    `~/.ray/auth_token`."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        if not Path(path).is_file():
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path}: no such file")
        return Path(path).read_text().strip() or None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def connect(address: str, token: str | None = None, timeout_s: float = 5.0) -> JobSubmissionClient:
    """A Job Submission client for the cluster at `address`, or a `JobsError` saying why not (fast:
    a closed port fails in milliseconds, a silent host after `timeout_s`). `token`: the cluster's
    auth token; None looks it up as Ray does (`auth_token()`)."""
    url = dashboard_url(address)
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise JobsError(
            f"cannot reach a Ray dashboard at {url}: {exc.strerror or exc}. Check that the head runs "
            "(`ray status` on it), that its dashboard listens on an address you can reach "
            "(`ray start --head --dashboard-host ...`), or forward the port: `ray dashboard cluster.yaml` "
            "(cluster launcher), `kubectl port-forward svc/<cluster>-head-svc 8265` (KubeRay)"
        ) from None
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token = token or auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError:
        hint = ("the token was refused (wrong cluster's token?)" if token else
                "this cluster requires a token and none was found")
        raise JobsError(
            f"{url}: {hint}. Set RAY_AUTH_TOKEN (on the head, `ray get-auth-token` prints it) or "
            "RAY_AUTH_TOKEN_PATH to a file that holds it"
        ) from None
    except (ConnectionError, RuntimeError) as exc:
        raise JobsError(f"{url} answers but is not a Ray dashboard with the Jobs API: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Packaging a run


@dataclass
class JobPackage:
    """Everything `submit_job` needs; `staged` is the local working dir to delete once submitted."""

    entrypoint: str
    runtime_env: dict
    submission_id: str
    metadata: dict[str, str]
    staged: Path
    run_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        shutil.rmtree(self.staged, ignore_errors=True)


def project_root() -> Path:
    """Where raylm's packages are (a checkout or site-packages)."""
    import cluster

    return Path(cluster.__file__).resolve().parent.parent


def cluster_run_dir(cfg: Recipe) -> str:
    """The run folder of a submitted run: `run_dir`, else `<cluster.storage>/<name>`; it must be a place
    every node sees, so a relative path or no place at all is refused."""
    if cfg.run_dir:
        if "://" not in cfg.run_dir and not Path(cfg.run_dir).is_absolute():
            raise JobsError(
                f"run_dir {cfg.run_dir!r} is relative: on a cluster it would land in the job's temporary "
                "working dir. Use a shared path or s3:// (or set cluster.storage)")
        return cfg.run_dir
    if cfg.cluster.storage:
        return cfg.cluster.storage.rstrip("/") + "/" + cfg.name
    raise JobsError(
        "a submitted run needs storage every node sees: set run_dir, or cluster.storage, e.g. "
        "--set cluster.storage=s3://my-bucket/raylm or --set cluster.storage=/mnt/cluster/raylm")


def package_run(
    recipe: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    code: str = "upload",
    recipe_on_cluster: bool = False,
    force: list[str] | tuple[str, ...] = (),
    env_vars: dict[str, str] | None = None,
    pip: list[str] | tuple[str, ...] = (),
) -> JobPackage:
    """Validate the recipe here (unless it lives on the cluster) and build the job's entrypoint and
    runtime environment. `code`: `upload` ships raylm's code from this machine; `image` uses the raylm
    installed in the cluster's image; a `.zip` URI is a `raylm pack-code` zip the nodes fetch."""
    code_uri = None
    if "://" in code:
        if not code.endswith(".zip"):
            raise JobsError(f"--code {code!r}: a code URI must name a .zip made by `raylm pack-code`")
        code_uri = code
    elif code not in ("upload", "image"):
        raise JobsError(f"--code {code!r}: expected 'upload', 'image' or the URI of a `raylm pack-code` zip")
    staged = Path(tempfile.mkdtemp(prefix="raylm-job-"))
    try:
        args = ["run"]
        metadata = {f"{_METADATA_PREFIX}submitted_by": "raylm submit"}
        run_dir = None
        if recipe_on_cluster:
            # The path is the cluster's: nothing to read or check here; the run validates it there.
            args.append(str(recipe))
            name = Path(recipe).stem
            args += [a for o in overrides for a in ("--set", o)]
        else:
            cfg = load_recipe(recipe, overrides)
            run_dir = cluster_run_dir(cfg)
            name = cfg.name
            (staged / JOB_DIR).mkdir()
            shutil.copyfile(recipe, staged / JOB_DIR / "recipe.yaml")
            args.append(f"{JOB_DIR}/recipe.yaml")
            # The job must use the cluster it runs on (RAY_ADDRESS, set by Ray): never a recipe's address.
            args += [a for o in [*overrides, f"run_dir={run_dir}", "cluster.address=null"]
                     for a in ("--set", o)]
            metadata[f"{_METADATA_PREFIX}run_dir"] = run_dir
        metadata[f"{_METADATA_PREFIX}recipe"] = name
        args += [a for f in force for a in ("--force", f)]
        if code == "upload":
            root = project_root()
            for pkg in CODE_PACKAGES:
                if (root / pkg).is_dir():
                    shutil.copytree(root / pkg, staged / pkg, ignore=_SKIP)
        runtime_env: dict = {"working_dir": str(staged),
                             "env_vars": {
            "PYTHONUNBUFFERED": "1",
            # job logs are read in wide viewers: rich must not wrap error lines at its default 80 columns
            "COLUMNS": "240",
            **(env_vars or {}),
        }}
        if code_uri:
            # Ray downloads and unpacks it on each node (a set-up step) and puts it on PYTHONPATH.
            runtime_env["py_modules"] = [code_uri]
        if pip:
            runtime_env["pip"] = list(pip)
        entrypoint = "python -m cluster " + " ".join(shlex.quote(a) for a in args)
        safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)[:40]
        submission_id = f"raylm-{safe_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        return JobPackage(entrypoint, runtime_env, submission_id, metadata, staged, run_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def write_code_zip(dest: str | Path) -> Path:
    """raylm's code as one zip (`raylm/{cluster,pipelines,serving}/...`) for `--code URI`: put it on
    storage the cluster reads (`s3://`, `gs://`, `https://`, or a shared path as `file:///...`)."""
    import zipfile

    dest = Path(dest)
    root = project_root()
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in CODE_PACKAGES:
            if (root / pkg).is_dir():
                shutil.copytree(root / pkg, Path(tmp) / pkg, ignore=_SKIP)
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    # one top-level folder: Ray strips it when unpacking a remote py_modules zip
                    zf.write(path, Path("raylm") / path.relative_to(tmp))
    return dest


def submit(client: JobSubmissionClient, package: JobPackage) -> str:
    """Upload the package and start the job; returns its submission id."""
    try:
        return client.submit_job(entrypoint=package.entrypoint, runtime_env=package.runtime_env,
                                 submission_id=package.submission_id, metadata=package.metadata)
    except RuntimeError as exc:
        raise JobsError(f"the cluster refused the job: {exc}") from None
    finally:
        package.cleanup()


# --------------------------------------------------------------------------------------------------
# Following, listing, stopping


def job_info(client: JobSubmissionClient, job_id: str) -> JobDetails:
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise JobsError(f"no job {job_id!r} on this cluster; `raylm jobs --address ...` lists them") \
                from None
        raise


def follow(client: JobSubmissionClient, job_id: str, write: Callable[[str], None],
           timeout_s: float | None = None) -> JobDetails:
    """Stream the job's logs to `write` until it ends (or `timeout_s` passes); returns its final details."""
    job_info(client, job_id)  # a clear error for an unknown id before opening the stream

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    async def bounded() -> None:
        await asyncio.wait_for(tail(), timeout=timeout_s)

    try:
        asyncio.run(bounded())
    except TimeoutError:
        raise JobsError(f"job {job_id} still {client.get_job_status(job_id)} after {timeout_s:.0f}s; "
                        "it keeps running (`raylm stop` ends it)") from None
    # the stream closes when the job ends; the status may lag by a moment
    deadline = time.monotonic() + 30
    info = job_info(client, job_id)
    while not info.status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        info = job_info(client, job_id)
    return info


def wait(client: JobSubmissionClient, job_id: str, timeout_s: float = 600, poll_s: float = 0.5) -> JobDetails:
    """Poll until the job ends; returns its final details."""
    deadline = time.monotonic() + timeout_s
    info = job_info(client, job_id)
    while not info.status.is_terminal():
        if time.monotonic() > deadline:
            raise JobsError(f"job {job_id} still {info.status} after {timeout_s:.0f}s")
        time.sleep(poll_s)
        info = job_info(client, job_id)
    return info


def logs(client: JobSubmissionClient, job_id: str) -> str:
    job_info(client, job_id)
    return client.get_job_logs(job_id)


def list_jobs(client: JobSubmissionClient, all_jobs: bool = False) -> list[JobDetails]:
    """Jobs on the cluster, newest first; raylm's only unless `all_jobs`."""
    jobs = [j for j in client.list_jobs()
            if j.submission_id and (all_jobs or f"{_METADATA_PREFIX}recipe" in (j.metadata or {}))]
    return sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)


def stop(client: JobSubmissionClient, job_id: str, wait_s: float = 30) -> JobDetails:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL after Ray's grace period); returns its details."""
    info = job_info(client, job_id)
    if info.status.is_terminal():
        return info
    client.stop_job(job_id)
    return wait(client, job_id, timeout_s=wait_s)


def recipe_of(job: JobDetails) -> str:
    return (job.metadata or {}).get(f"{_METADATA_PREFIX}recipe", "-")


def run_dir_of(job: JobDetails) -> str:
    return (job.metadata or {}).get(f"{_METADATA_PREFIX}run_dir", "-")
