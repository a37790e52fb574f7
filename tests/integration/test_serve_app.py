"""The serving app end to end, on an embedded 2-CPU Ray: ONE app for the whole module (vLLM on CPU takes
1-2 minutes to start), serving the reference model with two LoRA adapters (one from a local folder, one
from s3:// on a moto server on 127.0.0.1) behind bearer-token auth.

Also runs the API fuzzing of the reliability checks (tests/reliability/api_fuzz.py) against the same app,
so vLLM starts once for both.

Covers: the openai client (models, completions, chat; streaming and not), bad inputs (4xx with an
OpenAI-style body, no hang), auth (401; the key in no log), LoRA greedy output equal to transformers +
peft, the planner's KV capacity against the engine's, metrics on Ray's metrics endpoint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from cluster.runtime import free_port, isolate_side_files, ray_session
from pipelines.assets import asset_paths
from tests.reliability.api_fuzz import BODY_TIMEOUT_S, check_hostile_requests
from tests.s3_server import local_s3

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KEY = "sk-raylm-itest-4d9b1e"
PROMPT = "The three primary colors are"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
HTTP_TIMEOUT = 120  # every request must answer well within this: a hung connection fails the test




def _make_adapter(base: Path, out: Path) -> None:
    """A LoRA adapter as raylm's fine-tuning will write it (peft), with non-zero weights so it changes
    the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, target_modules=targets)
    get_peft_model(model, cfg).save_pretrained(out)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = asset_paths().reference_model
    if not (base / "config.json").is_file():
        pytest.fail(f"reference model missing at {base}: run `make setup`")
    adapter = tmp_path_factory.mktemp("lora") / "tutor"
    _make_adapter(base, adapter)

    with local_s3():  # set before Ray starts: its workers inherit the endpoint
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="raylm-adapters")
        for f in adapter.iterdir():
            client.upload_file(str(f), "raylm-adapters", f"tutor/{f.name}")

        from serving.app import plan_app, start_app, stop_app
        from serving.config import ServeConfig

        cfg = ServeConfig.model_validate({
            "port": free_port(),
            "api_keys": [KEY],
            "request_body_timeout_s": BODY_TIMEOUT_S,  # the fuzz's slow client must get its 408 soon
            "models": [{
                "name": "smollm2", "path": "assets:models/SmolLM2-135M-Instruct", "device": "cpu",
                # fp32: greedy decoding equals transformers + peft token for token (in bf16 both sides
                # round differently and diverge after a few tokens)
                "engine_args": {"enforce_eager": True, "dtype": "float32"},
                "targets": {"context_length": 1024, "concurrent_sequences": 4},
                "lora_adapters": [{"name": "local", "path": str(adapter)},
                                  {"name": "s3", "path": "s3://raylm-adapters/tutor"}],
            }],
        })
        app_plan = plan_app(cfg)
        with ray_session(num_cpus=2):
            from ray import serve

            running = start_app(app_plan)
            try:
                yield {"cfg": cfg, "plan": app_plan, "running": running, "url": running.url,
                       "adapter": adapter, "base": base}
            finally:
                t0 = time.monotonic()
                stop_app(cfg)
                deleted_s = time.monotonic() - t0
                serve.shutdown()
    # Deleting the app waits for the ingress replica's drain (serving/ingress.py: 2 s, not Ray's 30 s
    # for external load balancers; 31 s here with 30) and for in-flight requests
    assert deleted_s < 15, f"deleting the app took {deleted_s:.1f} s"


@pytest.fixture(scope="module")
def client(served):
    from serving.client import openai_client

    return openai_client(served["url"], KEY, timeout=HTTP_TIMEOUT)


def _post(served, path, body, key=KEY, raw=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(body)
    return requests.post(f"{served['url']}{path}", data=data, headers=headers, timeout=HTTP_TIMEOUT)


def test_models_lists_the_base_and_its_adapters(client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {"smollm2", "smollm2:local", "smollm2:s3"}


def test_http_goes_through_haproxy_whose_listeners_are_all_on_loopback(served):
    """cluster.serve_ingress defaults to haproxy (serving/ingress.py): the app's port belongs to HAProxy,
    not to Serve's Python proxy, and none of its listeners (stats, Prometheus) face other hosts."""
    import psutil

    port = served["cfg"].port
    owners = {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert len(owners) >= 1
    for pid in owners:
        assert "haproxy" in psutil.Process(pid).name(), psutil.Process(pid).cmdline()
        binds = {c.laddr.ip for c in psutil.Process(pid).net_connections("tcp") if c.status == "LISTEN"}
        assert binds == {"127.0.0.1"}, binds


def test_the_ingress_replica_routes_on_its_own_event_loop(served):
    """serving/ingress.py INGRESS_REPLICA_ENV: the driver keeps Serve's router on a loop of its own (it
    blocks on handle results), the ingress replica does not (each streamed chunk would cross threads)."""
    import psutil
    import ray

    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    app = served["cfg"].app_name
    ingress = [p for p in raylet.children() if p.name() == f"ray::ServeReplica:{app}:OpenAiIngress"]
    assert len(ingress) == 1, [p.name() for p in raylet.children()]
    assert ingress[0].environ().get("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP") == "0"
    assert os.environ.get("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP") == "1"


def test_no_telemetry_actor_runs_beside_the_engine(served):
    """The embedded Ray has usage stats off (cluster.runtime.EMBEDDED_RAY_ENV), so the LLMServer replica
    starts no Ray Serve LLM telemetry actor: one process fewer on the engine's cores."""
    import psutil
    import ray
    from ray.llm._internal.serve.observability.usage_telemetry.usage import (
        LLM_SERVE_TELEMETRY_ACTOR_NAME,
        LLM_SERVE_TELEMETRY_NAMESPACE,
    )

    assert os.environ.get("RAY_USAGE_STATS_ENABLED") == "0"
    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    names = [p.name() for p in raylet.children()]
    assert f"ray::ServeReplica:{served['cfg'].app_name}:LLMServer:smollm2" in names, names
    assert not [n for n in names if "TelemetryAgent" in n], names
    with pytest.raises(ValueError):
        ray.get_actor(LLM_SERVE_TELEMETRY_ACTOR_NAME, namespace=LLM_SERVE_TELEMETRY_NAMESPACE)


def test_the_engine_threads_busy_wait_briefly(served):
    """CPU replicas give their engine processes a short OpenMP busy-wait (serving.cpu_binding.omp_wait_env):
    the engine's worker, where the OpenMP threads run, has it in its environment."""
    import psutil
    import ray

    from serving import cpu_binding

    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    workers = [p for p in raylet.children(recursive=True) if p.name().startswith("VLLM::Worker")]
    assert workers, [p.name() for p in raylet.children(recursive=True)]
    for p in workers:
        env = p.environ()
        assert {k: env[k] for k in cpu_binding.OMP_WAIT_VARS if env.get(k)} == cpu_binding.omp_wait_env()
        assert "libgomp" in env.get("LD_PRELOAD", "")  # vLLM's OpenMP: GNU's, which reads it


def test_cpu_replicas_stream_each_chunk_as_it_comes(served):
    """CPU replicas turn Ray Serve LLM's stream batching off (serving.app.llm_config_dict); the running
    LLMServer has it, and Serve's processes export their cached metrics once a second
    (serving.ingress.THROUGHPUT_ENV)."""
    import psutil
    import ray
    from ray import serve

    handle = serve.get_deployment_handle("LLMServer:smollm2", app_name=served["cfg"].app_name)
    config = handle.llm_config.remote().result(timeout_s=60)
    assert config.experimental_configs["stream_batching_interval_ms"] == 0
    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    prefix = f"ray::ServeReplica:{served['cfg'].app_name}:"
    replicas = {p.name().removeprefix(prefix): p for p in raylet.children() if p.name().startswith(prefix)}
    assert {"OpenAiIngress", "LLMServer:smollm2"} <= set(replicas), list(replicas)
    assert {p.environ().get("RAY_SERVE_METRICS_EXPORT_INTERVAL_MS") for p in replicas.values()} == {"1000"}


def test_completions_and_chat_with_the_openai_client(client):
    done = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12, temperature=0)
    assert done.choices[0].text.strip() and done.usage.completion_tokens == 12
    assert done.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=20, temperature=0)
    answer = chat.choices[0].message.content
    assert "Paris" in answer and chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens > 5


def test_streaming_gives_the_same_text_as_non_streaming(client):
    full = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=16, temperature=0,
                                                 stream=True))
    assert len(chunks) > 3
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content
    pieces = list(client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8, temperature=0,
                                            stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices).strip()


@pytest.mark.parametrize("body, raw, status", [
    (None, '{"model": "smollm2", "prompt": ', 400),                                      # bad JSON
    ({"model": "nope", "prompt": "hi"}, None, 404),                                      # unknown model
    ({"model": "smollm2:nope", "prompt": "hi"}, None, 404),                              # unknown adapter
    ({"model": "smollm2", "prompt": "hi", "temperature": 7}, None, 400),                 # out of range
    ({"model": "smollm2", "prompt": "hi", "max_tokens": -3}, None, 400),
    ({"model": "smollm2", "prompt": "hi", "top_p": 1.5}, None, 400),
    ({"model": "smollm2", "prompt": "hi", "max_tokens": 5000}, None, 400),               # > max_model_len
    ({"model": "smollm2", "prompt": "hello " * 1100, "max_tokens": 4}, None, 400),       # prompt too long
    ({"model": "smollm2", "prompt": "hi", "temperature": 7, "stream": True}, None, 400),  # before streaming
    ({"model": "smollm2", "messages": "not a list"}, None, 400),
])
def test_bad_requests_get_4xx_with_an_openai_error_body(served, body, raw, status):
    path = "/chat/completions" if body and "messages" in body else "/completions"
    t0 = time.perf_counter()
    r = _post(served, path, body, raw=raw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and "type" in err
    assert time.perf_counter() - t0 < 30


def test_unknown_route_is_an_openai_404(served):
    r = requests.get(f"{served['url']}/nothing-here", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 404 and "error" in r.json()


def test_auth_refuses_missing_and_wrong_keys_and_never_logs_the_key(served):
    from openai import AuthenticationError

    from serving.client import openai_client

    assert requests.get(f"{served['url']}/models", timeout=30).status_code == 401
    r = _post(served, "/completions", {"model": "smollm2", "prompt": "hi"}, key="sk-wrong")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(AuthenticationError):
        openai_client(served["url"], "sk-wrong").models.list()
    logs = isolate_side_files().ray_temp
    leaked = [str(p) for p in logs.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000
              and KEY.encode() in p.read_bytes()]
    assert not leaked, f"API key written to {leaked}"


def _hf_peft_greedy(base: Path, adapter: Path, prompt: str, n: int) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base_model, adapter)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_lora_adapters_match_transformers_and_peft(client, served):
    n = 16
    expected = _hf_peft_greedy(served["base"], served["adapter"], PROMPT, n)
    base = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=n, temperature=0)
    assert base.choices[0].text != expected, "the adapter should change the output"
    for name in ("smollm2:local", "smollm2:s3"):
        out = client.completions.create(model=name, prompt=PROMPT, max_tokens=n, temperature=0)
        assert out.choices[0].text == expected, name


def test_planned_kv_capacity_is_what_the_engine_allocated(served):
    from serving.metrics import engine_kv_info

    plan = served["plan"].plans["smollm2"]
    got = engine_kv_info(served["cfg"].app_name, "smollm2")
    assert got["num_blocks"] == plan.num_blocks and got["block_size"] == plan.block_size
    assert abs(got["kv_cache_size_tokens"] - plan.kv_capacity_tokens) <= 0.05 * got["kv_cache_size_tokens"]
    assert got["kv_cache_memory_bytes"] == plan.kv_cache_bytes


def test_a_plan_that_cannot_fit_is_refused_before_any_deployment(served):
    from ray import serve

    from serving.app import plan_app
    from serving.planner import PlanError

    cfg = served["cfg"]
    big = cfg.model_copy(update={"app_name": "toobig", "models": [cfg.models[0].model_copy(update={
        "name": "big", "targets": cfg.models[0].targets.model_copy(update={"node_memory_gb": 2.0,
                                                                           "context_length": 8192})})]})
    with pytest.raises(PlanError, match="does not fit"):
        plan_app(big)
    assert "toobig" not in serve.status().applications


def test_metrics_reach_rays_metrics_endpoint(client, served):
    from serving.metrics import KEY_METRICS, families, metrics_urls, scrape, total

    long_prompt = "Ray Serve runs vLLM replicas behind an OpenAI-compatible API. " * 30  # > 2 KV blocks
    for _ in range(2):  # the second request hits the prefix cache
        client.completions.create(model="smollm2", prompt=long_prompt, max_tokens=2, temperature=0)
    (url,) = metrics_urls()
    deadline = time.monotonic() + 90
    while True:
        samples = scrape(url)
        missing = [n for n in KEY_METRICS.values() if n not in families(samples)]
        hits = total(samples, "ray_vllm_prefix_cache_hits_total")
        if (not missing and hits > 0) or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not missing, missing
    assert hits > 0
    assert total(samples, "ray_vllm_generation_tokens_total") > 0
    assert total(samples, "ray_serve_num_http_requests_total") > 0
    assert total(samples, "ray_vllm_time_to_first_token_seconds_count") > 0
    # raylm's own request metrics (serving/metrics.py RequestMetricsMiddleware): per model and outcome;
    # the auth test's refused requests are counted as rejected
    assert total(samples, "ray_raylm_serve_requests_total", 'model="smollm2"') >= 2
    assert total(samples, "ray_raylm_serve_requests_total", 'status="rejected"') > 0
    assert total(samples, "ray_raylm_serve_request_latency_seconds_count", 'model="smollm2"') >= 2


def test_two_models_become_two_deployments_behind_one_ingress(served):
    """Multi-model (a base model and, e.g., its compressed variant): built, not started (one app start-up
    per module is the budget); each model keeps its own replicas/autoscaling and engine arguments."""
    from serving.app import build_app, plan_app
    from serving.auth import digests
    from serving.config import AutoscalingConfig

    cfg = served["cfg"].model_copy(update={"models": [
        served["cfg"].models[0].model_copy(update={"lora_adapters": [], "replicas": 2}),
        served["cfg"].models[0].model_copy(update={
            "name": "smollm2-long", "lora_adapters": [],
            "autoscaling": AutoscalingConfig(min_replicas=0, max_replicas=3),
            "targets": served["cfg"].models[0].targets.model_copy(update={"context_length": 2048})}),
    ]})
    app_plan = plan_app(cfg)
    ingress = build_app(app_plan, digests([KEY]))._bound_deployment
    llm = ingress.init_kwargs["llm_deployments"]
    assert set(llm) == {"smollm2", "smollm2-long"}
    first, second = (llm[n]._bound_deployment for n in ("smollm2", "smollm2-long"))
    assert first.num_replicas == 2
    assert second._deployment_config.autoscaling_config.max_replicas == 3
    engines = {n: d.init_kwargs["llm_config"].engine_kwargs for n, d in (("a", first), ("b", second))}
    assert engines["a"]["max_model_len"] == 1024 and engines["b"]["max_model_len"] == 2048
    assert engines["b"]["kv_cache_memory_bytes"] == app_plan.plans["smollm2-long"].kv_cache_bytes
    assert ingress.ray_actor_options["num_cpus"] == 0.5


def test_app_builder_builds_the_same_app_from_a_serve_section(served):
    """What a RayService's `serveConfigV2` runs (`import_path: serving.app:app_builder`, cluster/k8s.py):
    raylm's ingress and one LLM deployment per model, from the recipe's serve section as plain data."""
    from ray.serve import Application

    from serving.app import app_builder

    model = served["cfg"].models[0]
    built = app_builder({"serve": {"models": [{"name": "m", "path": model.path, "device": "cpu"}]}})
    assert isinstance(built, Application)
    assert built._bound_deployment.name == "OpenAiIngress"
    with pytest.raises(ValueError, match="args must be"):
        app_builder({"llm_configs": []})


def test_hostile_requests_never_get_a_5xx_and_the_app_survives(served):
    """Issue 10's API fuzzing (tests/reliability/api_fuzz.py) on this module's app: last, because it is
    the one test that tries to break it."""
    check_hostile_requests(served["url"].removesuffix("/v1"), KEY)
