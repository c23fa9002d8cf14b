"""Generation latency of every registered mixer: time to first token at a 2,048-token context, then tokens/s.

    uv run python benchmarks/generation_latency.py                     # CPU: results/generation_latency_cpu.md
    PYTHONPATH=. python3 benchmarks/generation_latency.py --device cuda  # GPU: results/generation_latency_cuda.md

Each model is 4 blocks of one mixer (width 256) with SwiGLU MLPs and a byte vocabulary, float32,
batch 1. Time to first token is `PaperModel.step` over the whole prompt (the prefill, which also
builds the recurrent state); decoding then steps one token at a time through that state, as
`src.generation.generate` does (greedy). Medians of repeated runs; the state's size after the
prompt is reported too (attention's KV cache grows with the context, the others do not).
"""

import argparse
import dataclasses
from pathlib import Path

import torch
from timing import timed

from src.config import resolve_model_section
from src.layers import MIXERS
from src.model import PaperModel

D_MODEL = 256
MIXER_ARGUMENTS = {  # every registered mixer needs an entry: the benchmark covers them all
    "attention": {"n_heads": 4},
    "selective_ssm": {},
    "lti_ssm": {},
    "tensor_memory": {"n_heads": 4},
    "infini_attention": {"n_heads": 4, "segment_size": 256},
    "neural_memory": {"memory": {"chunk_size": 16}},
    "titans_mag": {"n_heads": 4, "window": 256},
    "memory_bank": {"n_heads": 4, "n_memory": 256, "chapters": 8, "top_k": 2},
}


def model_for(mixer: str, device: str) -> PaperModel:
    block = {"mixer": {"type": mixer, **MIXER_ARGUMENTS[mixer]}, "mlp": {"type": "swiglu", "d_hidden": 4 * D_MODEL}}
    section = {"vocab_size": 256, "d_model": D_MODEL, "tie_embeddings": True, "blocks": [{**block, "repeat": 4}]}
    torch.manual_seed(0)
    return PaperModel(resolve_model_section(section, "<benchmark>")).to(device).eval()


def state_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if dataclasses.is_dataclass(state):
        return sum(state_bytes(getattr(state, field.name)) for field in dataclasses.fields(state))
    if isinstance(state, dict | list | tuple):
        return sum(state_bytes(value) for value in (state.values() if isinstance(state, dict) else state))
    return 0


@torch.no_grad()
def measure(mixer: str, device: str, context: int, new_tokens: int, repeats: int) -> dict:
    model = model_for(mixer, device)
    prompt = torch.randint(256, (1, context), generator=torch.Generator().manual_seed(0)).to(device)
    first = timed(lambda: model.step(prompt, None), device, repeats)
    logits, state = model.step(prompt, None)
    token = logits[:, -1:].argmax(-1)

    def decode():
        decode_state, next_token = state, token
        for _ in range(new_tokens):
            step_logits, decode_state = model.step(next_token, decode_state)
            next_token = step_logits[:, -1:].argmax(-1)

    seconds = timed(decode, device, repeats)
    return {"ttft_ms": 1000 * first, "tokens_per_s": new_tokens / seconds, "state_kib": state_bytes(state) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if missing := sorted(set(MIXERS) - set(MIXER_ARGUMENTS)):
        raise SystemExit(f"no benchmark arguments for the registered mixers {missing}")
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        f"# Generation latency, {args.context}-token context, batch 1, float32 ({name}, torch {torch.__version__})",
        "",
        f"`benchmarks/generation_latency.py --device {args.device}`: 4 blocks of each mixer, width {D_MODEL}, "
        f"SwiGLU MLPs; greedy decoding of {args.new_tokens} tokens after the prompt; medians of {args.repeats} runs.",
        "",
        "| mixer | time to first token (ms) | decode tokens/s | state after the prompt (KiB) |",
        "|---|---|---|---|",
    ]
    for mixer in MIXERS:
        result = measure(mixer, args.device, args.context, args.new_tokens, args.repeats)
        lines.append(
            f"| {mixer} | {result['ttft_ms']:,.1f} | {result['tokens_per_s']:,.1f} | {result['state_kib']:,.0f} |"
        )
        print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / f"generation_latency_{args.device}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
