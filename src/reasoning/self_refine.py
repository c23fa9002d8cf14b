"""Self-Refine (Madaan et al. 2023, arXiv:2303.17651): draft, feedback, revision, repeated.

Madaan et al., Sec. 2 and Algorithm 1: the model writes an output y_0; then, for t = 0, 1, ...,
it gives feedback fb_t on its latest output and refines it into y_{t+1} given the question, its
earlier outputs and feedback, until the feedback says to stop or the iterations run out. Here the
feedback stops the loop when it says the answer is correct (`STOP_WORDS`), and `limits.max_steps`
bounds the iterations.
"""

from src.reasoning.common import Limits, Reasoner, Reasoning, Step

STOP_WORDS = ("correct", "no change", "nothing to improve")


def self_refine(model: Reasoner, prompt: str, limits: Limits) -> Reasoning:
    """A draft answer to `prompt`, then up to `max_steps` rounds of feedback and revision."""
    draft = model.complete(prompt, limits.max_new_tokens).strip()
    steps = [Step("draft", 0, draft)]
    history = f"{prompt}{draft}\n"
    for t in range(1, limits.max_steps + 1):
        feedback = model.complete(f"{history}Feedback on the answer:", limits.max_new_tokens).strip()
        steps.append(Step("feedback", t, feedback))
        history += f"Feedback on the answer: {feedback}\n"
        if any(word in feedback.lower() for word in STOP_WORDS):
            break
        draft = model.complete(f"{history}Improved answer:", limits.max_new_tokens).strip()
        steps.append(Step("revision", t, draft))
        history += f"Improved answer: {draft}\n"
    return Reasoning(steps, draft)
