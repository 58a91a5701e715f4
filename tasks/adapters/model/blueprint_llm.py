"""Chat backends for the LLM blueprint generators, a disk cache of their answers, and the
generator that ties them to `tasks/domain/llm_blueprint.py`.

- `openai-compatible`: POST {base_url}/chat/completions (Ollama, LM Studio, vLLM, llama.cpp,
  OpenAI, `rslm serve`), retries with backoff on connection errors, 429 and 5xx;
- `transformers`: a local model (base, base + adapter, or a registry URI) on this machine's device.

Every answer is cached under `$RSLM_HOME/llm-cache/` by backend, model, messages and parameters,
written as soon as it arrives: a re-run costs nothing and a crash resumes where it stopped."""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.adapters.ops.atomic_files import write_text_atomically
from tasks.domain.blueprint import Blueprint, BlueprintGenerator, GeneratorInfo, OfflineBlueprintGenerator
from tasks.domain.config import LLMConfig
from tasks.domain.errors import ConfigError, RslmError
from tasks.domain.framework import Framework
from tasks.domain.hashing import content_hash
from tasks.domain.llm_blueprint import PROMPT_VERSION, assemble, generate_principle
from tasks.domain.records import Message

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMBackendError(RslmError):
    exit_code = 1


class ResponseCache:
    """One JSON file per answer, named by its key; atomic writes, so a crash never leaves half."""

    def __init__(self, root: Path):
        self.root = root

    @staticmethod
    def key(backend: str, model: str, messages: Sequence[Message], params: dict) -> str:
        return content_hash({"backend": backend, "model": model, "params": params,
                             "messages": [m.model_dump() for m in messages]})

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        return json.loads(path.read_text(encoding="utf-8"))["reply"] if path.exists() else None

    def put(self, key: str, reply: str, meta: dict) -> None:
        write_text_atomically(self._path(key), json.dumps({"reply": reply, **meta}, ensure_ascii=False))


class OpenAICompatibleChat:
    backend = "openai-compatible"

    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        self.model = cfg.model
        self._slots = threading.BoundedSemaphore(cfg.concurrency)

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def complete(self, messages: Sequence[Message]) -> str:
        import httpx

        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        body = {"model": self.model, "messages": [m.model_dump() for m in messages], "stream": False,
                **self.cfg.request_params()}
        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random()))  # backoff with jitter
            try:
                with self._slots:
                    response = httpx.post(url, json=body, headers=self._headers(), timeout=self.cfg.timeout_s)
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise LLMBackendError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
            try:
                return response.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise LLMBackendError(f"{url}: not an OpenAI chat completion: {response.text[:300]}") from None
        raise LLMBackendError(f"{url}: gave up after {self.cfg.max_retries + 1} attempts ({last})")


class TransformersChat:
    """A local model answering with the project's own Mistral formatting."""

    backend = "transformers"

    def __init__(self, cfg: LLMConfig, load_registered: Callable[[str], object] | None = None):
        if not cfg.source:
            raise ConfigError("llm.source is required for the transformers generator (model dir, hub id or models:/ URI)")
        self.cfg = cfg
        self.model = cfg.source + (f"+{Path(cfg.adapter).name}" if cfg.adapter else "")
        self._load_registered = load_registered  # a models:/ source: handed in by the caller, which knows the store
        self._generator = None
        self._lock = threading.Lock()

    def _load(self):
        from tasks.adapters.model.inference import load_generator

        if self.cfg.source.startswith("models:/"):
            if self._load_registered is None:
                raise ConfigError(f"llm.source {self.cfg.source}: no model registry to load it from")
            return self._load_registered(self.cfg.source)
        return load_generator(self.cfg.source, self.cfg.adapter, system_prompt="", device=self.cfg.device)

    def complete(self, messages: Sequence[Message]) -> str:
        with self._lock:  # one model, one device: generate one conversation at a time
            if self._generator is None:
                self._generator = self._load()
            return self._generator.reply_to([list(messages)], max_new_tokens=self.cfg.max_tokens,
                                            temperature=self.cfg.temperature)[0]


class LLMBlueprintGenerator:
    """One principle per request (up to `concurrency` at once); the blueprint is assembled only
    when every principle produced valid entries."""

    def __init__(self, chat, cache: ResponseCache, cfg: LLMConfig, progress=None):
        self.chat = chat
        self.cache = cache
        self.cfg = cfg
        self.name = chat.backend
        self.progress = progress

    def cached_complete(self, messages: list[Message]) -> str:
        key = ResponseCache.key(self.chat.backend, self.chat.model, messages, self.cfg.request_params())
        reply = self.cache.get(key)
        if reply is None:
            started = time.perf_counter()
            reply = self.chat.complete(messages)
            self.cache.put(key, reply, {"backend": self.chat.backend, "model": self.chat.model,
                                        "seconds": round(time.perf_counter() - started, 3)})
        return reply

    def generate(self, framework: Framework) -> Blueprint:
        def one(principle):
            return generate_principle(framework, principle, self.cached_complete, backend=self.chat.backend,
                                      model=self.chat.model, repair_attempts=self.cfg.repair_attempts)

        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            futures = [pool.submit(one, p) for p in framework.principles]
            results = [f.result() for f in (self.progress(futures) if self.progress else futures)]
        info = GeneratorInfo(name=self.name, version=PROMPT_VERSION, model=self.chat.model)
        return assemble(framework, [entry for entries in results for entry in entries], info)


GENERATORS = ("offline", "openai-compatible", "transformers")


def blueprint_generator(name: str, cfg: LLMConfig, cache_root: Path, progress=None,
                        load_registered: Callable[[str], object] | None = None) -> BlueprintGenerator:
    """The generator configured as `dataset.generator`."""
    if name == "offline":
        return OfflineBlueprintGenerator()
    if name == "openai-compatible":
        return LLMBlueprintGenerator(OpenAICompatibleChat(cfg), ResponseCache(cache_root), cfg, progress)
    if name == "transformers":
        return LLMBlueprintGenerator(TransformersChat(cfg, load_registered), ResponseCache(cache_root), cfg, progress)
    raise ConfigError(f"unknown blueprint generator {name!r}; known: {list(GENERATORS)}")
