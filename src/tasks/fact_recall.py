"""Fact recall: synthetic facts seen in training, asked later without the fact in the context.

`n_facts` facts are drawn once from `facts_seed`: a made-up name and a `num_digits`-digit number,
stated as "The code of <name> is <number>.\\n". An example is statements of distinct facts, in an
order drawn from its seed, filling `length + 1` tokens; only the numbers' tokens are scored. A
fact appears at most once per example, so its number is never in the context when it is asked:
the model answers from what it stored in training (its weights, a memory bank, a LoRA update),
which is what a memory bank added to a frozen model is for. Training and evaluation ask the same
facts (the held-out examples differ only in order and company), so the score measures recall of
the stored facts, not generalisation to unseen ones.

Without `tokenizer` the tokens are UTF-8 bytes (vocabulary 256); with it (a directory with a
`tokenizer.json`, as the text task), each statement's prefix, number and ending are encoded
separately, so the number's tokens are known.
"""

import torch

from src.schema import PositiveInt, Seed
from src.tasks.common import IGNORE, generator
from src.tasks.tokenizer import encode, load_tokenizer

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"


def fact_names(n_facts: int, g: torch.Generator) -> list[str]:
    """`n_facts` distinct made-up names of three consonant-vowel syllables, capitalised."""
    names: dict[str, None] = {}
    while len(names) < n_facts:
        letters = torch.randint(len(CONSONANTS) * len(VOWELS), (3,), generator=g).tolist()
        name = "".join(CONSONANTS[i // len(VOWELS)] + VOWELS[i % len(VOWELS)] for i in letters)
        names[name.capitalize()] = None
    return list(names)


class FactRecall:
    """Statements of `n_facts` fixed facts; the numbers' tokens are scored (see the module docstring)."""

    def __init__(
        self,
        length: PositiveInt,
        n_facts: PositiveInt,
        num_digits: PositiveInt = 4,
        facts_seed: Seed = 0,
        tokenizer: str | None = None,
    ):
        max_facts = len(CONSONANTS) ** 3 * len(VOWELS) ** 3
        if n_facts > max_facts:
            raise ValueError(f"n_facts={n_facts} exceeds the {max_facts} distinct names the generator makes")
        g = generator(facts_seed)
        numbers = torch.randint(10**num_digits, (n_facts,), generator=g).tolist()
        self.facts = [(name, f"{number:0{num_digits}d}") for name, number in zip(fact_names(n_facts, g), numbers)]
        self.length, self.tokenizer = length, tokenizer
        self.vocab_size = 256 if tokenizer is None else load_tokenizer(tokenizer).get_vocab_size()
        self._statements = [self._encode(name, number) for name, number in self.facts]
        if (total := sum(len(ids) for ids, _ in self._statements)) < length + 1:
            raise ValueError(f"length={length} needs more than the {total} tokens of the {n_facts} facts; add facts")

    def _tokens(self, text: str) -> list[int]:
        return list(text.encode("utf-8")) if self.tokenizer is None else encode(self.tokenizer, text.encode("utf-8"))

    def _encode(self, name: str, number: str) -> tuple[list[int], list[bool]]:
        """A statement's token ids and which of them are the number's."""
        pieces = [(f"The code of {name} is ", False), (number, True), (".\n", False)]
        ids, answer = [], []
        for text, scored in pieces:
            tokens = self._tokens(text)
            ids += tokens
            answer += [scored] * len(tokens)
        return ids, answer

    def sample(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (inputs, targets), each (batch_size, length) int64; targets are IGNORE except at numbers."""
        g = generator(seed)
        inputs = torch.empty(batch_size, self.length, dtype=torch.long)
        targets = torch.full((batch_size, self.length), IGNORE, dtype=torch.long)
        for row in range(batch_size):
            ids, answer = [], []
            for fact in torch.randperm(len(self._statements), generator=g).tolist():
                ids += self._statements[fact][0]
                answer += self._statements[fact][1]
                if len(ids) > self.length:
                    break
            ids, answer = torch.tensor(ids[: self.length + 1]), torch.tensor(answer[: self.length + 1])
            inputs[row] = ids[:-1]
            targets[row] = torch.where(answer[1:], ids[1:], IGNORE)
        return inputs, targets
