"""Plan-and-solve prompting (Wang et al. 2023, arXiv:2305.04091), each step answered with recalled memories.

Wang et al., Sec. 2.1: the trigger "Let's first understand the problem and devise a plan to solve
the problem. Then, let's carry out the plan and solve the problem step by step." makes the model
write a plan and then carry it out; Sec. 2.2 extracts the answer with "Therefore, the answer is".
Here the plan is a numbered list (`common.numbered_items`), and each of its steps is carried out in
its own completion whose prompt holds the memories that step recalls (the service's recall of the
step's text), the plan and the results so far.
"""

from src.reasoning.common import Limits, Reasoner, Reasoning, Step, generate_lines, numbered_items

TRIGGER = (
    "Let's first understand the problem and devise a plan to solve the problem. "
    "Then, let's carry out the plan and solve the problem step by step."
)
ANSWER = "Therefore, the answer is"


def plan_and_solve(model: Reasoner, prompt: str, limits: Limits) -> Reasoning:
    """A numbered plan for `prompt`, each step's result, then the answer."""
    planning = f"{prompt}{TRIGGER}\nPlan:\n"
    lines = generate_lines(model, f"{planning}1.", limits)  # the first line continues the "1." of the prompt
    plan = numbered_items([f"1. {lines[0]}", *lines[1:]] if lines else [])[: limits.max_steps]
    steps = [Step("plan", i + 1, item) for i, item in enumerate(plan)]
    listing = "".join(f"{i + 1}. {item}\n" for i, item in enumerate(plan))
    results = ""
    for i, item in enumerate(plan):
        memories = model.recall(item)
        known = "".join(f"{memory}\n" for memory in memories)
        asked = f"{known}{planning}{listing}{results}Step {i + 1}: {item}\nResult:"
        result = model.complete(asked, limits.max_new_tokens)
        steps.append(Step("result", i + 1, result.strip(), memories))
        results += f"Step {i + 1}: {item}\nResult: {result.strip()}\n"
    answer = model.complete(f"{planning}{listing}{results}{ANSWER}", limits.max_new_tokens).strip()
    return Reasoning(steps, answer)
