"""Reasoning programs over a language model: chain of thought, plan-and-solve, self-refine.

Each program is one module citing its paper. It talks to the model only through `common.Reasoner`:
`complete(prompt, max_new_tokens)` continues a text up to the model's end-of-turn token (greedy, so a
program is deterministic) and `recall(query)` returns the texts of the memories the query recalls.
A program returns its steps beside its answer (`common.Reasoning`), and stays within its limits:
at most `max_steps` steps of each kind, at most `max_new_tokens` tokens per completion. The chat
service runs them at `POST /reason` (`src.serve.reason`).
"""

from src.reasoning.chain_of_thought import chain_of_thought
from src.reasoning.plan_and_solve import plan_and_solve
from src.reasoning.self_refine import self_refine

PROGRAMS = {"cot": chain_of_thought, "plan": plan_and_solve, "reflect": self_refine}
