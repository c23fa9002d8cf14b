"""The HTTP API: FastAPI routes over `ChatService`.

    POST   /chat/message        reply to a message (greedy, sampled or beam search), stored in memory
    POST   /chat/stream         the same reply as server-sent events, one per token, then `done` (or `error`)
    POST   /reason              a reasoning program (cot, plan, reflect): its steps and its answer
    GET    /chat/history/{s}    the session's chat turns, oldest first (?limit=, at most 1000)
    POST   /memory/store        store a text (long-term chunks or one episodic memory)
    POST   /memory/recall       the three levels for a query, each with its score
    DELETE /memory/{id}         forget one memory of a session (?session=)
    POST   /memory/forget       forget a session's memories older than some hours, or all of it
    GET    /memory/stats        counts per level (?session= for one session)
    POST   /train/interaction   a few LoRA steps on (text, reply)
    POST   /train/checkpoint    save or restore the adapter (atomic file)
    GET    /train/stats         LoRA steps taken, recent losses, adapter size, last save
    GET    /                    the chat page (`page/index.html`: plain HTML and JavaScript over this API)
    GET    /health              device, model kind and size, memory counts, uptime (503 and the reason when
                                writes are refused); open without the token

Every error is JSON `{"detail": ...}` with the reason: 422 for bad input (malformed JSON, a body
that is not UTF-8 or nests deeper than `bodies.MAX_DEPTH`, missing or mistyped fields, text over
the limit, control characters, a bad session name), 404 for an unknown session or memory (an id
outside SQLite's integers too), 401 without the token (when one is set), 413 for a body over
`max_request_bytes`, 503 while the service cannot answer (shutting down, its database removed or
replaced, a full disk; a stream ends with an `error` event instead). Input is checked before
anything is written.
"""

import hmac
import json
import os
from collections.abc import AsyncGenerator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.checkpoints import CheckpointError
from src.memory_system.database import DatabaseUnavailable
from src.memory_system.manager import MemoryInputError, Recalled, UnknownMemory, UnknownSession
from src.serve import schemas
from src.serve.bodies import body_problem
from src.serve.chat import ChatService, GenerationRequest, ServiceUnavailable
from src.serve.reason import reason

MAX_HISTORY = 1000
_DRAIN_LIMIT = 8 * 2**20  # an oversized body is read (and dropped) up to this before the 413 is sent
OPEN_PATHS = ("/", "/health")  # the chat page and liveness: no bearer token (the page sends it with its calls)
PAGE = Path(__file__).with_name("page") / "index.html"


def _memories(recalled: Iterable[Recalled]) -> list[schemas.Memory]:
    return [schemas.Memory(**vars(memory)) for memory in recalled]


def _generation(request: schemas.ChatRequest) -> GenerationRequest:
    fields = request.model_dump(exclude={"session", "text"})
    return GenerationRequest(**fields)


async def _send_json(send: Send, status: int, detail: str, headers: tuple = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware in front of the app: the bearer token (all routes but `OPEN_PATHS`) and the body size limit.

    The body is read before the app sees it; one larger than `max_bytes` is answered 413, and one that
    is not UTF-8 or nests too deep (`bodies.body_problem`) 422, without reaching a route, so neither
    can write anything.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, token: str | None):
        self.app, self.max_bytes = app, max_bytes
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.expected is not None and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                reason = "missing or wrong bearer token: send 'Authorization: Bearer <token>'"
                return await _send_json(send, 401, reason, ((b"www-authenticate", b"Bearer"),))
        body, size, more = b"", 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_bytes:
                body += chunk
            more = message.get("more_body", False) and size <= _DRAIN_LIMIT
        if size > self.max_bytes:
            return await _send_json(send, 413, f"request body is over the limit of {self.max_bytes} bytes")
        if problem := body_problem(body):
            return await _send_json(send, 422, problem)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _reason(error: dict) -> str:
    """One validation error as `location: message (cause)`, the cause being e.g. the JSON parser's."""
    cause = error.get("ctx", {}).get("error")
    return ".".join(str(part) for part in error["loc"]) + f": {error['msg']}" + (f" ({cause})" if cause else "")


def create_app(service: ChatService) -> Guard:
    """The ASGI application of the service (FastAPI behind the `Guard` middleware)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncGenerator[None]:
        yield
        service.close()  # at shutdown (SIGINT, SIGTERM): the database is closed cleanly

    app = FastAPI(title="memory-models chat", description=__doc__.splitlines()[0], lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        # The reasons without the offending input (which may be a megabyte of it).
        reasons = [_reason(e) for e in error.errors()]
        return JSONResponse({"detail": reasons}, status_code=422)

    @app.exception_handler(MemoryInputError)
    async def bad_input(_: Request, error: MemoryInputError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(UnknownSession)
    @app.exception_handler(UnknownMemory)
    async def unknown(_: Request, error: LookupError) -> JSONResponse:
        return JSONResponse({"detail": str(error.args[0])}, status_code=404)

    @app.exception_handler(CheckpointError)
    async def no_adapter(_: Request, error: CheckpointError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(ServiceUnavailable)
    @app.exception_handler(DatabaseUnavailable)
    async def unavailable(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/health", response_model=None)  # a dict, or the 503 response
    def health() -> dict | JSONResponse:
        if reason := service.unavailable():
            return JSONResponse({"status": "unavailable", "detail": reason}, status_code=503)
        return service.health()

    @app.post("/chat/message")
    def chat_message(request: schemas.ChatRequest) -> schemas.ChatReply:
        result = service.reply(request.session, request.text, _generation(request))
        return schemas.ChatReply(
            session=result["session"],
            reply=result["reply"],
            tokens=result["tokens"],
            memories=_memories(result["memories"]),
            stored=result["stored"],
        )

    @app.post("/chat/stream")
    def chat_stream(request: schemas.ChatRequest) -> StreamingResponse:
        events = service.stream(request.session, request.text, _generation(request))

        def server_sent_events() -> Iterator[str]:
            try:
                for event in events:
                    kind = event.pop("event")
                    yield f"event: {kind}\ndata: {json.dumps(event)}\n\n"
            except (ServiceUnavailable, DatabaseUnavailable) as error:  # the 503 a plain request would get
                yield f"event: error\ndata: {json.dumps({'status': 503, 'detail': str(error)})}\n\n"

        return StreamingResponse(server_sent_events(), media_type="text/event-stream")

    @app.post("/reason")
    def reason_route(request: schemas.ReasonRequest) -> dict:
        arguments = (request.text, request.mode, request.max_steps, request.max_new_tokens)
        result = reason(service, request.session, *arguments)
        return {**result, "memories": _memories(result["memories"])}

    @app.get("/chat/history/{session}")
    def chat_history(session: str, limit: int = 100) -> schemas.HistoryReply:
        if not 1 <= limit <= MAX_HISTORY:
            raise MemoryInputError(f"limit must lie in [1, {MAX_HISTORY}], got {limit}")
        return schemas.HistoryReply(session=session, turns=service.memory.history(session, limit))

    @app.post("/memory/store")
    def memory_store(request: schemas.StoreRequest) -> schemas.StoreReply:
        ids = service.memory.store(request.session, request.text, request.level, request.role, request.importance)
        return schemas.StoreReply(session=request.session, ids=ids)

    @app.post("/memory/recall")
    def memory_recall(request: schemas.RecallRequest) -> schemas.RecallReply:
        recalled = service.memory.recall(request.session, request.query, request.long_term_k, request.episodic_k)
        return schemas.RecallReply(session=request.session, memories=_memories(recalled))

    @app.delete("/memory/{memory_id}")
    def memory_delete(memory_id: int, session: str) -> schemas.ForgetReply:
        return schemas.ForgetReply(session=session, deleted=service.memory.forget(session, memory_id=memory_id))

    @app.post("/memory/forget")
    def memory_forget(request: schemas.ForgetRequest) -> schemas.ForgetReply:
        deleted = service.memory.forget(request.session, older_than_hours=request.older_than_hours)
        return schemas.ForgetReply(session=request.session, deleted=deleted)

    @app.get("/memory/stats")
    def memory_stats(session: str | None = None) -> dict:
        return service.memory.stats(session)

    @app.post("/train/interaction")
    def train_interaction(request: schemas.InteractionRequest) -> dict:
        return service.learn(request.text, request.reply, request.steps)

    @app.get("/train/stats")
    def train_stats() -> dict:
        return service.train_stats()

    @app.post("/train/checkpoint")
    def train_checkpoint(request: schemas.CheckpointRequest) -> dict:
        return service.save_adapter() if request.action == "save" else service.restore_adapter()

    token = os.environ.get(service.config.auth_token_env) or None
    return Guard(app, service.config.max_request_bytes, token)
