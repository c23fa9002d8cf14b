"""Titans' neural memory alone on MQAR: this project's against titans-pytorch's, in one run (issue 31, item 3b).

    python -m venv /tmp/peer && /tmp/peer/bin/pip install titans-pytorch pyyaml   # the peer, outside the project
    PYTHONPATH=. /tmp/peer/bin/python benchmarks/neural_memory_peer.py   # -> results/neural_memory_peer_cpu.md

The same model around each memory: token embeddings (tied head), two blocks of [RMSNorm, memory, residual,
RMSNorm, SwiGLU, residual], a final RMSNorm; built as this project's `PaperModel` with the `neural_memory`
mixer, then, for the peer, each block's mixer replaced by titans-pytorch's `NeuralMemory` (its defaults: an
MLP memory of depth 2, chunks of 1 token, momentum, its own projections and norms). Both train on the same
batches of MQAR as Zoology builds it (`src/tasks/associative_recall.py`) with the same AdamW, warm-up and
cosine schedule; the held-out accuracy is split by query position. No attention anywhere: a query finds
its value only through the memory. Chance is 1 / num_pairs.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

from benchmarks.peer_training import held_out_accuracy, train_on_task
from src.config import TrainConfig, resolve_model_section
from src.runs import build_model
from src.tasks.associative_recall import AssociativeRecall
from src.training import learning_rate

RESULTS = Path(__file__).parent / "results"


class PeerMemory(nn.Module):
    """titans-pytorch's NeuralMemory where a block's mixer goes: (batch, L, d) -> (batch, L, d)."""

    def __init__(self, d_model: int, chunk_size: int):
        super().__init__()
        try:
            from titans_pytorch import NeuralMemory
        except ImportError as error:
            raise SystemExit(
                "the peer needs titans-pytorch (pip install titans-pytorch), see this script's docstring"
            ) from error
        self.memory = NeuralMemory(dim=d_model, chunk_size=chunk_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        retrieved, _ = self.memory(x)
        return retrieved


def model_section(memory: dict) -> dict:
    return resolve_model_section(
        {
            "vocab_size": 64,
            "d_model": 64,
            "tie_embeddings": True,
            "norm_eps": 1e-5,
            "blocks": [
                {
                    "mixer": {"type": "neural_memory", "n_persistent": 0, "memory": memory},
                    "mlp": {"type": "swiglu", "d_hidden": 128},
                }
            ]
            * 2,
        },
        "<benchmark>",
    )


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "titans-pytorch":
        model = build_model(model_section({"kind": "linear", "chunk_size": 1}), "<benchmark>", "cpu")
        for block in model.blocks:
            block.mixer = PeerMemory(64, chunk_size=1)
        return model
    return build_model(model_section(MODELS[name]), "<benchmark>", "cpu")


MODELS = {
    "ours, MLP memory (depth 2), chunks of 1": {"kind": "mlp", "depth": 2, "chunk_size": 1},
    "ours, MLP memory, chunks of 1, Sec. 4.4 convolution": {
        "kind": "mlp",
        "depth": 2,
        "chunk_size": 1,
        "conv_kernel": 4,
    },
    "ours, linear memory, chunks of 1, Sec. 4.4 convolution": {"kind": "linear", "chunk_size": 1, "conv_kernel": 4},
    "titans-pytorch": None,
}


def train_and_evaluate(name: str, task: AssociativeRecall, args) -> dict:
    model = build(name, args.seed).to(args.device)
    schedule = TrainConfig(args.steps, args.batch, args.lr, args.steps // 20, 0.0, 1.0, args.seed, "-", args.steps)
    seconds = train_on_task(
        model, task, args.steps, args.batch, lambda step: learning_rate(step, schedule), args.seed, args.device
    )
    accuracy, inputs, predictions, targets = held_out_accuracy(model, task, 1000, 1000, args.device)
    splits = task.accuracy_splits(inputs, predictions, targets)
    parameters = sum(p.numel() for p in model.parameters())
    return {"model": name, "parameters": parameters, "accuracy": accuracy, "splits": splits, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--num-pairs", type=int, default=4)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (then name the output file *_cuda.md)")
    parser.add_argument("--out", type=Path, default=RESULTS / "neural_memory_peer_cpu.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = AssociativeRecall(vocab_size=64, num_pairs=args.num_pairs, num_queries=args.num_pairs, length=args.length)
    rows = []
    for name in MODELS:
        rows.append(train_and_evaluate(name, task, args))
        print(rows[-1]["model"], f"{rows[-1]['accuracy']:.4f}", flush=True)
    positions = [f"q{j + 1}" for j in range(args.num_pairs)]
    lines = [
        "# Titans' neural memory alone on MQAR: ours against titans-pytorch",
        "",
        f"`benchmarks/neural_memory_peer.py` (its docstring: the models and the loop). MQAR with {args.num_pairs} "
        f"pairs in {args.length} tokens (chance {1 / args.num_pairs:.3f}), {args.steps:,} steps of {args.batch}, "
        f"AdamW lr {args.lr:g}, seed {args.seed}, on {args.device} ({args.threads} CPU threads); 1,000 held-out "
        "examples; "
        f"titans-pytorch {_peer_version()}.",
        "",
        "| model | parameters | accuracy | " + " | ".join(positions) + " | train seconds |",
        "|---|---|---|" + "---|" * len(positions) + "---|",
    ]
    for row in rows:
        by_position = " | ".join(f"{a:.3f}" for a in row["splits"]["accuracy_by_position"])
        lines.append(
            f"| {row['model']} | {row['parameters']:,} | {row['accuracy']:.4f} | {by_position} | {row['seconds']:.0f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _peer_version() -> str:
    from importlib.metadata import version

    return version("titans-pytorch")


if __name__ == "__main__":
    main()
