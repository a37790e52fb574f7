"""KubeRay manifests from `raylm k8s`, validated against the KubeRay v1.7.0 CRD schemas
(../shared/schemas/kuberay-v1.7.0/) with unknown fields refused, as a strict API server would."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.config import parse_recipe
from cluster.k8s import ManifestError, k8s_name, manifests, validate_manifest

SCHEMAS = Path(__file__).resolve().parents[3].parent / "shared" / "schemas" / "kuberay-v1.7.0"
RECIPE = "name: My_Run.1\nseed: 1\ncluster:\n  storage: s3://bucket/raylm\n"
runner = CliRunner()


@pytest.fixture(scope="module")
def schemas() -> Path:
    assert (SCHEMAS / "ray.io_rayjobs.yaml").is_file(), f"KubeRay CRDs missing at {SCHEMAS}"
    return SCHEMAS


def _docs(kind: str, **kw) -> list[dict]:
    return manifests(kind, parse_recipe(RECIPE), RECIPE, model="s3://bucket/raylm/My_Run.1/model", **kw)


def _only(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


@pytest.mark.parametrize("kind", ["raycluster", "rayjob", "rayservice"])
def test_generated_manifests_pass_the_crd_schemas(kind, schemas):
    for doc in _docs(kind):
        validate_manifest(doc, schemas)


def test_raycluster_autoscales_with_auth_and_cpu_gpu_groups(schemas):
    spec = _only(_docs("raycluster"), "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert groups["cpu-workers"]["minReplicas"] == 0 < groups["cpu-workers"]["maxReplicas"]
    gpu = groups["gpu-workers"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and "gpu" in gpu["image"]


@pytest.mark.parametrize("kind", ["raycluster", "rayjob", "rayservice"])
def test_every_pod_gets_the_arrow_memory_pool(kind):
    containers = [
        c
        for doc in _docs(kind)
        if doc["kind"] != "ConfigMap"
        for group in [doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]]
        for g in [group["headGroupSpec"], *group["workerGroupSpecs"]]
        for c in g["template"]["spec"]["containers"]
    ]
    assert len(containers) == 3  # head, CPU workers, GPU workers
    for c in containers:
        assert {"name": "ARROW_DEFAULT_MEMORY_POOL", "value": "jemalloc"} in c["env"]
    system = parse_recipe(RECIPE + "  arrow_memory_pool: system\n")
    text = yaml.safe_dump_all(manifests(kind, system, RECIPE, model="s3://b/m"))
    assert text.count("value: system") == 3 and "jemalloc" not in text


def test_an_arrow_pool_pyarrow_lacks_is_refused_by_key(monkeypatch):
    import pyarrow as pa

    monkeypatch.setattr(pa, "supported_memory_backends", lambda: ["mimalloc", "system"])
    cfg = parse_recipe(RECIPE + "  arrow_memory_pool: jemalloc\n")
    with pytest.raises(ManifestError, match=r"cluster\.arrow_memory_pool: jemalloc asked for"):
        manifests("raycluster", cfg, RECIPE)


def test_rayjob_runs_the_recipe_and_deletes_its_cluster(schemas):
    docs = _docs("rayjob")
    configmap, job = _only(docs, "ConfigMap"), _only(docs, "RayJob")
    assert configmap["data"]["recipe.yaml"] == RECIPE
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["entrypoint"].startswith("python -m cluster run /home/ray/raylm-job/recipe.yaml")
    assert "run_dir=s3://bucket/raylm/My_Run.1" in spec["entrypoint"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    assert job["metadata"]["name"] == k8s_name("My_Run.1") == "my-run-1"


def test_rayservice_serves_with_zero_downtime_upgrades(schemas):
    svc = _only(_docs("rayservice"), "RayService")
    assert svc["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])
    app_cfg = serve["applications"][0]
    # raylm's own app (auth, planner, metrics), not Ray's bare builder; the args are a valid serve section
    assert app_cfg["import_path"] == "serving.app:app_builder"
    from serving.config import ServeConfig

    serve_cfg = ServeConfig.model_validate(app_cfg["args"]["serve"])
    assert serve_cfg.models[0].path.startswith("s3://")
    assert serve_cfg.models[0].autoscaling.max_replicas >= 2
    assert "api_keys" not in app_cfg["args"]["serve"]


def _broken(doc: dict, path: list, value) -> dict:
    bad = copy.deepcopy(doc)
    cur = bad
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return bad


@pytest.mark.parametrize("path,value,message", [
    (["spec", "workerGroupSpecs", 0, "maxReplicas"], "ten", "workerGroupSpecs.0.maxReplicas"),
    (["spec", "autoscalerOptions", "upscalingMode"], "Fast", "upscalingMode"),
    (["spec", "enableInTreeAutoScaling"], True, "enableInTreeAutoScaling"),  # misspelt: unknown field
    (["spec", "headGroupSpec", "rayStartParams", "num-cpus"], 0, "num-cpus"),  # must be a string
    (["spec", "authOptions", "mode"], "password", "authOptions.mode"),
    (["metadata", "name"], "Not_A_Name", "metadata.name"),
])
def test_invalid_raycluster_is_refused(schemas, path, value, message):
    good = _only(_docs("raycluster"), "RayCluster")
    with pytest.raises(ManifestError, match=message.replace(".", r"\.")):
        validate_manifest(_broken(good, path, value), schemas)


def test_invalid_rayjob_and_rayservice_are_refused(schemas):
    job = _only(_docs("rayjob"), "RayJob")
    with pytest.raises(ManifestError, match="shutdownAfterJobFinishes"):
        validate_manifest(_broken(job, ["spec", "shutdownAfterJobFinishes"], "yes"), schemas)
    with pytest.raises(ManifestError, match="containers.0: .*imagePullPolice. was unexpected"):
        container = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        container["imagePullPolice"] = "Always"
        validate_manifest(job, schemas)
    svc = _only(_docs("rayservice"), "RayService")
    bad_serve = yaml.safe_dump({"applications": [{"name": "llm", "import_path": "build_openai_app"}]})
    with pytest.raises(ManifestError, match=r"serveConfigV2: (.|\n)*invalid import path"):
        validate_manifest(_broken(svc, ["spec", "serveConfigV2"], bad_serve), schemas)


def test_cli_writes_checked_manifests_and_refuses_bad_input(tmp_path, schemas):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = runner.invoke(app, ["k8s", str(recipe), "--kind", "rayjob", "--check", str(schemas),
                              "-o", str(tmp_path / "job.yaml"), "--image", "reg.example.com/raylm-cpu:1"])
    assert out.exit_code == 0, out.output
    docs = list(yaml.safe_load_all((tmp_path / "job.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    assert "reg.example.com/raylm-cpu:1" in (tmp_path / "job.yaml").read_text()
    out = runner.invoke(app, ["k8s", str(recipe), "--kind", "rayservice"])
    assert out.exit_code == 2 and "needs --model" in out.output
    out = runner.invoke(app, ["k8s", str(recipe), "--kind", "raypod"])
    assert out.exit_code == 2 and "expected one of" in out.output
    nostore = tmp_path / "n.yaml"
    nostore.write_text("name: n\n")
    out = runner.invoke(app, ["k8s", str(nostore), "--kind", "rayjob"])
    assert out.exit_code == 2 and "storage every node sees" in out.output
