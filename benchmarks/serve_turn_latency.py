"""Latency of a chat turn against the conversation's length: a session carried by the model's state vs replayed.

    uv run --extra serve python benchmarks/serve_turn_latency.py   # writes results/serve_turn_latency_cpu.md

The chat service (`src.serve.chat.ChatService`, in process: the HTTP layer adds a constant) answers
turn n of one session, for byte-level models of width 64 with two blocks and random weights (the
numbers measure the work a turn costs, not a model's quality): Mamba and Titans MAG, whose states
do not grow, under `chat.session_state: carry` and `replay`, and attention (replay only: its KV
cache grows). Each reply is MAX_NEW_TOKENS tokens (the stop byte is one the model never writes),
each message MESSAGE_BYTES bytes; the context and the short-term buffer are large enough that
`replay` re-reads the whole conversation at every turn, as a context without a limit would.

A turn is measured by the CPU time of the process (`time.process_time`, one torch thread) beside its
wall time: the machine this ran on was shared (a load of about 8 on 2 cores), which inflates wall
times by a varying factor while the CPU time of the work stays put. Carried sessions run every turn
from 1 to TURNS and report the median of the REPEATS turns ending at each listed turn. A replayed turn
n costs the same whatever produced the n - 1 exchanges before it, so a replayed session is filled with
n - 1 exchanges (their replies random words) and then answers REPEATS turns; the median is reported.
`read` is the prompt's tokens at that turn. Each service answers one turn of another session first
(the first call's one-time costs).
"""

import platform
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from serve_load import write_checkpoint

from src.serve.chat import GenerationRequest
from src.serve.server import build_service

ROOT = Path(__file__).resolve().parents[1]
TURNS, POINTS, REPEATS = 200, (1, 10, 25, 50, 100, 150, 200), 3
MAX_NEW_TOKENS, MESSAGE_BYTES = 8, 40
MIXERS = {
    "Mamba": {"type": "selective_ssm", "d_state": 16, "expand": 2},
    "Titans MAG": {"type": "titans_mag", "n_heads": 4, "window": 64, "n_persistent": 4, "memory": {"chunk_size": 16}},
    "attention": {"type": "attention", "n_heads": 4},
}
RUNS = [
    ("Mamba", "carry"),
    ("Mamba", "replay"),
    ("Titans MAG", "carry"),
    ("Titans MAG", "replay"),
    ("attention", "replay"),
]


def message(seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_lowercase + "   ") for _ in range(MESSAGE_BYTES - 1)) + "?"


def model_section(mixer: dict) -> dict:
    block = {"mixer": mixer, "mlp": {"type": "swiglu", "d_hidden": 128}, "repeat": 2}
    return {"vocab_size": 256, "d_model": 64, "tie_embeddings": True, "blocks": [block]}


def service(directory: Path, mixer: dict, mode: str):
    config = {
        "checkpoint": str(write_checkpoint(directory, model_section(mixer))),
        "database": str(directory / "memory.sqlite"),
        "memory": {"short_term_tokens": 1_000_000, "max_text_bytes": 4096},
        "chat": {"session_state": mode, "max_new_tokens": MAX_NEW_TOKENS, "context_bytes": 1_000_000, "stop": "\x7f"},
        "learning": {"targets": ["in_proj", "W_q", "W_v"], "adapter_path": str(directory / "adapter.pt")},
    }
    path = directory / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return build_service(str(path))


def turn(chat, session: str, n: int) -> tuple[float, float, int]:
    """CPU seconds and wall seconds of turn n of `session`, and the tokens its prompt read."""
    start = chat.sessions.start(session)
    read = len(chat.prompt(session, message(n), replay=start.state is None)[0])
    cpu, wall = time.process_time(), time.perf_counter()
    chat.reply(session, message(n), GenerationRequest())
    return time.process_time() - cpu, time.perf_counter() - wall, read


def summary(turns: list[tuple[float, float, int]], at: int) -> tuple[float, float, int]:
    """Median CPU and wall seconds of some turns, and the tokens turn `at` of them read."""
    return statistics.median(t[0] for t in turns), statistics.median(t[1] for t in turns), turns[at][2]


def carried(chat) -> dict[int, tuple[float, float, int]]:
    latencies = [turn(chat, "bench", n) for n in range(1, TURNS + 1)]
    return {point: summary(latencies[max(0, point - REPEATS) : point], -1) for point in POINTS}


def replayed(chat) -> dict[int, tuple[float, float, int]]:
    results = {}
    for point in POINTS:
        session = f"bench-{point}"
        for n in range(1, point):
            chat.memory.record_exchange(session, message(n), message(-n)[: MAX_NEW_TOKENS * 2])
        results[point] = summary([turn(chat, session, point + i) for i in range(REPEATS)], 0)
    return results


def cell(cpu: float, wall: float, read: int) -> str:
    return f"{cpu * 1000:.0f} / {wall * 1000:.0f} ({read})"


def main() -> None:
    torch.set_num_threads(1)
    columns = {}
    for name, mode in RUNS:
        with tempfile.TemporaryDirectory() as directory:
            chat = service(Path(directory), MIXERS[name], mode)
            turn(chat, "warm-up", 0)
            began = time.perf_counter()
            columns[name, mode] = carried(chat) if mode == "carry" else replayed(chat)
            chat.close()
        print(f"{name} {mode}: {time.perf_counter() - began:.0f} s", flush=True)
    header = "| turn | " + " | ".join(f"{name} {mode}" for name, mode in RUNS) + " |"
    lines = [header, "|---" * (len(RUNS) + 1) + "|"]
    for point in POINTS:
        cells = [cell(*columns[run][point]) for run in RUNS]
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    text = (
        "# Chat turn latency against conversation length, carried state vs replay (CPU)\n\n"
        "`uv run --extra serve python benchmarks/serve_turn_latency.py` on "
        f"{platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, 1 thread, Python {sys.version.split()[0]}. Byte-level models, width 64, two "
        f"blocks, random weights; {MESSAGE_BYTES}-byte messages, {MAX_NEW_TOKENS}-token replies. Per turn (median of "
        f"{REPEATS} turns): CPU ms / wall ms of the process (a shared machine: the CPU time is the work, the wall "
        f"time also holds the waits), and in parentheses the prompt tokens turn n read.\n\n{table}\n"
    )
    (ROOT / "benchmarks" / "results" / "serve_turn_latency_cpu.md").write_text(text)


if __name__ == "__main__":
    main()
