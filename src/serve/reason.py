"""`POST /reason`: the reasoning programs of `src.reasoning` over the chat service's model and a session's memories.

The question is laid out as a chat message (`src.serve.turns`) after the memories it recalls; the
program completes it greedily through `ChatService.complete` (the model's lock per token, its stop
token ending each completion) and recalls memories of the session for its own steps. Nothing is
written: the steps and the answer are returned.
"""

from dataclasses import asdict

from src.memory_system.manager import MemoryInputError
from src.reasoning import PROGRAMS
from src.reasoning.common import Limits
from src.serve.chat import ChatService


class SessionReasoner:
    """`src.reasoning.common.Reasoner` over a service's model and one session's memories."""

    def __init__(self, service: ChatService, session: str):
        self.service, self.session = service, session

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        return self.service.complete(prompt, max_new_tokens)

    def recall(self, query: str) -> list[str]:
        memory = self.service.memory
        if self.session not in memory.sessions:
            return []
        try:
            recalled = memory.recall(self.session, query)
        except MemoryInputError:  # the model's own text as a query: empty, too long or with control characters
            return []
        return [item.text for item in recalled if item.level != "short_term"]


def reason(
    service: ChatService, session: str, text: str, mode: str, max_steps: int | None, max_new_tokens: int | None
) -> dict:
    """Run program `mode` on the message `text` of `session`; every argument is checked first (MemoryInputError)."""
    chat = service.config.chat
    service.memory.check_session(session)
    service.memory.check_text(text)
    if mode not in PROGRAMS:
        raise MemoryInputError(f"mode must be one of {sorted(PROGRAMS)}, got {mode!r}")
    max_steps = chat.max_reasoning_steps if max_steps is None else max_steps
    if not 1 <= max_steps <= chat.max_reasoning_steps:
        raise MemoryInputError(f"max_steps must lie in [1, {chat.max_reasoning_steps}], got {max_steps}")
    max_new_tokens = chat.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not 1 <= max_new_tokens <= chat.max_new_tokens:
        raise MemoryInputError(f"max_new_tokens must lie in [1, {chat.max_new_tokens}], got {max_new_tokens}")
    reasoner = SessionReasoner(service, session)
    recalled = service.memory.recall(session, text) if session in service.memory.sessions else []
    prompt = service.format.prompt([item.text for item in recalled if item.level != "short_term"], [], text)
    result = PROGRAMS[mode](reasoner, prompt, Limits(max_steps, max_new_tokens))
    steps = [asdict(step) for step in result.steps]
    return {"session": session, "mode": mode, "steps": steps, "answer": result.answer, "memories": recalled}
