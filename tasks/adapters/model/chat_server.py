"""`rslm serve`: an OpenAI-compatible HTTP server for base + adapter.

    GET  /v1/models             the one model served
    POST /v1/chat/completions   messages -> the model's chat format -> generate
                                (`stream: true` answers as server-sent events, one chunk;
                                `best_of: N` samples N answers and returns the one the process
                                reward model scores highest, every candidate's step scores under
                                the response's `reward` key)

Binds 127.0.0.1 unless told otherwise; with a token configured every /v1 request needs
`Authorization: Bearer <token>`.

Queueing: one generation at a time (one model, one device), first come first served. At most
`max_waiting` requests wait behind it, each for at most `wait_timeout_s`; a request past either
bound is refused with 503 and `Retry-After` (OpenAI clients retry those), so no client hangs and
memory stays bounded whatever the load. A body declared over 1 MiB gets 413; a prompt that fills
the model's context gets 400, and `max_tokens` is cut to what the context has left."""
from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tasks.adapters.model.best_of import best_of
from tasks.adapters.model.inference import DEFAULT_MAX_NEW_TOKENS, Generator
from tasks.adapters.model.reward_model import RewardScorer
from tasks.domain.errors import ConfigError
from tasks.domain.formatting import FormatError
from tasks.domain.records import Message


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n, stop, ...)

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)  # torch's seed range
    stream: bool = False
    best_of: int = Field(default=1, ge=1, le=32)


def _conversation(request: ChatRequest, system_turn: Callable[[str], str]) -> list[Message]:
    """The request's messages; the served model's own system turn for its first question (its
    system prompt, with that question's principles for a grounded model) when the client sends none."""
    messages = [Message(role=m.role, content=m.content) for m in request.messages]
    if not any(m.role == "system" for m in messages):
        question = next((m.content for m in messages if m.role == "user"), "")
        if system := system_turn(question):
            messages.insert(0, Message(role="system", content=system))
    return messages


def _invalid(message: str) -> JSONResponse:
    return _error(400, message, "invalid_request_error")


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}}, headers=headers)


MAX_BODY_BYTES = 1 << 20


class Overloaded(Exception):
    """The queue is full, or a request waited its whole timeout."""


class GenerationQueue:
    """One holder at a time, first come first served; at most `max_waiting` waiting, each for at
    most `wait_timeout_s`. A request that can run at once is always let in."""

    def __init__(self, max_waiting: int, wait_timeout_s: float):
        self.max_waiting, self.wait_timeout_s = max_waiting, wait_timeout_s
        self._changed = threading.Condition()
        self._waiting: deque[object] = deque()
        self._busy = False

    @contextmanager
    def turn(self):
        ticket = object()
        with self._changed:
            if (self._busy or self._waiting) and len(self._waiting) >= self.max_waiting:
                raise Overloaded(f"{len(self._waiting)} requests already wait for the model")
            self._waiting.append(ticket)
            deadline = time.monotonic() + self.wait_timeout_s
            while self._busy or self._waiting[0] is not ticket:
                if not self._changed.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                    self._waiting.remove(ticket)
                    self._changed.notify_all()
                    raise Overloaded(f"waited {self.wait_timeout_s:g} s for the model")
            self._waiting.popleft()
            self._busy = True
        try:
            yield
        finally:
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._waiting)


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_exposure(host: str, token: str | None, token_env: str) -> None:
    """The bind policy: loopback without a token is fine; any other address needs one."""
    if host not in LOOPBACK and not token:
        raise ConfigError(f"refusing to serve on {host} without a token: set {token_env}")


def create_app(generator: Generator, model_id: str, token: str | None = None, scorer: RewardScorer | None = None,
               max_waiting: int = 16, wait_timeout_s: float = 120.0) -> FastAPI:
    # FastAPI reads the handlers' annotations: its types are imported at module level (this module
    # is only imported by `rslm serve`).
    app = FastAPI(title="reasoning-slm", version="1")
    queue = GenerationQueue(max_waiting, wait_timeout_s)
    context = _context_length(generator)

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error")
        return await call_next(request)

    def authorised(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        if not (header.startswith("Bearer ") and secrets.compare_digest(header[7:], token)):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError):
        # FastAPI's own handler echoes the offending input, and a lone surrogate in it (a field name
        # of "\udf19", say) cannot be encoded as UTF-8: the 422 became a 500 (found by schemathesis).
        # Where and what, escaped, say enough.
        first = next(iter(error.errors()), {})
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}"
        return _error(422, message.encode("utf-8", "backslashreplace").decode("utf-8"), "invalid_request_error")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_id, "waiting": queue.waiting}

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "reasoning-slm"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    def chat(request: ChatRequest):
        conversation = _conversation(request, generator.system_turn)
        limit = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_NEW_TOKENS
        if request.best_of > 1 and scorer is None:
            return _invalid("best_of needs a process reward model: start the server with --reward-model")
        reward = None
        try:
            with queue.turn():  # the tokenizer too: a fast tokenizer shared across threads can fail
                prompt_length = len(generator.prompt_ids(conversation))
                if prompt_length >= context:
                    return _invalid(f"the prompt ({prompt_length} tokens) fills the model's context of {context} tokens")
                limit = min(limit, context - prompt_length)  # as llama.cpp's server does: the answer ends at the context
                if request.best_of > 1:
                    picked = best_of(generator, scorer, conversation, request.best_of, max_new_tokens=limit,
                                     temperature=request.temperature, seed=request.seed or 0)
                    text, prompt_tokens, completion_tokens = picked.text, prompt_length, picked.completion_tokens
                    reward = picked.metadata()
                else:
                    text, prompt_tokens, completion_tokens = generator.complete(
                        conversation, max_new_tokens=limit, temperature=request.temperature, seed=request.seed or 0)
        except (FormatError, UnicodeError) as error:
            return _invalid(str(error))
        except Overloaded as busy:
            return _error(503, f"the model is busy: {busy}; retry later", "server_overloaded",
                          headers={"Retry-After": str(max(1, round(wait_timeout_s / 4)))})
        extra = {"reward": reward} if reward else {}
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        finish = "length" if completion_tokens >= limit else "stop"
        if request.stream:
            def events():
                for delta, reason in (({"role": "assistant", "content": text}, None), ({}, finish)):
                    chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model_id,
                             "choices": [{"index": 0, "delta": delta, "finish_reason": reason}], **extra}
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return {"id": ident, "object": "chat.completion", "created": created, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}, **extra}

    return app


def _context_length(generator: Generator) -> int:
    """The longest sequence the served model accepts (prompt and answer together)."""
    config = getattr(generator.model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def run(generator: Generator, model_id: str, host: str, port: int, token: str | None,
        scorer: RewardScorer | None = None, max_waiting: int = 16, wait_timeout_s: float = 120.0) -> None:
    import uvicorn

    app = create_app(generator, model_id, token, scorer, max_waiting=max_waiting, wait_timeout_s=wait_timeout_s)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
