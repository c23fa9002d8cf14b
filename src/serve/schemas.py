"""Request and response bodies of the HTTP API (pydantic, strict: no type coercion, no unknown fields).

Types and required fields are checked here (422 naming the field); content limits (text size,
control characters, session names, generation ranges) are checked by the service with the limits
of the serve config, also answered with 422 and the reason.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ChatRequest(_Request):
    session: str
    text: str
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    beam_width: int = 1
    truncate: bool = False


class ReasonRequest(_Request):
    session: str
    text: str
    mode: Literal["cot", "plan", "reflect"]
    max_steps: int | None = None
    max_new_tokens: int | None = None


class StoreRequest(_Request):
    session: str
    text: str
    level: Literal["long_term", "episodic"] = "long_term"
    role: Literal["note", "observation", "reflection", "plan"] = "note"
    importance: float | None = None


class RecallRequest(_Request):
    session: str
    query: str
    long_term_k: int | None = None
    episodic_k: int | None = None


class ForgetRequest(_Request):
    session: str
    older_than_hours: float | None = None


class InteractionRequest(_Request):
    text: str
    reply: str
    steps: int | None = None


class CheckpointRequest(_Request):
    action: Literal["save", "restore"]


class Memory(BaseModel):
    level: Literal["short_term", "long_term", "episodic"]
    id: int
    role: str
    text: str
    score: float
    importance: float | None
    created: float


class ChatReply(BaseModel):
    session: str
    reply: str
    tokens: list[int]
    memories: list[Memory]
    stored: list[int]


class StoreReply(BaseModel):
    session: str
    ids: list[int]


class RecallReply(BaseModel):
    session: str
    memories: list[Memory]


class Turn(BaseModel):
    id: int
    role: str
    text: str
    created: float


class HistoryReply(BaseModel):
    session: str
    turns: list[Turn]


class ForgetReply(BaseModel):
    session: str
    deleted: list[int]
