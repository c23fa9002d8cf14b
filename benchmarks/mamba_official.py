"""Mamba ours beside the official CUDA kernels, measured in one run on one GPU (issue 25, item 5).

    PYTHONPATH=. python3 benchmarks/mamba_official.py --out OUT   # writes OUT/mamba_official.{md,json}

`--parts` picks some of the parts below; a later run with the same `--out` adds its parts to the same
two files (or replaces theirs), so the parts may be measured in separate runs of the same machine.

The official is PyPI's mamba-ssm 2.3.2.post1, its selective scan compiled here from the source
distribution (`benchmarks/official_mamba.py`, carried in peers/); its Mamba block falls back to torch's
conv1d (causal_conv1d is not built) and uses its Triton fused add + RMSNorm. The parts:

1. scan: the selective scan forward + backward of one MambaGPT-130m layer (d 1536, N 16, L 2048), batch
   1 and 4, float32 and bfloat16 inputs (A, D, Δ bias float32 in both kernels), every input requiring a
   gradient, softplus(Δ + bias), the D skip and the SiLU(z) gate inside the kernel: ours
   (`selective_scan_triton`) against `selective_scan_fn`. Medians of `triton.testing.do_bench`.
2. train: the MambaGPT-130m training step (configs/mamba_130m.yaml; forward, backward, clipping, AdamW)
   at `--batches` x 2048 tokens, float32 and bfloat16 autocast: ours plain (no block checkpointing, all
   logits at once) and as the config trains (checkpointed blocks, chunked loss), the official
   `MambaLMHeadModel` of the same sizes (it has no checkpointing). Tokens/s over 3 steps after 2
   warm-up steps, and `torch.cuda.max_memory_allocated` over those 3 steps.
3. decode: batch 1, a 2,048-token prompt and 256 greedy tokens, float32: ours (`src.generation.generate`)
   with and without CUDA graphs, the official `decode` with and without its CUDA graphs. Seconds for
   the whole call (prompt included), the median of 3 after one warm-up call that also captures graphs.
4. profile: where our plain bfloat16 130m step at 4 x 2048 spends the GPU's time, the 25 kernels of
   most total time over 2 steps (`torch.profiler`), to pick what to fuse next (issue 25, item 2).

Both models are randomly initialised with the same seed (the speed does not depend on the weights).
"""

import argparse
import dataclasses
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from benchmarks.official_mamba import official_mamba
from src.config import load_experiment
from src.generation import generate
from src.kernels.selective_scan import selective_scan_triton
from src.model import PaperModel
from src.training import TrainingObjective, training_step

CONFIG = Path("configs/mamba_130m.yaml")
D_INNER, N, L = 1536, 16, 2048
PROMPT, NEW_TOKENS = 2048, 256
PARTS = ("scan", "train", "decode", "profile")


def scan_inputs(batch: int, dtype: torch.dtype) -> dict:
    """The scan's arguments at 130m's size: Δ ~ softplus(-4 + ...) as trained, A as S4D-Real's range."""
    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, scale=1.0, shift=0.0, dtype=dtype):
        return (scale * torch.randn(*shape, generator=g, device="cuda") + shift).to(dtype).requires_grad_()

    return {
        "u": randn(batch, D_INNER, L), "delta": randn(batch, D_INNER, L, scale=0.5, shift=-4.0),
        "A": (-torch.rand(D_INNER, N, device="cuda", generator=g) * 15 - 1).requires_grad_(),
        "B": randn(batch, N, L), "C": randn(batch, N, L), "D": randn(D_INNER, dtype=torch.float32),
        "z": randn(batch, D_INNER, L), "delta_bias": randn(D_INNER, scale=0.1, dtype=torch.float32),
    }  # fmt: skip


def scan_ms(scan, x: dict) -> float:
    def run():
        out = scan(**x, delta_softplus=True)
        out.backward(torch.ones_like(out))

    return triton.testing.do_bench(run, warmup=10, rep=100)


def measure_scans() -> list[dict]:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for batch in (1, 4):
            x = scan_inputs(batch, dtype)
            ours, official = scan_ms(selective_scan_triton, x), scan_ms(selective_scan_fn, x)
            name = str(dtype).removeprefix("torch.")
            rows.append({"dtype": name, "batch": batch, "ours_ms": ours, "official_ms": official})
            print(rows[-1], flush=True)
    return rows


def throughput(step, tokens: int) -> dict:
    """tokens/s and peak memory of 3 steps after 2 warm-up steps (compilation and autotuning, whose timing
    buffers are not the step's memory); out of memory recorded."""
    try:
        step(), step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        return {"tokens_per_s": 3 * tokens / (time.perf_counter() - start), "peak_gib": peak_gib()}
    except torch.OutOfMemoryError:
        return {"out_of_memory": True}


def failure_kept(measure) -> dict:
    """measure()'s result, or {"error": ...} when it raises: one failing row leaves the others measured."""
    try:
        return measure()
    except Exception as error:
        print(f"failed: {error!r}", flush=True)
        return {"error": f"{type(error).__name__}: {error}"}


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30


def fresh_memory() -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def official_model():
    """The official MambaLMHeadModel with 130m's sizes (Mamba-1 blocks, no MLP, RMSNorm, tied embeddings)."""
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    experiment = load_experiment(CONFIG)
    config = MambaConfig(
        d_model=experiment.model["d_model"], d_intermediate=0, n_layer=24, vocab_size=experiment.model["vocab_size"],
        ssm_cfg={"layer": "Mamba1"}, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
        pad_vocab_size_multiple=8, tie_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return MambaLMHeadModel(config, device="cuda")


def ours_model() -> PaperModel:
    torch.manual_seed(0)
    return PaperModel(load_experiment(CONFIG).model).cuda()


def train_ours(batch: int, precision: str, checkpointed: bool) -> dict:
    experiment = load_experiment(CONFIG)
    train = experiment.train
    if not checkpointed:
        train = dataclasses.replace(train, checkpoint_blocks=False, loss_chunk_tokens=None)
    train = dataclasses.replace(train, precision=precision)
    fresh_memory()
    model = ours_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(experiment.model["vocab_size"], (batch, L + 1), device="cuda")
    objective = TrainingObjective(model, train)
    return throughput(lambda: training_step(objective, optimizer, ids[:, :-1], ids[:, 1:], train), batch * L)


def train_official(batch: int, precision: str) -> dict:
    fresh_memory()
    model = official_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(model.config.vocab_size, (batch, L + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            logits = model(ids[:, :-1]).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return throughput(step, batch * L)


def profile_training() -> str:
    """The top kernels by total GPU time of 2 plain bfloat16 steps of ours at 4 x 2048, as a text table."""
    experiment = load_experiment(CONFIG)
    train = dataclasses.replace(experiment.train, checkpoint_blocks=False, loss_chunk_tokens=None, precision="bfloat16")
    model = ours_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(experiment.model["vocab_size"], (4, L + 1), device="cuda")
    objective = TrainingObjective(model, train)
    for _ in range(2):  # compile and autotune outside the profile
        training_step(objective, optimizer, ids[:, :-1], ids[:, 1:], train)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(2):
            training_step(objective, optimizer, ids[:, :-1], ids[:, 1:], train)
        torch.cuda.synchronize()
    return profile.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)


def measure_training(batches: list[int]) -> list[dict]:
    rows = []
    for precision in ("float32", "bfloat16"):
        for batch in batches:
            for name, run in (
                ("ours, plain", partial(train_ours, batch, precision, checkpointed=False)),
                ("ours, checkpointed + chunked loss", partial(train_ours, batch, precision, checkpointed=True)),
                ("official", partial(train_official, batch, precision)),
            ):
                rows.append({"precision": precision, "batch": batch, "implementation": name, **failure_kept(run)})
                print(rows[-1], flush=True)
    return rows


def seconds(fn) -> float:
    """Median seconds of 3 calls after one warm-up call."""
    fn()
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_decoding() -> list[dict]:
    from mamba_ssm.utils.generation import decode

    prompt = torch.randint(50277, (1, PROMPT), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    ours, official = ours_model(), official_model().eval()
    calls = {
        ("ours", False): partial(generate, ours, prompt, NEW_TOKENS, cuda_graphs=False),
        ("ours", True): partial(generate, ours, prompt, NEW_TOKENS, cuda_graphs=True),
        ("official", False): partial(decode, prompt, official, PROMPT + NEW_TOKENS, top_k=1, cg=False),
        ("official", True): partial(decode, prompt, official, PROMPT + NEW_TOKENS, top_k=1, cg=True),
    }
    rows = []
    for (implementation, graphs), call in calls.items():
        timed = failure_kept(lambda call=call: {"seconds": seconds(call)})
        rows.append({"implementation": implementation, "cuda_graphs": graphs, **timed})
        print(rows[-1], flush=True)
    return rows


def fmt_run(row: dict) -> str:
    if "error" in row:
        return f"failed ({row['error'][:80]})"
    if row.get("out_of_memory"):
        return "out of memory"
    return f"{row['tokens_per_s']:,.0f} tok/s, {row['peak_gib']:.1f} GiB"


def markdown(results: dict) -> str:
    commands = sorted(set(results["commands"].values()))
    lines = [
        f"# Mamba: ours beside the official CUDA kernels ({results['device']}, torch {results['torch']}, "
        f"triton {results['triton']}, mamba-ssm {results['mamba_ssm']})",
        "",
        "Each part measures ours and the official in the same run (`benchmarks/mamba_official.py` says what",
        "each part measures):",
        "",
        *(f"- `{command}`" for command in commands),
    ]
    if "scan" in results:
        lines += [
            "",
            f"Selective scan forward + backward, d {D_INNER}, N {N}, L {L} (ms, median of do_bench):",
            "",
            "| inputs | batch | ours | official | ours / official |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['dtype']} | {r['batch']} | {r['ours_ms']:.3f} | {r['official_ms']:.3f} | "
            f"{r['ours_ms'] / r['official_ms']:.2f}x |"
            for r in results["scan"]
        ]
    if "train" in results:
        lines += [
            "",
            f"MambaGPT-130m training step (AdamW, clipping) at batch x {L} tokens:",
            "",
            "| precision | batch | implementation | result | speed / official |",
            "|---|---|---|---|---|",
        ]
        official = {(r["precision"], r["batch"]): r for r in results["train"] if r["implementation"] == "official"}
        for r in results["train"]:
            reference = official[r["precision"], r["batch"]]
            ratio = (
                f"{r['tokens_per_s'] / reference['tokens_per_s']:.2f}x"
                if "tokens_per_s" in r and "tokens_per_s" in reference
                else "-"
            )
            lines.append(f"| {r['precision']} | {r['batch']} | {r['implementation']} | {fmt_run(r)} | {ratio} |")
    if "decode" in results:
        lines += [
            "",
            f"Decoding, batch 1, float32: a {PROMPT:,}-token prompt and {NEW_TOKENS} greedy tokens "
            "(seconds, the whole call):",
            "",
            "| implementation | CUDA graphs | seconds |",
            "|---|---|---|",
        ]
        lines += [
            f"| {r['implementation']} | {'yes' if r['cuda_graphs'] else 'no'} | "
            + (f"{r['seconds']:.2f} |" if "seconds" in r else f"failed ({r['error'][:80]}) |")
            for r in results["decode"]
        ]
    if results.get("failed"):
        lines += ["", "Parts that failed:", ""] + [f"- {part}: {why}" for part, why in results["failed"].items()]
    if "profile" in results:
        lines += [
            "",
            f"Where ours spends the GPU's time: 2 plain bfloat16 130m steps at 4 x {L} (`torch.profiler`):",
            "",
            "```",
            results["profile"].rstrip(),
            "```",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for mamba_official.md and .json (parts of earlier runs kept)"
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4], help="training batches of 2048 tokens")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    mamba_ssm = official_mamba()
    command = "PYTHONPATH=. python3 benchmarks/mamba_official.py " + " ".join(
        ["--out", str(args.out), "--parts", *args.parts, "--batches", *map(str, args.batches)]
    )
    json_path = args.out / "mamba_official.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}  # parts of earlier runs stay
    environment = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "mamba_ssm": mamba_ssm.__version__,
    }
    if any(results.get(key, value) != value for key, value in environment.items()):
        parser.error(f"{json_path} holds results from another device or versions: give another --out")
    results.update(environment)
    results.setdefault("commands", {}).update(dict.fromkeys(args.parts, command))
    results.get("failed", {}).update(dict.fromkeys(args.parts))  # cleared, then set again if it fails again
    results["failed"] = {part: why for part, why in results.get("failed", {}).items() if why}
    measures = {
        "scan": measure_scans,
        "train": partial(measure_training, args.batches),
        "decode": measure_decoding,
        "profile": profile_training,
    }
    for part in args.parts:  # the files are rewritten after each part: a later failure keeps the earlier ones
        try:
            results[part] = measures[part]()
        except Exception as error:  # recorded, and the other parts still run
            results.pop(part, None)  # an earlier run's numbers for it are not this run's
            results["failed"][part] = f"{type(error).__name__}: {error}"
            print(f"{part} failed: {error!r}", flush=True)
        fresh_memory()
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "mamba_official.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
