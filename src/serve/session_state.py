"""A chat session carried by the model's own state (`chat.session_state: carry`).

With `replay`, every reply starts from an empty state and the model re-reads the session's recent
turns (the short-term buffer) in its prompt: each turn costs a read of the whole context, and what
falls out of the context is reachable only through the text memories. With `carry`, for a model
whose state does not grow with the sequence (`LanguageModel.constant_state`: every mixer but
attention), the session's `ModelState` after each exchange is stored as bytes
(`ModelState.to_bytes`) in the SQLite transaction that stores the exchange, and the next turn
continues from it: its prompt is the recalled memories and the new message only. A session without
a state (new, or reset because a forget deleted some of its memories: a state cannot unread one)
starts with the replay prompt, so it continues from what is left.

After an exchange the state has read the turn's prompt, the reply's tokens (without the stop token)
and the separator "\n\n" of the replay layout; the ids it read are stored beside it
(`session_reads`), so a stored state always equals one forward pass over the session's stored
reads. No lock is held across a turn (a streamed reply holds nothing between tokens): a state is
written only while the stored one is still the state it continued, so of two turns of one session
that overlap, the second to commit resets the session's state (`MemoryDatabase.insert`).
"""

from dataclasses import dataclass

import torch

from src.language_model import LanguageModel, ModelState
from src.memory_system.database import CarriedState
from src.memory_system.manager import MemoryManager
from src.serve.turns import SEPARATOR
from src.validation import ConfigError


@dataclass(frozen=True)
class SessionStart:
    """Where a turn starts: the session's carried state (None: the replay prompt) and the tokens it has read."""

    state: ModelState | None
    tokens: int


class SessionStates:
    """The carried states of a service's sessions (`mode` carry), or nothing at all (`mode` replay)."""

    def __init__(self, model: LanguageModel, memory: MemoryManager, mode: str, file: str):
        if mode == "carry" and not model.constant_state:
            raise ConfigError(
                f"{file}: key 'chat.session_state' is 'carry', but the model's state grows with the conversation "
                "(an attention KV cache): use 'replay'"
            )
        self.model, self.memory, self.carry = model, memory, mode == "carry"

    def start(self, session: str) -> SessionStart:
        """The state a turn of `session` continues (read from the database: restored after a restart)."""
        stored = self.memory.carried_state(session) if self.carry else None
        if stored is None:
            return SessionStart(None, 0)
        return SessionStart(self.model.state_from_bytes(stored[0]), stored[1])

    def reply_ids(self, reply_tokens: list[int], stop_id: int) -> list[int]:
        """What the state reads of a reply: its tokens without the stop token, then the turn separator."""
        tokens = reply_tokens[:-1] if reply_tokens and reply_tokens[-1] == stop_id else reply_tokens
        return [*tokens, *self.model.tokenizer.encode(SEPARATOR)]

    @torch.no_grad()
    def after(self, session: str, start: SessionStart, read: list[int]) -> CarriedState:
        """The state to store with the exchange (under carry): `start`'s state after reading `read`.

        Called under the service's model lock (the weights must not change while it reads)."""
        _, state = self.model.step(torch.tensor([read], device=self.model.device), start.state)
        return CarriedState(session, state.to_bytes(), read, start.tokens)
