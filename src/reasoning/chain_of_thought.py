"""Chain of thought (Wei et al. 2022, arXiv:2201.11903), zero-shot as Kojima et al. 2022 (arXiv:2205.11916) prompt it.

Kojima et al., Sec. 3, two stages: reasoning extraction, the question followed by the trigger
"Let's think step by step." and the model's reasoning; then answer extraction, the same text with
the reasoning and "Therefore, the answer is" appended, whose completion is the answer. Each line
of the reasoning is one step (Wei et al., Sec. 2: intermediate natural-language steps before the
answer).
"""

from src.reasoning.common import Limits, Reasoner, Reasoning, Step, generate_lines

TRIGGER = "Let's think step by step."
ANSWER = "Therefore, the answer is"


def chain_of_thought(model: Reasoner, prompt: str, limits: Limits) -> Reasoning:
    """`prompt` (the question as the model reads a message) reasoned step by step, then answered."""
    reasoning = f"{prompt}{TRIGGER}\n"
    lines = generate_lines(model, reasoning, limits, last=lambda line: line.startswith(ANSWER))
    steps = [Step("reasoning", i + 1, line) for i, line in enumerate(lines)]
    thought = "".join(f"{line}\n" for line in lines if not line.startswith(ANSWER))
    answer = model.complete(f"{reasoning}{thought}{ANSWER}", limits.max_new_tokens).strip()
    return Reasoning(steps, answer)
