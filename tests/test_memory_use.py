"""Memory in the training log (CUDA peaks, CPU peak RSS) and out-of-memory errors with the estimator's advice.

No GPU runs here: the CUDA fields are checked through `cuda_peaks`, which takes the allocator's
stats, and running out of memory is a real `torch.OutOfMemoryError` raised by a forward hook inside
real `train`, `evaluate` and `compare` runs of a tiny model.
"""

import json
import re
from contextlib import contextmanager

import torch
from torch import nn

from src.cli import main
from src.memory_use import GIB, cuda_peaks, memory_text, peak_rss_bytes
from tests.test_cli import tiny_experiment
from tests.test_cli_bad_input import one_error_line, run
from tests.test_compare import comparison


def test_the_cuda_fields_come_from_the_allocators_peaks():
    stats = {"allocated_bytes.all.peak": 3 * GIB, "reserved_bytes.all.peak": 4 * GIB, "num_ooms": 0}
    fields = cuda_peaks(stats)
    assert fields == {"peak_allocated_bytes": 3 * GIB, "peak_reserved_bytes": 4 * GIB}
    assert memory_text(fields) == "  peak 3.00 GiB allocated / 4.00 GiB reserved"


def test_the_cpu_field_is_the_peak_resident_set():
    assert peak_rss_bytes() > 10 * 2**20  # a Python process with torch loaded
    assert memory_text({"peak_rss_bytes": GIB // 2}) == "  peak RSS 0.50 GiB"
    assert memory_text({}) == ""


def test_a_cpu_run_logs_its_peak_memory_in_every_record_and_progress_line(tmp_path, capsys):
    assert main(["train", tiny_experiment(tmp_path)]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(record["peak_rss_bytes"] > 10 * 2**20 for record in records)
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(progress) == 2 and all(re.search(r"  peak RSS \d+\.\d\d GiB$", line) for line in progress)


@contextmanager
def out_of_memory(when):
    """A forward hook on every module that raises torch.OutOfMemoryError once, at the first forward
    for which `when(module)` holds (then never again: the estimator runs the model afterwards)."""
    raised = []

    def hook(module, args, output):
        if not raised and when(module):
            raised.append(module)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield raised
    finally:
        handle.remove()


def training_forward(after: int):
    """`when` for the embedding's training-mode forwards after the first `after` ones: step after + 1."""
    seen = []

    def when(module):
        if isinstance(module, nn.Embedding) and module.training:
            seen.append(module)
            return len(seen) > after
        return False

    return when


ADVICE = ("train.checkpoint_blocks: true", "train.loss_chunk_tokens: 1024", "train.precision: bfloat16")


def test_out_of_memory_in_a_training_step_names_the_step_the_estimate_and_what_fits(tmp_path, capsys):
    config = tiny_experiment(tmp_path)  # 6 steps of batch 4, evaluated at 3 and 6
    with out_of_memory(training_forward(after=3)) as raised:
        err = one_error_line(capsys, "train", config)
    assert raised
    assert f"{config}: out of memory at step 4 (training step) on cpu; the device has " in err
    assert re.search(r"the estimate for this config is \d+\.\d\d GiB at batch 4 \(below the device's memory: ", err)
    assert "; estimated to fit: " in err
    assert all(setting in err for setting in ADVICE) and "train.batch_size: 2 (" in err
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3  # the last good one


def test_out_of_memory_in_an_evaluation_names_eval_batch_size(tmp_path, capsys):
    config = tiny_experiment(tmp_path)
    with out_of_memory(lambda module: isinstance(module, nn.Embedding) and not module.training):
        err = one_error_line(capsys, "train", config)
    assert f"{config}: out of memory at step 3 (evaluation) on cpu" in err
    assert "the evaluation runs eval.batch_size 10 examples at once: try eval.batch_size: 5" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_evaluate_names_the_checkpoints_step_when_out_of_memory(tmp_path, capsys):
    config = tiny_experiment(tmp_path)
    assert main(["train", config]) == 0
    with out_of_memory(lambda module: isinstance(module, nn.Embedding)):
        err = one_error_line(capsys, "evaluate", config, str(tmp_path / "run" / "checkpoint.pt"))
    assert "out of memory at step 6 (evaluation) on cpu" in err and "try eval.batch_size: 5" in err


def test_compare_records_running_out_of_memory_in_the_models_row(tmp_path, capsys):
    config = comparison(tmp_path, names=("first", "second"), steps=2, eval_every=2, warmup_steps=0)
    with out_of_memory(training_forward(after=2 + 1)):  # the first model's 2 steps, then the second's 2nd
        code, _, err = run(capsys, "compare", config)
    assert code == 2 and "1 of 2 models failed (second)" in err
    rows = json.loads((tmp_path / "run" / "compare.json").read_text())
    error = rows[1]["error"]
    assert "error" not in rows[0] and error.startswith("OutOfMemory: ")
    assert "out of memory at step 2 (training step)" in error and "estimated to fit: train.checkpoint_blocks" in error
