"""`rslm serve`: an OpenAI-compatible HTTP server for base + adapter.

    GET  /v1/models             the one model served
    POST /v1/chat/completions   messages -> the model's chat format -> generate
                                (`stream: true` answers as server-sent events, one chunk;
                                `best_of: N` samples N answers and returns the one the process
                                reward model scores highest, every candidate's step scores under
                                the response's `reward` key)

Binds 127.0.0.1 unless told otherwise; with a token configured every /v1 request needs
`Authorization: Bearer <token>`. One generation at a time (one model, one device)."""
from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Request
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
    seed: int | None = None
    stream: bool = False
    best_of: int = Field(default=1, ge=1, le=32)


def _conversation(request: ChatRequest, default_system: str) -> list[Message]:
    """The request's messages; the served model's own system prompt when the client sends none."""
    messages = [Message(role=m.role, content=m.content) for m in request.messages]
    if default_system and not any(m.role == "system" for m in messages):
        messages.insert(0, Message(role="system", content=default_system))
    return messages


def _invalid(message: str) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": {"message": message, "type": "invalid_request_error"}})


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_exposure(host: str, token: str | None, token_env: str) -> None:
    """The bind policy: loopback without a token is fine; any other address needs one."""
    if host not in LOOPBACK and not token:
        raise ConfigError(f"refusing to serve on {host} without a token: set {token_env}")


def create_app(generator: Generator, model_id: str, token: str | None = None, scorer: RewardScorer | None = None) -> FastAPI:
    # FastAPI reads the handlers' annotations: its types are imported at module level (this module
    # is only imported by `rslm serve`).
    app = FastAPI(title="reasoning-slm", version="1")
    lock = threading.Lock()

    def authorised(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        if not (header.startswith("Bearer ") and secrets.compare_digest(header[7:], token)):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "reasoning-slm"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    def chat(request: ChatRequest):
        conversation = _conversation(request, generator.system_prompt)
        limit = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_NEW_TOKENS
        if request.best_of > 1 and scorer is None:
            return _invalid("best_of needs a process reward model: start the server with --reward-model")
        reward = None
        try:
            with lock:
                if request.best_of > 1:
                    picked = best_of(generator, scorer, conversation, request.best_of, max_new_tokens=limit,
                                     temperature=request.temperature, seed=request.seed or 0)
                    text, completion_tokens, reward = picked.text, picked.completion_tokens, picked.metadata()
                    prompt_tokens = len(generator.prompt_ids(conversation))
                else:
                    text, prompt_tokens, completion_tokens = generator.complete(
                        conversation, max_new_tokens=limit, temperature=request.temperature, seed=request.seed or 0)
        except FormatError as error:
            return _invalid(str(error))
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


def run(generator: Generator, model_id: str, host: str, port: int, token: str | None,
        scorer: RewardScorer | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(generator, model_id, token, scorer), host=host, port=port, log_level="info", access_log=False)
