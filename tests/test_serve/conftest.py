"""A real server for the HTTP tests: a byte-level model trained here for a few seconds by
`src.training.train`, and `memory-models serve` started as a subprocess on a free port of 127.0.0.1."""

import os
import random
import resource
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from src.config import load_experiment
from src.training import train
from tests.conftest import ROOT

TINY_TEXT_MODEL = {
    "model": {
        "vocab_size": 256,
        "d_model": 32,
        "tie_embeddings": True,
        "blocks": [{"mixer": {"type": "attention", "n_heads": 2}, "mlp": {"type": "swiglu", "d_hidden": 64}}],
    },
    "task": {"type": "text", "path": str(ROOT / "data" / "tinyshakespeare.txt"), "length": 32},
    "train": {
        "steps": 40, "batch_size": 16, "lr": 3.0e-3, "warmup_steps": 5, "weight_decay": 0.0, "grad_clip": 1.0,
        "seed": 0, "out_dir": "", "eval_every": 40,
    },
    "eval": {"num_examples": 16, "batch_size": 16, "seed": 1},
}  # fmt: skip
STARTUP_SECONDS = 90


@pytest.fixture(scope="package", autouse=True)
def one_thread_per_process():
    """One intra-op thread in the test process and in every server it starts (`Server`): on 2 cores the OpenMP
    pools of a server and of its client spin against each other (a 32-wide linear layer took 14 ms instead
    of 0.1 ms); elsewhere the suite keeps torch's default, which the long-sequence tests use."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_text_model(run: Path, blocks: list[dict] | None = None, steps: int = 40) -> Path:
    """The checkpoint of TINY_TEXT_MODEL (or its d_model with these `blocks`) trained `steps` steps into `run`."""
    model = TINY_TEXT_MODEL["model"] if blocks is None else {**TINY_TEXT_MODEL["model"], "blocks": blocks}
    schedule = {"steps": steps, "warmup_steps": min(5, steps - 1), "eval_every": steps}
    config = {**TINY_TEXT_MODEL, "model": model, "train": {**TINY_TEXT_MODEL["train"], "out_dir": str(run), **schedule}}
    path = run / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    train(load_experiment(path), log=lambda line: None)
    return run / "checkpoint.pt"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A `memory-models train` checkpoint of a tiny byte-level transformer (40 steps on tinyshakespeare)."""
    return train_text_model(tmp_path_factory.mktemp("chat_model"))


MAMBA_BLOCKS = [{"mixer": {"type": "selective_ssm", "d_state": 8, "expand": 2}, "mlp": "none", "repeat": 2}]


@pytest.fixture(scope="session")
def mamba_checkpoint(tmp_path_factory) -> Path:
    """The same byte-level model with two Mamba blocks instead of attention: a state that does not grow."""
    return train_text_model(tmp_path_factory.mktemp("chat_mamba"), MAMBA_BLOCKS)


def write_config(directory: Path, checkpoint: Path, **sections) -> Path:
    """A serve config in `directory` (database and adapter there too); `sections` override keys."""
    config = {
        "checkpoint": str(checkpoint),
        "database": str(directory / "memory.sqlite"),
        "auth_token_env": "MEMORY_MODELS_TEST_TOKEN",
        "max_request_bytes": 65536,
        "memory": {"max_text_bytes": 2048, "chunk_bytes": 256},
        "chat": {"max_new_tokens": 24},
        "learning": {"adapter_path": str(directory / "adapter.pt"), "steps": 4},
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    path = directory / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def words(seed: int) -> str:
    """Six random lower-case words: texts that differ in their bytes, not only in their order (a
    barely trained model's mean-pooled embedding is close to a bag of bytes)."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(6))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_command(config: Path, port: int) -> list[str]:
    command = [sys.executable, "-c", "import sys; from src.cli import main; sys.exit(main(sys.argv[1:]))"]
    return [*command, "serve", str(config), "--host", "127.0.0.1", "--port", str(port)]


class Server:
    """`memory-models serve CONFIG --host 127.0.0.1 --port P` as a subprocess; `client` talks to it.

    `file_size_limit` (bytes) is the process's RLIMIT_FSIZE: a write past it fails as on a full disk
    (Python ignores SIGXFSZ, so the write returns EFBIG)."""

    def __init__(self, config: Path, token: str | None = None, file_size_limit: int | None = None):
        self.config, self.token, self.process = config, token, None
        self.file_size_limit = file_size_limit
        self.log = config.with_name("server.log")

    def _limits(self) -> None:
        if self.file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size_limit, self.file_size_limit))

    def start(self) -> "Server":
        self.port = free_port()
        env = {key: value for key, value in os.environ.items() if key != "MEMORY_MODELS_TEST_TOKEN"}
        env["OMP_NUM_THREADS"] = "1"  # see one_thread_per_process
        if self.token is not None:
            env["MEMORY_MODELS_TEST_TOKEN"] = self.token
        command = serve_command(self.config, self.port)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._limits
            )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {STARTUP_SECONDS} s: {self.log.read_text()}")

    def client(self, token: str | None = None, timeout: float = 60) -> httpx.Client:
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


TOKEN = "test-token-0123456789"


@pytest.fixture(scope="session")
def server(checkpoint, tmp_path_factory):
    """One server for the HTTP tests (starting one costs seconds), guarded by TOKEN; tests use their own sessions."""
    running = Server(write_config(tmp_path_factory.mktemp("serve"), checkpoint), token=TOKEN).start()
    yield running
    running.stop()
