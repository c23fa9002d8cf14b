"""MambaGPT-130m trained briefly with AdamW's former single group and with `src.optimizer`'s groups.

    PYTHONPATH=. python3 benchmarks/weight_decay_groups.py --out DIR       # on a GPU: DIR/weight_decay_groups.{json,md}
    uv run --extra plots python benchmarks/weight_decay_groups.py --report results/weight_decay_groups_h200.json

configs/mamba_130m.yaml trains with weight decay 0.1. Before `src.optimizer.parameter_groups`,
`build_training` gave AdamW every trainable parameter with that decay ("single"): the RMSNorm weights,
the conv biases and Mamba's A_log, D and Δ bias decayed too. Now ("groups") only matrices and
embeddings decay, less A_log (the official Mamba code's `_no_weight_decay`). Both runs start from
the same seed and take the same (seed, step) batches through the training loop's own step
(`src.training.train_step`); only the optimizer's groups differ. To fit a few minutes of a GPU the
schedule is shortened to the run (`--steps`, warm-up a tenth of them, then the configured cosine
decay) and the run uses bfloat16 autocast (`train.precision`; parameters and AdamW state stay float32).

The report: the mean training loss of each `--window` steps, the held-out loss and accuracy every
`--eval-every` steps, and the mean of A_log, D, the Δ bias and the norm weights at the end (at
initialisation: mean log(1..16), 1, the Δ bias init, 1). `--report JSON` writes the markdown and,
with matplotlib (extra `plots`), the loss curves as PNG from a finished run's JSON.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from src.config import load_experiment
from src.distributed import Processes
from src.optimizer import parameter_groups
from src.runs import build_model
from src.tasks import build_task
from src.training import Training, TrainingObjective, evaluate, evaluation_tasks, train_step

CONFIG = "configs/mamba_130m.yaml"
GROUPINGS = {
    "single": "one group, weight decay on every parameter (before)",
    "groups": "src.optimizer.parameter_groups (now)",
}


def optimizer_groups(model: torch.nn.Module, grouping: str, weight_decay: float) -> list[dict]:
    if grouping == "single":
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    return parameter_groups(model, weight_decay)


def parameter_means(model: torch.nn.Module) -> dict[str, float]:
    """The mean of each kind of parameter the groupings treat differently, over all blocks."""
    kinds = {"A_log": ".A_log", "D": ".D", "delta_bias": "dt_proj.bias", "norm_weights": "norm.weight"}
    return {
        kind: torch.cat([p.detach().flatten() for name, p in model.named_parameters() if name.endswith(suffix)])
        .mean()
        .item()
        for kind, suffix in kinds.items()
    }


def run(experiment, grouping: str, eval_every: int) -> dict:
    """Train `experiment` with one grouping; the loss of every step, evaluations and parameter means."""
    train = experiment.train
    device = torch.device(train.device)
    processes = Processes("none", 0, 1, device)
    torch.manual_seed(train.seed)
    model = build_model(experiment.model, experiment.file, device)
    objective = TrainingObjective(model, train)
    optimizer = torch.optim.AdamW(
        optimizer_groups(model, grouping, train.weight_decay), lr=train.lr, betas=tuple(train.betas)
    )
    training = Training(model, objective, objective, optimizer)
    task, eval_tasks = build_task(experiment.task), evaluation_tasks(experiment)
    at_start = parameter_means(model)
    losses, evaluations = [], []
    started = time.perf_counter()
    for step in range(train.steps):
        losses.append(train_step(training, task, step, train, processes).loss.detach())
        if (step + 1) % eval_every == 0:
            evaluations.append({"step": step + 1, **evaluate(objective, experiment, eval_tasks)})
            print(f"{grouping} step {step + 1}: eval_loss {evaluations[-1]['eval_loss']:.4f}", flush=True)
    return {
        "loss": torch.stack(losses).float().tolist(),
        "eval": evaluations,
        "seconds": time.perf_counter() - started,
        "means_at_start": at_start,
        "means_at_end": parameter_means(model),
    }


def markdown(results: dict) -> str:
    setting, runs = results["setting"], results["runs"]
    window = setting["window"]
    steps = len(runs["single"]["loss"])
    lines = [
        f"# Weight-decay groups, before and after: MambaGPT-130m ({setting['device']}, torch {setting['torch']})",
        "",
        f"`PYTHONPATH=. python3 benchmarks/weight_decay_groups.py --steps {steps}`: {CONFIG}, "
        f"{steps} steps of {setting['batch_size']} x {setting['length']} tokens (MQAR), lr {setting['lr']} "
        f"(warm-up {setting['warmup_steps']} steps, cosine), weight decay {setting['weight_decay']}, "
        f"betas {setting['betas']}, bfloat16 autocast, seed {setting['seed']}; one run each, same batches.",
        "",
        *(f"- `{name}`: {description}" for name, description in GROUPINGS.items()),
        "",
        f"Training loss, mean of the {window} steps up to the step:",
        "",
        "| step | single | groups | groups - single |",
        "|---|---|---|---|",
    ]
    for end in range(window, steps + 1, window):
        single, groups = (sum(runs[g]["loss"][end - window : end]) / window for g in ("single", "groups"))
        lines.append(f"| {end} | {single:.4f} | {groups:.4f} | {groups - single:+.4f} |")
    lines += [
        "",
        f"Held-out loss and accuracy ({setting['eval_examples']} examples):",
        "",
        "| step | single loss | groups loss | single accuracy | groups accuracy |",
        "|---|---|---|---|---|",
    ]
    for single, groups in zip(runs["single"]["eval"], runs["groups"]["eval"]):
        lines.append(
            f"| {single['step']} | {single['eval_loss']:.4f} | {groups['eval_loss']:.4f} | "
            f"{single['eval_accuracy']:.4f} | {groups['eval_accuracy']:.4f} |"
        )
    lines += [
        "",
        "Parameter means over all blocks (the norm weights include the final norm):",
        "",
        "| parameter | at start | single, at the end | groups, at the end |",
        "|---|---|---|---|",
    ]
    for kind, start in runs["single"]["means_at_start"].items():
        lines.append(
            f"| {kind} | {start:.4f} | {runs['single']['means_at_end'][kind]:.4f} | "
            f"{runs['groups']['means_at_end'][kind]:.4f} |"
        )
    seconds = ", ".join(f"{g} {runs[g]['seconds']:.0f} s" for g in GROUPINGS)
    lines += ["", f"Wall-clock seconds, training and evaluation (the first run compiles the kernels): {seconds}."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = results["setting"]["window"]
    figure, axis = plt.subplots(figsize=(7, 4))
    for grouping, description in GROUPINGS.items():
        losses = torch.tensor(results["runs"][grouping]["loss"])
        smoothed = losses.unfold(0, window, 1).mean(-1)
        (line,) = axis.plot(range(window, len(losses) + 1), smoothed.tolist(), label=f"{grouping}: {description}")
        evaluations = results["runs"][grouping]["eval"]
        steps, eval_losses = [e["step"] for e in evaluations], [e["eval_loss"] for e in evaluations]
        axis.plot(steps, eval_losses, "o", markersize=4, color=line.get_color())
    axis.set(xlabel="step", ylabel=f"training loss (mean of {window} steps); dots: held-out", title="MambaGPT-130m")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def report(path: Path) -> None:
    """Write the markdown beside the JSON, and the PNG when matplotlib is installed."""
    results = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(results))
    try:
        plot(results, path.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed (extra 'plots'): no PNG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--report", type=Path, help="a finished run's JSON: write its markdown and PNG only")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    experiment = load_experiment(CONFIG)
    train = dataclasses.replace(experiment.train, steps=args.steps, warmup_steps=args.steps // 10, precision="bfloat16")
    experiment = dataclasses.replace(experiment, train=train)
    task = build_task(experiment.task)
    setting = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "batch_size": train.batch_size,
        "length": task.sample(1, seed=0)[0].shape[1],
        "lr": train.lr,
        "warmup_steps": train.warmup_steps,
        "weight_decay": train.weight_decay,
        "betas": train.betas,
        "seed": train.seed,
        "eval_examples": experiment.eval.num_examples,
        "window": args.window,
    }
    results = {
        "setting": setting,
        "runs": {grouping: run(experiment, grouping, args.eval_every) for grouping in GROUPINGS},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "weight_decay_groups.json"
    path.write_text(json.dumps(results))
    report(path)
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
