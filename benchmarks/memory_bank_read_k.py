"""A trained routed memory bank read with k = 1, 2, 4, 8 of its 8 chapters and as int8 / 4-bit codes.

    python benchmarks/memory_bank_read_k.py [--steps 400] [--batch 64] [--threads 1] [--device cpu]

Trains `configs/memory_bank_read_k.yaml` (MQAR, each token reading 2 of 8 chapters) and reads the
one trained model with each of the config's `eval.settings` model overrides (the reads
`memory-models evaluate CONFIG CHECKPOINT --set ...` makes): held-out loss and accuracy, and the
mean KL divergence of each read's predictions from the trained read's at the scored positions (how
far reading differently moves the model). Writes `results/memory_bank_read_k_<device>.md`.
"""

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from src.config import load_experiment
from src.runs import CHECKPOINT, load_trained_model
from src.tasks import IGNORE
from src.training import evaluation_batches, evaluation_tasks, setting_model, train

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def reads(experiment, checkpoint: Path, device: torch.device) -> list[tuple[str, float, float, float]]:
    """(setting, loss, accuracy, KL from the trained read) for the trained read and each eval setting."""
    model = load_trained_model(checkpoint, device, experiment.model).model
    settings = evaluation_tasks(experiment)
    batches = list(evaluation_batches(settings[0].task, experiment))  # the settings change the model, not the task
    trained = [F.log_softmax(model(inputs.to(device)), -1) for inputs, _ in batches]
    rows = []
    for setting in settings:
        reader = setting_model(model, setting)
        loss = correct = kl = scored = 0.0
        for (inputs, targets), reference in zip(batches, trained):
            targets = targets.to(device)
            log_p = F.log_softmax(reader(inputs.to(device)), -1)
            mask = targets != IGNORE
            loss += F.nll_loss(log_p[mask], targets[mask], reduction="sum").item()
            correct += (log_p.argmax(-1)[mask] == targets[mask]).sum().item()
            kl += F.kl_div(log_p[mask], reference[mask], log_target=True, reduction="sum").item()
            scored += mask.sum().item()
        rows.append((setting.suffix.removeprefix("@") or "as trained", loss / scored, correct / scored, kl / scored))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    experiment = load_experiment(ROOT / "configs" / "memory_bank_read_k.yaml")
    with tempfile.TemporaryDirectory() as out_dir:
        changes = {"out_dir": out_dir, "steps": args.steps, "batch_size": args.batch, "device": args.device}
        experiment = replace(experiment, train=replace(experiment.train, **changes))
        started = time.perf_counter()
        train(experiment)
        seconds = time.perf_counter() - started
        rows = reads(experiment, Path(out_dir) / CHECKPOINT, torch.device(args.device))
    table = [f"| {label} | {loss:.4f} | {accuracy:.4f} | {kl:.5f} |" for label, loss, accuracy, kl in rows]
    text = "\n".join([
        f"# A trained memory bank read with k of its chapters ({args.device}, {args.threads} threads, "
        f"torch {torch.__version__})",
        "",
        f"`python benchmarks/memory_bank_read_k.py --steps {args.steps} --batch {args.batch} --threads "
        f"{args.threads}`: `configs/memory_bank_read_k.yaml` (MQAR, 4 pairs in 16 tokens, chance 0.25; two "
        "memory-bank blocks of 8 chapters of 16 rows, each token reading 2) trained for "
        f"{args.steps} steps at batch {args.batch} ({seconds:.0f} s), then read with each setting on "
        f"{experiment.eval.num_examples} held-out examples. KL: the mean KL divergence of the read's "
        "predictions from the trained read's, per scored position (nats).",
        "",
        "| read with | held-out loss | held-out accuracy | KL from the trained read |",
        "|---|---|---|---|",
        *table,
        "",
    ])  # fmt: skip
    path = ROOT / "benchmarks" / "results" / f"memory_bank_read_k_{args.device}.md"
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
