"""What a request body must be before the JSON parser reads it: UTF-8, and nested at most `MAX_DEPTH`
levels (the parser recurses once per level; the API's bodies are flat objects). `Guard` answers 422
with `body_problem`'s reason otherwise."""

import re

MAX_DEPTH = 32
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a JSON string, escapes included
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str, limit: int) -> int:
    """The deepest nesting of arrays and objects in JSON `text` (brackets inside strings not counted),
    counted up to `limit + 1`."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > limit:
            break
    return deepest


def body_problem(body: bytes) -> str | None:
    """Why the body cannot be parsed as the API's JSON (not UTF-8, nested too deep), None when it can."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return (
            f"request body is not valid UTF-8: byte {error.start} is {body[error.start]:#04x} ({error.reason}); "
            "send JSON encoded as UTF-8"
        )
    if nesting_depth(text, MAX_DEPTH) > MAX_DEPTH:
        return f"request body nests arrays or objects more than {MAX_DEPTH} levels deep; the API's bodies are flat"
    return None
