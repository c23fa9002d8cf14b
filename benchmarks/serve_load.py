"""Requests/s and p50/p99 latency of /memory/store and /memory/recall with 10K and 100K memories.

    uv run --extra serve --extra ann python benchmarks/serve_load.py   # writes results/serve_load_cpu.md

For each size, a fresh database is filled offline (half the memories long-term, half episodic,
all in the session that is then loaded; random unit vectors as their embeddings), then
`memory-models serve` is started as a subprocess on 127.0.0.1 and CLIENTS concurrent httpx
clients each send STORES stores and then RECALLS recalls to that session (a recall searches both
levels: exact cosine top-k over the long-term store, the retrieval score over every episodic
memory). Latency is per request, seen by the client; requests/s is requests over the wall time of
the phase. The model is a randomly initialised byte-level transformer (2 blocks, width 64): the
numbers measure the service (embedding forward pass, SQLite commit with fsync, search), not a
model's quality. Every loop is bounded; traffic goes to 127.0.0.1 only.
"""

import random
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml

from src.config import resolve_model_section
from src.memory_system.database import MemoryDatabase, NewRow
from src.model import PaperModel

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10_000, 100_000)
CLIENTS, STORES, RECALLS = 8, 100, 100
SESSION = "bench"
MODEL = {
    "vocab_size": 256, "d_model": 64, "tie_embeddings": True,
    "blocks": [{"mixer": {"type": "attention", "n_heads": 4}, "mlp": {"type": "swiglu", "d_hidden": 128}, "repeat": 2}],
}  # fmt: skip


def text(seed: int) -> str:
    """A 48-character memory of random words (equal lengths share one embedding batch)."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_lowercase + "    ") for _ in range(47)) + "."


def write_checkpoint(directory: Path, section: dict = MODEL) -> Path:
    """A `memory-models train`-shaped checkpoint of the randomly initialised model of `section`."""
    torch.manual_seed(0)
    model = PaperModel(resolve_model_section(section, "<benchmark>"))
    config = {"model": section, "task": {"type": "text"}, "train": {}, "eval": {}}
    state = {"model": model.state_dict(), "optimizer": {}, "step": 0, "tokens": 0, "metrics": {}}
    path = directory / "checkpoint.pt"
    torch.save({**state, "config": yaml.safe_dump(config)}, path)
    return path


def prefill(database: Path, size: int) -> float:
    """Write `size` memories (random unit vectors as their embeddings: search cost depends on how
    many there are, not on their values); return the seconds it took."""
    rng = np.random.default_rng(0)
    memory = MemoryDatabase(database, MODEL["d_model"])
    started, now = time.perf_counter(), time.time()
    for level, offset in (("long_term", 0), ("episodic", size // 2)):
        for start in range(0, size // 2, 10_000):
            count = min(10_000, size // 2 - start)
            vectors = rng.normal(size=(count, MODEL["d_model"])).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            texts = (text(offset + start + i) for i in range(count))
            memory.insert([NewRow(SESSION, level, "note", t, 5.0, now, v) for t, v in zip(texts, vectors)])
    memory.close()
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(config: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-c", "import sys; from src.cli import main; sys.exit(main(sys.argv[1:]))"]
    server = subprocess.Popen([*command, "serve", str(config), "--port", str(port)], cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not start")


def phase(url: str, make_request, count: int) -> tuple[float, list[float]]:
    """CLIENTS clients sending `count` requests each; (requests/s, latencies in ms)."""

    def client(index: int) -> list[float]:
        latencies = []
        with httpx.Client(base_url=url, timeout=120) as http:
            for n in range(count):
                path, body = make_request(index, n)
                started = time.perf_counter()
                response = http.post(path, json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        latencies = [latency for run in pool.map(client, range(CLIENTS)) for latency in run]
    return len(latencies) / (time.perf_counter() - started), latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def measure(size: int, index: str, directory: Path, checkpoint: Path) -> list[str]:
    database = directory / f"memory_{size}_{index}.sqlite"
    fill_seconds = prefill(database, size)
    config = {"checkpoint": str(checkpoint), "database": str(database), "memory": {"index": index}}
    path = directory / f"serve_{size}_{index}.yaml"
    path.write_text(yaml.safe_dump(config))
    started, port = time.perf_counter(), free_port()
    server = start_server(path, port)
    start_seconds = time.perf_counter() - started
    url = f"http://127.0.0.1:{port}"
    try:
        stores = phase(
            url, lambda i, n: ("/memory/store", {"session": SESSION, "text": text(10**9 + i * STORES + n)}), STORES
        )
        recall = {"session": SESSION, "long_term_k": 10, "episodic_k": 10}
        recalls = phase(
            url, lambda i, n: ("/memory/recall", {**recall, "query": text(2 * 10**9 + i * RECALLS + n)}), RECALLS
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    rows = []
    for name, (rate, latencies) in (("store", stores), ("recall", recalls)):
        row = (
            f"| {size:,} | {index} | {name} | {rate:,.0f} | {percentile(latencies, 50):.1f} | "
            f"{percentile(latencies, 99):.1f} | {fill_seconds:.0f} | {start_seconds:.0f} |"
        )
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    header = [
        "| memories | long-term index | request | requests/s | p50 (ms) | p99 (ms) | prefill (s) | server start (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        checkpoint = write_checkpoint(directory)
        for size in SIZES:
            rows += measure(size, "exact", directory, checkpoint)
        rows += measure(SIZES[-1], "usearch", directory, checkpoint)
    threads = torch.get_num_threads()
    title = f"# Chat service load: store and recall latency (CPU, {threads} threads, torch {torch.__version__})"
    notes = (
        f"`benchmarks/serve_load.py`: {CLIENTS} concurrent clients, each {STORES} stores then {RECALLS} recalls "
        "(top-10 long-term + top-10 episodic) in one session holding the memories (half long-term, half "
        "episodic, prefilled with random unit vectors as embeddings); "
        "48-byte texts; randomly initialised byte-level transformer (2 blocks, width 64). Stores "
        "commit one SQLite transaction each in WAL mode with synchronous=FULL (an fsync per acknowledged "
        "write). The service's locks serialise the embedding forward passes and the database writes.\n\n"
        "Measured on 2 CPU cores shared with other jobs (absolute times are inflated)."
    )
    result = "\n".join([title, "", notes, "", *header, *rows, ""])
    out = ROOT / "benchmarks" / "results" / "serve_load_cpu.md"
    out.write_text(result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
