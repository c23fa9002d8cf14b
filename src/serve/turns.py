"""How a chat's turns become the model's prompt: a play script, or the tokenizer's own chat template.

A byte-level model (and any model whose tokenizer has no chat template) reads the layout of a play
script, the speaker on its own line (the tinyshakespeare corpus writes it so):

    <recalled memories, one per line>
    <USER>:\n<turn>\n\n<MODEL>:\n<turn>\n\n ...
    <USER>:\n<message>\n\n<MODEL>:\n

A model whose directory ships a chat template (`tokenizer_config.json`'s `chat_template`, or
`chat_template.jinja`, as instruction-tuned models do) reads its turns as that template renders the
messages (transformers' `apply_chat_template`, with the generation prompt): the recalled memories as
a system message, then the user and assistant turns. Its end-of-turn token is then `chat.stop`
(e.g. `<|im_end|>`, `<|eot_id|>`).
"""

import json
from abc import ABC, abstractmethod
from pathlib import Path

from src.adapted.base import transformers_library
from src.language_model import LanguageModel
from src.serve.config import ChatConfig
from src.tasks.tokenizer import DirectoryTokenizer

SEPARATOR = "\n\n"  # after a turn of the script layout


class TurnFormat(ABC):
    """The prompt text of a message after the recalled memories and the earlier turns (role, text)."""

    @abstractmethod
    def prompt(self, remembered: list[str], turns: list[tuple[str, str]], text: str) -> str:
        """`turns` are ("user" | "assistant", text), oldest first; the prompt ends where the reply begins."""


class ScriptFormat(TurnFormat):
    """The play-script layout of the module docstring, with the config's speaker names."""

    def __init__(self, chat: ChatConfig):
        self.names = {"user": chat.user_name, "assistant": chat.model_name}

    def prompt(self, remembered: list[str], turns: list[tuple[str, str]], text: str) -> str:
        layout = "".join(f"{line}\n" for line in remembered)
        layout += "".join(f"{self.names[role]}:\n{turn}{SEPARATOR}" for role, turn in turns)
        return layout + f"{self.names['user']}:\n{text}{SEPARATOR}{self.names['assistant']}:\n"


class TemplateFormat(TurnFormat):
    """The chat template of a Hugging Face tokenizer directory, rendered by transformers."""

    def __init__(self, directory: str):
        self.tokenizer = transformers_library().AutoTokenizer.from_pretrained(directory, local_files_only=True)

    def prompt(self, remembered: list[str], turns: list[tuple[str, str]], text: str) -> str:
        messages = [{"role": "system", "content": "\n".join(remembered)}] if remembered else []
        messages += [{"role": role, "content": turn} for role, turn in turns]
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def has_chat_template(directory: str) -> bool:
    """Whether a tokenizer directory carries a chat template (`chat_template.jinja` or in tokenizer_config.json)."""
    config = Path(directory) / "tokenizer_config.json"
    in_config = config.is_file() and json.loads(config.read_text()).get("chat_template") is not None
    return in_config or (Path(directory) / "chat_template.jinja").is_file()


def turn_format(model: LanguageModel, chat: ChatConfig) -> TurnFormat:
    """The chat template of the model's tokenizer directory when it has one, else the script layout."""
    tokenizer = model.tokenizer
    if isinstance(tokenizer, DirectoryTokenizer) and has_chat_template(tokenizer.directory):
        return TemplateFormat(tokenizer.directory)
    return ScriptFormat(chat)
