"""raylm's pieces inside Ray Serve LLM's application: what runs in the replicas.

- `RaylmIngress`: Ray Serve LLM's `OpenAiIngress` plus the recipe's LoRA adapters in `/v1/models` and a
  404 for adapters that are not configured (instead of a failed download deep in a replica).
- `RaylmLLMServer`: Ray Serve LLM's `LLMServer` with an adapter loader that serves the recipe's adapters
  from local folders (single node) or object-store URIs, and keeps downloads in the replica's temp folder.
  With Ray's usage stats off (raylm's embedded Ray turns them off) it starts no telemetry actor.
- `LocalModelCallback`: skips Ray Serve LLM's per-node "download the model" tasks when the model is a
  local folder (each task is a fresh worker importing vLLM: ~15-30 s of start-up for nothing), and on
  CPU nodes pins the engine's threads to the cores the replica claims (`serving.cpu_binding`).
- `openai_error_handler`: FastAPI's `HTTPException`s (unknown model, unknown route) answered with an
  OpenAI-style error body instead of FastAPI's `{"detail": ...}`.

This module is imported inside Ray workers; it must stay importable without the driver's state.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Any

from fastapi import HTTPException, Request
from ray._common.usage.usage_lib import usage_stats_enabled
from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.common.utils.cloud_utils import LoraMirrorConfig, is_remote_path
from ray.llm._internal.common.utils.lora_utils import get_base_model_id, get_lora_id
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard, ModelList
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress
from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from serving.cpu_binding import bind_this_replica

logger = logging.getLogger("ray.serve")

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                405: "invalid_request_error", 408: "timeout", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_exceeded"}


async def openai_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = exc.status_code
    body = {"error": {"message": str(exc.detail), "type": _ERROR_TYPES.get(code, "server_error"),
                      "param": None, "code": code}}
    return JSONResponse(status_code=code, content=body, headers=getattr(exc, "headers", None))


class RaylmIngress(OpenAiIngress):
    """OpenAiIngress that knows each model's configured adapters (`adapters`: base id -> names)."""

    def __init__(self, llm_deployments, model_cards, *, lora_paths=None, adapters: dict[str, list[str]] | None
                 = None, **kwargs: Any):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths, **kwargs)
        self._adapters = {base: list(names) for base, names in (adapters or {}).items()}

    def _adapter_card(self, model_id: str) -> ModelCard | None:
        base, adapter = get_base_model_id(model_id), get_lora_id(model_id)
        if adapter not in self._adapters.get(base, ()):
            return None
        card = self._model_cards[base]
        return ModelCard(id=model_id, object="model", owned_by=card.owned_by,
                         permission=list(card.permission),
                         metadata={**card.metadata, "model_id": model_id, "base_model_id": base})

    async def _get_model_id(self, model: str | None) -> str:
        model_id = await super()._get_model_id(model)
        base = get_base_model_id(model_id)
        if model_id != base and self._lora_paths.get(base) is None and self._adapter_card(model_id) is None:
            known = [f"{base}:{a}" for a in self._adapters.get(base, ())]
            raise HTTPException(404, f'The model "{model_id}" does not exist. LoRA adapters of "{base}": '
                                     f"{known or 'none'}.")
        return model_id

    async def model(self, model_id: str) -> ModelCard | None:
        card = self._adapter_card(model_id)
        return card if card is not None else await super().model(model_id)

    async def models(self) -> ModelList:
        listed = await super().models()
        seen = {m.id for m in listed.data}
        for base, names in self._adapters.items():
            for name in names:
                model_id = f"{base}:{name}"
                if model_id not in seen:
                    listed.data.append(self._adapter_card(model_id))
        return listed


_SAFE_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class AdapterLoader(LoraModelLoader):
    """Resolves `<model>:<adapter>` to a folder vLLM can load: the recipe's local folder as is, an
    object-store URI downloaded once per replica (Ray Serve LLM's downloader, boto3 for s3://)."""

    def __init__(self, download_timeout_s: float | None = None, max_tries: int = 1, *,
                 adapters: dict[str, str] | None = None):
        super().__init__(lora_root=os.path.join(tempfile.gettempdir(), "raylm-lora"),
                         download_timeout_s=download_timeout_s, max_tries=max_tries)
        self._adapters = dict(adapters or {})

    async def load_model_from_config(self, lora_model_id: str, llm_config) -> DiskMultiplexConfig:
        lora_id = get_lora_id(lora_model_id)
        if not _SAFE_ADAPTER_NAME.fullmatch(lora_id) or set(lora_id) <= {"."}:
            # the name becomes a path under `lora_dynamic_path`: nothing that could leave that root
            raise HTTPException(400, f'LoRA adapter name "{lora_id[:100]}" is not allowed (letters, digits, '
                                     "'.', '_' and '-' only)")
        path = self._adapters.get(lora_id)
        if path is None:
            if llm_config.lora_config and llm_config.lora_config.dynamic_lora_loading_path:
                return await super().load_model_from_config(lora_model_id, llm_config)
            raise HTTPException(404, f'LoRA adapter "{lora_model_id}" is not configured')
        if is_remote_path(path):
            mirror = LoraMirrorConfig(lora_model_id=lora_model_id, bucket_uri=path.rstrip("/"),
                                      max_total_tokens=None)
            return await self.load_model(lora_model_id, mirror)
        if lora_model_id not in self.disk_cache:
            if not os.path.isfile(os.path.join(path, "adapter_config.json")):
                raise HTTPException(404, f'LoRA adapter "{lora_model_id}": no adapter_config.json in {path} '
                                         "on this node (local adapter folders work on single-node clusters; "
                                         "use s3:// on multi-node ones)")
            self.disk_cache[lora_model_id] = DiskMultiplexConfig(
                model_id=lora_model_id, max_total_tokens=None, local_path=path,
                lora_assigned_int_id=global_id_manager.next())
        return self.disk_cache[lora_model_id]


class RaylmLLMServer(LLMServer):
    """LLMServer whose LoRA adapters come from the recipe (`lora_adapters`: adapter name -> path/URI)."""

    async def __init__(self, llm_config, *, lora_adapters: dict[str, str] | None = None, **kwargs: Any):
        adapters = dict(lora_adapters or {})

        def loader(download_timeout_s=None, max_tries=1):
            return AdapterLoader(download_timeout_s, max_tries, adapters=adapters)

        kwargs.setdefault("model_downloader", loader)
        await super().__init__(llm_config, **kwargs)

    async def _start_engine(self):
        """Start the engine; Ray's telemetry report only where Ray's usage stats are on.

        Ray Serve LLM pushes each model's usage tags to a detached `TelemetryAgent` actor, created on the
        first engine start, whatever Ray's usage-stats setting. With usage stats off the tags go nowhere,
        and the actor is one more Python process beside the engine: 0.27-0.31 CPU-s per 30 s at rest and
        0.4-0.6 per mixed concurrency-32 run on the 2-core dev VM (docs/serving.md), taken from the cores
        the engine's OpenMP threads are pinned to.
        """
        if usage_stats_enabled():
            return await super()._start_engine()
        if self.engine is None:
            raise ValueError("Engine is not set")
        await self.engine.start()

    async def kv_cache_info(self) -> dict[str, Any]:
        """The paged KV cache the engine allocated (what vLLM logs as 'KV cache size' at start-up)."""
        cache = self.engine._engine_client.vllm_config.cache_config
        return {"num_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
                "kv_cache_size_tokens": cache.kv_cache_size_tokens,
                "max_concurrency": cache.kv_cache_max_concurrency,
                "kv_cache_memory_bytes": cache.kv_cache_memory_bytes, "cache_dtype": str(cache.cache_dtype)}


class LocalModelCallback(CallbackBase):
    """Skip the per-node model download when `model_source` is a folder that exists on this node; on CPU
    nodes, pin the engine's threads to the cores this replica claims (serving.cpu_binding)."""

    async def on_before_node_init(self) -> None:
        mask = bind_this_replica()
        if mask is not None:
            logger.info("raylm: vLLM threads of %s pinned to cores %s",
                        self.llm_config.model_loading_config.model_id, mask)
        source = self.llm_config.model_loading_config.model_source
        if isinstance(source, str) and not is_remote_path(source) and os.path.isdir(source):
            self.ctx.run_init_node = False
