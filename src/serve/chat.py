"""The chat service without HTTP: replies, streamed replies, memory and incremental learning.

A reply is generated from a prompt of the session's recalled memories, its conversation (the
short-term buffer) and the message, laid out by `src.serve.turns` (a play script, or the tokenizer's
chat template when its directory has one), read through the model's tokenizer
(`LanguageModel.tokenizer`: UTF-8 bytes, or a pretrained model's `tokenizer.json`) and cut to its
last `chat.context_bytes` tokens (bytes for a byte-level model; an adapted model's positions less
`max_new_tokens` when fewer). A message whose own turn is longer than that is refused with the
limit, unless the request sets `truncate`.
Generation stops at the stop token (`chat.stop`, one token) or at `max_new_tokens`; the exchange is
then written to memory in one transaction. Under `chat.session_state: carry` the session's turns are
not replayed: the reply continues the model state stored with the session's last exchange, and the
state after this one is stored in the same transaction (`src.serve.session_state`).
The model is any checkpoint of `memory-models train` (`src.runs.load_trained_model`), used under one
lock (generation and learning change or read its weights). A streamed reply takes the lock for each
token only, never across a `yield`: a client that stops reading or goes away holds nothing, and a reply
streamed while `learn` runs continues with the weights learned in between. Embeddings come from a
frozen copy of the model taken before any adapter exists, so stored vectors stay comparable while the
adapter learns. `close` (at shutdown) ends every generation in flight at its next token with
`ServiceUnavailable`.
"""

import copy
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from src.generation import PromptTooLong, beam_search, check_sampling, fit_prompt, generate_stream, prompt_limit
from src.language_model import LanguageModel
from src.memory_system.database import CarriedState
from src.memory_system.embedding import embed_texts
from src.memory_system.manager import MemoryInputError, MemoryManager, Recalled
from src.runs import build_model, load_trained_model, select_device
from src.serve.config import ServeConfig
from src.serve.learning import IncrementalLearner
from src.serve.session_state import SessionStart, SessionStates
from src.serve.turns import turn_format
from src.validation import ConfigError


class ServiceUnavailable(RuntimeError):
    """The service cannot answer now (it is shutting down); the message says why."""


@dataclass(frozen=True)
class GenerationRequest:
    """How to generate one reply (checked against the config's limits by `ChatService.check`)."""

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    beam_width: int = 1
    truncate: bool = False  # a message longer than the prompt limit keeps its last tokens instead of a 422


def load_model(checkpoint_path: str, device: str) -> LanguageModel:
    """The model of a `memory-models train` checkpoint, a PaperModel or an adapted model; a byte-level model
    must read every byte (vocab_size >= 256)."""
    model = load_trained_model(checkpoint_path, select_device(device, "device")).model
    if model.vocab_size < 256:
        raise ConfigError(
            f"{checkpoint_path}: a chat model reads text, so its vocabulary must hold at least the 256 bytes, "
            f"got vocab_size {model.vocab_size}"
        )
    return model


def load_served_model(config: ServeConfig) -> LanguageModel:
    """The model a serve config names: its checkpoint's (`load_model`), or its pretrained directory's, frozen
    and quantised as `pretrained` says (an adapted model without adapters; the service adds its LoRA)."""
    if config.checkpoint is not None:  # else `pretrained` (load_serve_config takes exactly one)
        return load_model(config.checkpoint, config.device)
    device = select_device(config.device, f"{config.file}: device")
    return build_model({"base": config.pretrained, "adapters": []}, config.file, device).eval()


def stop_token(config: ServeConfig, model: LanguageModel) -> int:
    """The one token id of `chat.stop` under the model's tokenizer (a ConfigError names the key otherwise)."""
    ids = model.tokenizer.encode(config.chat.stop)
    if len(ids) != 1:
        raise ConfigError(f"{config.file}: key 'chat.stop' must be one token of the model, it is {len(ids)}: {ids}")
    return ids[0]


class ChatService:
    """Replies with memory for every session; see the module docstring."""

    def __init__(self, config: ServeConfig, model: LanguageModel):
        self.config = config
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.stop_id = stop_token(config, model)
        self.format = turn_format(model, config.chat)
        self._embedder = copy.deepcopy(model).requires_grad_(False)
        self._model_lock, self._embed_lock = threading.Lock(), threading.Lock()
        self._closing = threading.Event()
        try:
            prompt_limit(model, config.chat.max_new_tokens, config.chat.context_bytes, "chat.context_bytes")
        except PromptTooLong as error:
            raise ConfigError(f"{config.file}: key 'chat.max_new_tokens': {error}") from error
        self.memory = MemoryManager(config.database, model.hidden_size, self._embed, config.memory)
        self.learner = IncrementalLearner(model, config.learning)
        self.sessions = SessionStates(model, self.memory, config.chat.session_state, config.file)
        self._started = time.monotonic()

    def _embed(self, texts: list[str]) -> np.ndarray:
        with self._embed_lock:
            return embed_texts(self._embedder, texts)

    def check(self, request: GenerationRequest) -> int:
        """Raise MemoryInputError naming the first generation argument outside the limits; return max_new_tokens."""
        chat = self.config.chat
        max_new_tokens = chat.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens
        if not 1 <= max_new_tokens <= chat.max_new_tokens:
            raise MemoryInputError(f"max_new_tokens must lie in [1, {chat.max_new_tokens}], got {max_new_tokens}")
        if not 1 <= request.beam_width <= chat.max_beam_width:
            raise MemoryInputError(f"beam_width must lie in [1, {chat.max_beam_width}], got {request.beam_width}")
        if request.beam_width > 1 and request.temperature != 0:
            raise MemoryInputError("beam search is deterministic: beam_width > 1 needs temperature 0")
        try:
            check_sampling(
                max_new_tokens, request.temperature, request.top_k, request.top_p, request.seed, self.model.vocab_size
            )  # fmt: skip
        except ValueError as error:
            raise MemoryInputError(str(error)) from error
        return max_new_tokens

    def prompt(
        self, session: str, text: str, max_new_tokens: int, truncate: bool = False, replay: bool = True
    ) -> tuple[list[int], list[Recalled]]:
        """The prompt's token ids for a message, and the memories it shows: its last tokens within
        `chat.context_bytes` and the model's positions. A message whose own turn is longer is refused
        (MemoryInputError naming the limit) unless `truncate`. Without `replay` the session's turns are
        left out (a carried state has read them)."""
        chat = self.config.chat
        bound, reason = prompt_limit(self.model, max_new_tokens, chat.context_bytes, "chat.context_bytes")
        turn = self.tokenizer.encode(self.format.prompt([], [], text))
        try:
            fit_prompt(turn, bound, reason, truncate, '"truncate": true')
        except PromptTooLong as error:
            raise MemoryInputError(f"text: {error}") from error
        recalled = self.memory.recall(session, text) if session in self.memory.sessions else []
        remembered = [memory.text for memory in recalled if memory.level != "short_term"]
        turns = [(turn.role, turn.text) for turn in self.memory.conversation(session)] if replay else []
        layout = self.format.prompt(remembered, turns, text)
        return self.tokenizer.encode(layout)[-bound:], recalled

    def _reply_text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens[:-1] if tokens and tokens[-1] == self.stop_id else tokens)

    def reply(self, session: str, text: str, request: GenerationRequest) -> dict:
        """A whole reply: generated (sampled, greedy or beam search), then stored with the message."""
        self.memory.check_session(session)
        self.memory.check_text(text)
        max_new_tokens = self.check(request)
        start = self.sessions.start(session)
        ids, recalled = self.prompt(session, text, max_new_tokens, request.truncate, replay=start.state is None)
        prompt = torch.tensor([ids], device=self._device)
        if request.beam_width > 1:
            with self._model_lock:
                self._check_open()
                tokens = beam_search(
                    self.model, prompt, max_new_tokens, request.beam_width,
                    self.config.chat.length_penalty_alpha, self.stop_id, start.state,
                ).tokens  # fmt: skip
        else:
            tokens = list(self._locked(self._stream_tokens(prompt, max_new_tokens, request, start)))
        reply = self._reply_text(tokens)
        stored = self.memory.record_exchange(session, text, reply, carried=self._carried(session, start, ids, tokens))
        return {"session": session, "reply": reply, "tokens": tokens, "memories": recalled, "stored": stored}

    def stream(self, session: str, text: str, request: GenerationRequest) -> Iterator[dict]:
        """Check everything, then return an iterator of events: one per token, then the stored reply and the
        memories its prompt showed.

        Token events carry the id and the text it completes (characters whole: a character split
        over several tokens, as UTF-8 bytes are, arrives with its last token). Beam search does not stream.
        """
        self.memory.check_session(session)
        self.memory.check_text(text)
        max_new_tokens = self.check(request)
        if request.beam_width != 1:
            raise MemoryInputError("beam search does not stream: beam_width must be 1 on /chat/stream")
        start = self.sessions.start(session)
        ids, recalled = self.prompt(session, text, max_new_tokens, request.truncate, replay=start.state is None)
        return self._events(session, text, ids, recalled, start, max_new_tokens, request)

    def _events(
        self,
        session: str,
        text: str,
        ids: list[int],
        recalled: list[Recalled],
        start: SessionStart,
        max_new_tokens: int,
        request: GenerationRequest,
    ) -> Iterator[dict]:
        decode = self.tokenizer.stream_decoder()
        tokens = []
        prompt = torch.tensor([ids], device=self._device)
        for index, token in enumerate(self._locked(self._stream_tokens(prompt, max_new_tokens, request, start))):
            tokens.append(token)
            piece = "" if token == self.stop_id else decode(token)
            yield {"event": "token", "index": index, "token": token, "text": piece}
        reply = self._reply_text(tokens)
        stored = self.memory.record_exchange(session, text, reply, carried=self._carried(session, start, ids, tokens))
        memories = [vars(memory) for memory in recalled]
        yield {
            "event": "done",
            "session": session,
            "reply": reply,
            "tokens": tokens,
            "stored": stored,
            "memories": memories,
        }

    def _locked(self, tokens: Iterator[int]) -> Iterator[int]:
        """The tokens of `tokens`, each computed under the model's lock, which is free between tokens."""
        while True:
            with self._model_lock:
                self._check_open()
                token = next(tokens, None)
            if token is None:
                return
            yield token

    def _check_open(self) -> None:
        if self._closing.is_set():
            raise ServiceUnavailable("the service is shutting down")

    def unavailable(self) -> str | None:
        """Why the service cannot answer (shutting down, its database removed or replaced), None when it can."""
        return "the service is shutting down" if self._closing.is_set() else self.memory.database.failure()

    def _stream_tokens(
        self, prompt: torch.Tensor, max_new_tokens: int, request: GenerationRequest, start: SessionStart
    ) -> Iterator[int]:
        return generate_stream(
            self.model, prompt, max_new_tokens, request.temperature, request.top_k, request.top_p,
            request.seed, self.stop_id, start.state,
        )  # fmt: skip

    def complete(self, text: str, max_new_tokens: int) -> str:
        """The greedy continuation of `text` (cut to the context and the model's positions) up to the stop
        token: the reasoning programs' model (`src.serve.reason`)."""
        bound, _ = prompt_limit(self.model, max_new_tokens, self.config.chat.context_bytes, "chat.context_bytes")
        prompt = torch.tensor([self.tokenizer.encode(text)[-bound:]], device=self._device)
        tokens = self._stream_tokens(prompt, max_new_tokens, GenerationRequest(), SessionStart(None, 0))
        return self._reply_text(list(self._locked(tokens)))

    def _carried(self, session: str, start: SessionStart, prompt: list[int], tokens: list[int]) -> CarriedState | None:
        """The session's state to store with the exchange (None under replay), read under the model's lock."""
        if not self.sessions.carry:
            return None
        with self._model_lock:
            self._check_open()
            return self.sessions.after(session, start, prompt + self.sessions.reply_ids(tokens, self.stop_id))

    def learn(self, text: str, reply: str, steps: int | None) -> dict:
        """A few LoRA steps on one interaction: the model learns to answer `text` with `reply`."""
        self.memory.check_text(text)
        self.memory.check_text(reply, "reply")
        steps = self.config.learning.steps if steps is None else steps
        if not 1 <= steps <= self.config.learning.max_steps:
            raise MemoryInputError(f"steps must lie in [1, {self.config.learning.max_steps}], got {steps}")
        chat = self.config.chat
        prompt = self.tokenizer.encode(self.format.prompt([], [], text))
        target = [*self.tokenizer.encode(reply), self.stop_id]
        with self._model_lock:
            return self.learner.learn(prompt[-chat.context_bytes :], target, steps)

    def train_stats(self) -> dict:
        with self._model_lock:
            return self.learner.stats()

    def health(self) -> dict:
        """The device, the model's kind and size, how sessions are carried, the memory counts, the uptime."""
        model = self.model
        return {
            "status": "ok",
            "device": str(model.device),
            "model": {
                "kind": type(model).__name__,
                "parameters": model.num_parameters(),
                "trainable_parameters": model.trainable_parameters(),
                "vocab_size": model.vocab_size,
                "constant_state": model.constant_state,
            },
            "session_state": self.config.chat.session_state,
            "memory": self.memory.stats(),
            "uptime_seconds": time.monotonic() - self._started,
        }

    def save_adapter(self) -> dict:
        with self._model_lock:
            return self.learner.save(self.config.learning.adapter_path)

    def restore_adapter(self) -> dict:
        with self._model_lock:
            return self.learner.restore(self.config.learning.adapter_path)

    @property
    def _device(self) -> torch.device:
        return self.model.device

    def close(self) -> None:
        """End the generations in flight at their next token, then close the database."""
        self._closing.set()
        with self._model_lock:
            self.memory.close()
