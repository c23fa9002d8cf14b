"""Adapters on a model of Qwen2.5-0.5B's published configuration, random weights: trainable parameters,
peak memory and training tokens/s with the frozen base in bfloat16, int8 and NF4 (one GPU).

No checkpoint can be downloaded here, so the base is Qwen2.5-0.5B's config.json values (hidden 896,
24 layers, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151,936, tied embeddings, RoPE theta
1e6) with random weights, written once in bfloat16 with save_pretrained. Each row builds the adapted
model through the config path (`resolve_model_section` -> `AdaptedModel`) and trains it with the
harness's `training_step` under bfloat16 autocast, the loss computed 1,024 positions at a time.
Tokens/s is measured over `--steps` steps after 3 warm-up steps; the model's memory is what is
allocated once it is built (frozen base and adapters), the peak is `torch.cuda.max_memory_allocated`
over the whole row (loading, quantization and training).

    PYTHONPATH=. python3 benchmarks/adapters_qwen_gpu.py --out benchmarks/results/adapters_qwen05b_h100.md

`--profile` adds, per row, torch.profiler's CPU and GPU time of 3 more steps (self times summed
over all operations) and the number of kernel launches: where the CPU time exceeds the GPU time,
the step is bound by dispatching kernels, not by the GPU.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from src.config import TrainConfig, resolve_model_section
from src.runs import build_model
from src.training import TrainingObjective, training_step

QWEN25_05B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MEMORY = [{"type": "memory", "layers": [8, 16], "variant": "A", "n_heads": 14, "n_memory": 1024}]
LORA = [{"type": "lora", "targets": ALL_PROJECTIONS, "rank": 16, "alpha": 32}]
ADAPTED = {"memory (A, layers 8 and 16, 1,024 slots)": MEMORY, "LoRA (r 16, all 7 projections)": LORA}
ROWS = [  # (row name, its adapters, the base section's keys besides the directory)
    *((name, adapters, {"dtype": "bfloat16", "quantization": quantization})
      for name, adapters in ADAPTED.items() for quantization in ("none", "int8", "nf4")),
    ("full fine-tuning", [], {"dtype": "float32", "freeze": False}),
]  # fmt: skip


def write_base(directory: Path) -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_05B), dtype=torch.bfloat16)
    model.save_pretrained(directory)


def measure(directory: Path, adapters: list, base: dict, batch: int, length: int, steps: int, profile: bool) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    section = resolve_model_section({"base": {"directory": str(directory), **base}, "adapters": adapters}, "<b>")
    model = build_model(section, "<b>", "cuda")
    model_gib = torch.cuda.memory_allocated() / 2**30
    train = TrainConfig(
        steps=steps, batch_size=batch, lr=1e-4, warmup_steps=0, weight_decay=0.0, grad_clip=1.0, seed=0,
        out_dir="-", eval_every=steps, device="cuda", precision="bfloat16", loss_chunk_tokens=1024,
    )  # fmt: skip
    objective = TrainingObjective(model, train)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = torch.randint(0, QWEN25_05B["vocab_size"], (batch, length), device="cuda", generator=g)
    targets = torch.randint(0, QWEN25_05B["vocab_size"], (batch, length), device="cuda", generator=g)
    for _ in range(3):
        loss = training_step(objective, optimizer, inputs, targets, train)[0]
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        loss = training_step(objective, optimizer, inputs, targets, train)[0]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if profile:
        with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
            for _ in range(3):
                training_step(objective, optimizer, inputs, targets, train)
            torch.cuda.synchronize()
        events = trace.key_averages()
        profiled = {
            "cpu_ms_per_step": sum(e.self_cpu_time_total for e in events) / 3e3,
            "gpu_ms_per_step": sum(e.self_device_time_total for e in events) / 3e3,
            "launches_per_step": sum(e.count for e in events if e.key == "cudaLaunchKernel") / 3,
        }
    return {
        **(profiled if profile else {}),
        "trainable": model.trainable_parameters(),
        "storage": model.storage,
        "model_gib": model_gib,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "tokens_per_s": steps * batch * length / seconds,
        "loss": loss.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="add CPU / GPU time per step and kernel launches")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "qwen2.5-0.5b-random"
        write_base(directory)
        for name, adapters, base in ROWS:
            result = measure(directory, adapters, base, args.batch, args.length, args.steps, args.profile)
            rows.append((name, base, result))
            print(name, base, result, flush=True)
    device = torch.cuda.get_device_name()
    lines = [
        f"# Adapters on Qwen2.5-0.5B's configuration (random weights), {device}",
        "",
        f"Batch {args.batch} x {args.length} tokens, bfloat16 autocast, AdamW on the trained parameters, {args.steps} "
        "timed steps after 3 warm-up steps. Frozen base stored in bfloat16 or with its decoder linears in int8 / NF4 "
        "(embedding and norms stay bfloat16); full fine-tuning keeps float32 weights. Command: "
        "`PYTHONPATH=. python3 benchmarks/adapters_qwen_gpu.py --out <this file>`.",
        "",
        "| adapter | base linears | trained params | bytes / frozen param (all / linears) | model GiB | "
        "peak GiB | tokens/s |" + (" CPU / GPU ms per step | kernel launches per step |" if args.profile else ""),
        "|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.profile else ""),
    ]
    for name, base, r in rows:
        kind = base.get("quantization", "none").replace("none", base["dtype"])
        storage = r["storage"]
        frozen = (
            "–"
            if storage is None
            else f"{storage['bytes_per_parameter']:.3f} / {storage['linear_bytes_per_parameter']:.3f}"
        )
        lines.append(
            f"| {name} | {kind} | {r['trainable']:,} | {frozen} | "
            f"{r['model_gib']:.2f} | {r['peak_gib']:.2f} | {r['tokens_per_s']:,.0f} |"
            + (
                f" {r['cpu_ms_per_step']:.0f} / {r['gpu_ms_per_step']:.0f} | {r['launches_per_step']:,.0f} |"
                if args.profile
                else ""
            )
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
