"""A GPU training run's memory fields in `metrics.jsonl`, and an out-of-memory run's one error line.

    PYTHONPATH=. python3 benchmarks/training_memory_log.py --out DIR

Two `memory-models train` runs of configs/mamba_130m.yaml (the command itself, in a subprocess):
- `DIR/mamba_130m_short/`: 30 steps at the config's batch (4 x 1024 MQAR tokens, block checkpointing,
  chunked loss) with an evaluation every 10; its `metrics.jsonl` carries the peak allocated and
  reserved CUDA bytes of each interval (`src/memory_use.py`);
- `DIR/out_of_memory.txt`: the same config at train.batch_size 16384, which does not fit the GPU;
  the file holds what the command printed: the one line naming the step, the estimate and the
  settings the estimator finds to fit (`src.estimate.out_of_memory_advice`), and its exit status.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

CONFIG = Path("configs/mamba_130m.yaml")


def write_config(path: Path, changes: dict) -> Path:
    """configs/mamba_130m.yaml with the `train` / `eval` keys of `changes` replaced, written to `path`."""
    config = yaml.safe_load(CONFIG.read_text())
    for section, values in changes.items():
        config[section].update(values)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train(config: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "import sys; from src.cli import main; sys.exit(main())", "train", str(config)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--part", choices=["log", "out-of-memory", "both"], default="both")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part in ("log", "both"):
        run_dir = args.out / "mamba_130m_short"
        short = write_config(
            args.out / "mamba_130m_short.yaml",
            {
                "train": {"steps": 30, "warmup_steps": 10, "eval_every": 10, "out_dir": str(run_dir)},
                "eval": {"num_examples": 32},
            },
        )
        result = train(short)
        (args.out / "mamba_130m_short.txt").write_text(
            f"exit status {result.returncode}\n{result.stdout}{result.stderr}"
        )
    if args.part in ("out-of-memory", "both"):
        large = write_config(
            args.out / "mamba_130m_batch_16384.yaml", {"train": {"batch_size": 16384, "out_dir": str(args.out / "oom")}}
        )
        result = train(large)
        (args.out / "out_of_memory.txt").write_text(f"exit status {result.returncode}\n{result.stdout}{result.stderr}")


if __name__ == "__main__":
    main()
