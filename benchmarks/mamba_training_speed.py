"""Mamba training speed beside mambapy (the fastest pure-PyTorch peer), measured in one run on a GPU.

    PYTHONPATH=.:<mambapy> python3 benchmarks/mamba_training_speed.py   # writes results/mamba_training_speed_cuda.md

1. A 2-layer, d_model 64 Mamba LM trained on induction heads (vocabulary 16, length 256) for 1,600
   AdamW steps of batch 64 from the same seeded batches: wall-clock seconds and final loss, ours
   (`src.training.training_step`, the config's scan) and mambapy's `LM` with its parallel scan.
2. MambaGPT-130m (configs/mamba_130m.yaml: block checkpointing, chunked loss) at 4 x 2048 tokens:
   tokens/s and peak memory in float32 and with `train.precision: bfloat16`; mambapy's 130m config
   (no checkpointing: it has none) at 1, 2 and 4 x 2048, out of memory recorded as such.
"""

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from mambapy.mamba import Mamba, MambaConfig, RMSNorm
from torch import nn

from src.config import load_experiment, resolve_model_section
from src.model import PaperModel
from src.tasks.induction_heads import InductionHeads
from src.training import TrainingObjective, training_step

STEPS, BATCH, VOCAB, LENGTH = 1600, 64, 16, 256


class LM(nn.Module):
    """mambapy's Mamba stack as a language model: embedding, the layers, RMSNorm, tied head (as ours).

    (mambapy's own `lm.LM` imports its Mamba-2, which needs mamba_ssm.)
    """

    def __init__(self, config: MambaConfig, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.mamba = Mamba(config)
        self.norm = RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, vocab_size, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.mamba(self.embedding(tokens))))


def small_ours(batches, train) -> tuple[float, float]:
    section = {
        "vocab_size": VOCAB, "d_model": 64, "tie_embeddings": True,
        "blocks": [{"mixer": {"type": "selective_ssm"}, "mlp": "none", "repeat": 2}],
    }  # fmt: skip
    torch.manual_seed(0)
    model = PaperModel(resolve_model_section(section, "<benchmark>")).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr)
    objective = TrainingObjective(model, train)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for inputs, targets in batches:
        loss, *_ = training_step(objective, optimizer, inputs, targets, train)
    torch.cuda.synchronize()
    return time.perf_counter() - start, loss.item()


def small_mambapy(batches, lr: float) -> tuple[float, float]:
    torch.manual_seed(0)
    model = LM(MambaConfig(d_model=64, n_layers=2, d_state=16, expand_factor=2, d_conv=4), VOCAB).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for inputs, targets in batches:
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start, loss.item()


def throughput(step, tokens: int, steps: int = 3) -> tuple[float, float]:
    """tokens/s and peak GiB of `steps` calls of step() after two warm-up calls."""
    step(), step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * tokens / (time.perf_counter() - start), torch.cuda.max_memory_allocated() / 2**30


def large_ours(precision: str) -> tuple[float, float]:
    experiment = load_experiment("configs/mamba_130m.yaml")
    train = dataclasses.replace(experiment.train, precision=precision)
    torch.manual_seed(0)
    model = PaperModel(experiment.model).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(experiment.model["vocab_size"], (4, 2049), device="cuda")
    objective = TrainingObjective(model, train)
    return throughput(lambda: training_step(objective, optimizer, ids[:, :-1], ids[:, 1:], train), 4 * 2048)


def large_mambapy(batch: int) -> str:
    config = MambaConfig(d_model=768, n_layers=24, d_state=16, expand_factor=2, d_conv=4)
    try:
        torch.manual_seed(0)
        model = LM(config, 50280).cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(50280, (batch, 2049), device="cuda")

        def step():
            loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        tokens_per_s, peak = throughput(step, batch * 2048)
        return f"{tokens_per_s:,.0f} tok/s, {peak:.1f} GiB"
    except torch.OutOfMemoryError:
        return "out of memory"
    finally:
        model = optimizer = None
        torch.cuda.empty_cache()


def main() -> None:
    task = InductionHeads(VOCAB, LENGTH)
    batches = [tuple(t.cuda() for t in task.sample(BATCH, seed=step)) for step in range(STEPS)]
    train = load_experiment("configs/mamba_tiny.yaml").train
    ours_s, ours_loss = small_ours(batches, train)
    peer_s, peer_loss = small_mambapy(batches, train.lr)
    lines = [
        f"# Mamba training speed beside mambapy 1.2 ({torch.cuda.get_device_name()}, torch {torch.__version__})",
        "",
        "`PYTHONPATH=.:<mambapy> python3 benchmarks/mamba_training_speed.py` (one run, float32 unless stated)",
        "",
        f"2-layer d_model 64 Mamba, induction heads (vocabulary {VOCAB}, length {LENGTH}), "
        f"{STEPS} steps of batch {BATCH}:",
        "",
        "| implementation | seconds | final loss |",
        "|---|---|---|",
        f"| memory-models (scan: auto) | {ours_s:.1f} | {ours_loss:.3f} |",
        f"| mambapy (pscan) | {peer_s:.1f} | {peer_loss:.3f} |",
        "",
        "MambaGPT-130m training step (AdamW):",
        "",
        "| implementation | setting | result |",
        "|---|---|---|",
    ]
    for precision in ("float32", "bfloat16"):
        tokens_per_s, peak = large_ours(precision)
        lines.append(
            f"| memory-models | 4 x 2048, {precision}, checkpointed | {tokens_per_s:,.0f} tok/s, {peak:.1f} GiB |"
        )
        print(lines[-1], flush=True)
    for batch in (1, 2, 4):
        lines.append(f"| mambapy | {batch} x 2048, float32 | {large_mambapy(batch)} |")
        print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "mamba_training_speed_cuda.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
