"""memory-models estimate: exact persistent parts, and the fake step equals the same step run for real."""

from dataclasses import replace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from src.cli import main
from src.config import load_experiment
from src.estimate import _LiveStorage, cuda_block_bytes, cuda_library_bytes, estimate_training_memory
from src.kernels.selective_scan import selective_scan_triton
from src.kernels.selective_scan_op import selective_scan_fused
from src.model import PaperModel
from src.runs import build_model
from src.tasks import build_task
from src.training import TrainingObjective, every_loss_chunk, training_step
from tests.conftest import ROOT

CONFIGS = ["transformer_mqar", "mamba_tiny", "titans_mag_mqar"]  # attention, scan, neural memory


def real_peak(experiment, batch: int | None = None) -> int:
    """The same two AdamW steps on real tensors, storages counted by the same rule (an adapted model's base
    built from its config.json, as the estimate builds it: weights read from files are mapped, not created
    by an operation the counter sees). A Mamba block runs the chunked scan on both sides (a fake step
    takes it when the config names it; with `scan: auto` it prices the fused kernel, checked below)."""
    batch = batch or experiment.train.batch_size
    inputs, targets = build_task(experiment.task).sample(batch, seed=experiment.train.seed)
    tracker = _LiveStorage()
    with tracker:
        model = build_model(experiment.model, experiment.file, base_weights=False)
        optimizer = torch.optim.AdamW(model.parameter_groups(experiment.train.weight_decay), lr=experiment.train.lr)
        for _ in range(2):
            tracker.peak = tracker.live
            training_step(TrainingObjective(model, experiment.train), optimizer, inputs, targets, experiment.train)
    return tracker.peak


def test_an_adapted_model_is_estimated_as_its_real_step(tmp_path, tiny_bases, capsys):
    """The frozen base built from its config.json under fake tensors: the real step's peak, the model's count.

    Measured: the fake step's peak is 3.4% above the real one on this tiny Qwen2 (68 KB of 2.0 MB; the
    PaperModel configs agree within 1%); the bound is one-sided, an estimate must not fall short.
    """
    from tests.test_adapted_distributed import adapted_experiment

    path = adapted_experiment(tmp_path, tiny_bases["qwen2"])
    experiment = load_experiment(path)
    estimate, real = estimate_training_memory(experiment), real_peak(experiment)
    assert real <= estimate.peak_bytes <= 1.05 * real
    assert estimate.parameters == build_model(experiment.model, experiment.file).num_parameters()
    assert main(["estimate", path]) == 0 and "peak of one training step" in capsys.readouterr().out


@pytest.mark.parametrize("name", CONFIGS)
def test_fake_step_peak_equals_the_real_step(name, tmp_path):
    path = ROOT / "configs" / f"{name}.yaml"
    if name == "mamba_tiny":  # the form CPU training runs
        path = tmp_path / "mamba_tiny.yaml"
        path.write_text(
            (ROOT / "configs" / "mamba_tiny.yaml").read_text().replace("d_conv: 4,", "d_conv: 4, scan: chunked,")
        )
    experiment = load_experiment(path)
    estimate = estimate_training_memory(experiment)
    assert estimate.peak_bytes == pytest.approx(real_peak(experiment), rel=0.01)


def test_the_scan_operator_allocates_as_the_kernel_does():
    """One fused scan, forward and backward: the storages the fake operator's step creates, and their peak,
    are those of the Triton kernel's step (its interpreter on a CPU). Checked per scan: the interpreter keeps
    its launch's arguments in reference cycles until Python's collector runs, which on a whole training step
    would count tensors that a compiled kernel frees at once."""

    def scan_step(make, scan) -> int:
        tracker = _LiveStorage()
        with tracker:
            u, delta, z = (make(2, 8, 20) for _ in range(3))  # 20 steps: two chunks of 8 and a partial one
            A, B, C, D, bias, h0 = make(8, 4), make(2, 4, 20), make(2, 4, 20), make(8), make(8), make(2, 8, 4)
            y, last = scan(u, delta, -A.exp(), B, C, D, z, bias, True, True, h0, 8)
            weights = make(2, 8, 20), make(2, 8, 4)  # contiguous output gradients: no copy the interpreter keeps
            loss = (y * weights[0]).sum() + (last * weights[1]).sum()
            torch.autograd.grad(loss, (u, delta, A, B, C, D, z, bias, h0))
        return tracker.peak

    with FakeTensorMode():
        fake = scan_step(lambda *shape: torch.zeros(shape, requires_grad=True), selective_scan_fused)
    assert fake == scan_step(lambda *shape: torch.rand(shape, requires_grad=True), selective_scan_triton)


def test_a_mamba_step_of_65536_tokens_is_estimated_affine_in_the_length():
    """A fake step runs one operator per scan (`memory_models::selective_scan`), so 65,536 tokens are as quick
    as 16 (the chunked scan took about 2 sqrt(L) fake operations per pass, minutes at this length). Every
    tensor of the fused kernel's step is a constant or grows linearly with the length (states every 512 steps,
    the dB and dC accumulators), so the peak is affine in it: the checked formula, with the short
    step checked against the real kernel above."""
    experiment = load_experiment(ROOT / "configs" / "mamba_tiny.yaml")
    peaks = [estimate_training_memory(experiment, 1, length).peak_bytes for length in (16_384, 32_768, 65_536)]
    assert peaks[2] - peaks[1] == 2 * (peaks[1] - peaks[0]) > 0


@pytest.mark.parametrize(("chunk", "precision"), [(40, "bfloat16"), (128, "float32")])
def test_three_loss_chunks_give_the_peak_of_every_chunk(chunk, precision):
    """A chunked loss priced by three chunks (`distinct_loss_chunks`) has the step's peak of all of them, to the
    byte. 4 x 128 tokens of a transformer with an 8,192-token vocabulary: 12 chunks and a tail of 32 tokens,
    4 chunks and no tail. The peak lies inside the loss (measured: a chunk's forward in the first case, a
    chunk's backward in the second), so a chunk more of logits would move it."""
    experiment = load_experiment(ROOT / "configs" / "transformer_mqar.yaml")
    experiment = replace(
        experiment,
        model={**experiment.model, "vocab_size": 8192},
        train=replace(experiment.train, loss_chunk_tokens=chunk, precision=precision, checkpoint_blocks=True),
    )
    estimate = estimate_training_memory(experiment, 4, 128)
    assert estimate == estimate_training_memory(experiment, 4, 128, loss_chunks=every_loss_chunk)
    wider = replace(experiment, train=replace(experiment.train, loss_chunk_tokens=chunk + 8))
    assert estimate_training_memory(wider, 4, 128).peak_bytes > estimate.peak_bytes


def test_persistent_parts_are_exact_for_float32_adamw():
    experiment = load_experiment(ROOT / "configs" / "transformer_mqar.yaml")
    model = PaperModel(experiment.model)
    parameters = list(model.parameters())  # a tied head is one tensor
    count = sum(p.numel() for p in parameters)
    estimate = estimate_training_memory(experiment)
    assert estimate.parameters == count
    assert estimate.parameter_bytes == estimate.gradient_bytes == 4 * count
    assert estimate.optimizer_bytes == 8 * count + 4 * len(parameters)  # exp_avg, exp_avg_sq, a float32 step each
    assert estimate.activation_bytes > 0
    assert estimate.peak_bytes == (
        estimate.parameter_bytes + estimate.gradient_bytes + estimate.optimizer_bytes + estimate.activation_bytes
    )


def test_batch_and_length_override_the_config():
    experiment = load_experiment(ROOT / "configs" / "mamba_tiny.yaml")
    small = estimate_training_memory(experiment, batch=2, length=40)
    large = estimate_training_memory(experiment, batch=8, length=40)
    assert (small.batch, small.length, large.batch) == (2, 40, 8)
    assert 3.0 < large.activation_bytes / small.activation_bytes < 4.5  # activations grow with the batch


def test_cli_prints_the_table_and_refuses_bad_flags(capsys):
    config = str(ROOT / "configs" / "mamba_tiny.yaml")
    assert main(["estimate", config, "--batch", "2", "--length", "24"]) == 0
    out = capsys.readouterr().out
    assert "training step at batch 2 x length 24 (priced for cpu):" in out and "peak of one training step" in out
    assert main(["estimate", config, "--batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "memory-models estimate: error: --batch must be >= 1, got 0"


def test_cuda_blocks_round_as_the_caching_allocator():
    """Hand-worked: c10's CUDACachingAllocator rounds a request up to a multiple of 512 bytes, at least 512."""
    assert [cuda_block_bytes(n) for n in (0, 1, 4, 511, 512, 513, 1536, 1537)] == [
        0,
        512,
        512,
        512,
        512,
        1024,
        1536,
        2048,
    ]


def test_cublas_workspaces_follow_torchs_defaults_and_the_environment(monkeypatch):
    """Two workspaces (the forward's thread and autograd's): 32 MiB each from Hopper on, 8.125 MiB before
    (4096 KiB x 2 + 16 KiB x 8), or what CUBLAS_WORKSPACE_CONFIG asks for."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert cuda_library_bytes((9, 0)) == cuda_library_bytes((10, 0)) == 64 * 2**20
    assert cuda_library_bytes((8, 0)) == 2 * (8 * 2**20 + 128 * 2**10)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:2")
    assert cuda_library_bytes((9, 0)) == 2 * 8 * 2**20


def test_a_cuda_step_is_priced_on_any_machine(monkeypatch, capsys):
    """Priced for CUDA (here on fake CPU tensors where no GPU is present): every storage in allocator blocks, the
    persistent parts exactly so (AdamW's float32 step counted as one block each), the cuBLAS workspaces added."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    experiment = load_experiment(ROOT / "configs" / "transformer_mqar.yaml")
    parameters = list(PaperModel(experiment.model).parameters())
    blocks = sum(cuda_block_bytes(4 * p.numel()) for p in parameters)
    on_cpu = estimate_training_memory(experiment, device="cpu")
    on_cuda = estimate_training_memory(experiment, device="cuda", capability=(9, 0))
    assert (on_cuda.device, on_cuda.library_bytes) == ("cuda", 64 * 2**20)
    assert on_cuda.parameter_bytes == on_cuda.gradient_bytes == blocks
    assert on_cuda.optimizer_bytes == 2 * blocks + 512 * len(parameters)
    assert (
        on_cpu.peak_bytes + on_cuda.library_bytes
        < on_cuda.peak_bytes
        < 1.05 * on_cpu.peak_bytes + on_cuda.library_bytes
    )
    assert "cuBLAS workspaces" in on_cuda.table() and "cuBLAS" not in on_cpu.table()
    assert main(["estimate", str(ROOT / "configs" / "transformer_mqar.yaml"), "--device", "cuda"]) == 0
    assert "(priced for cuda):" in capsys.readouterr().out


@pytest.mark.parametrize(("device", "priced"), [("cpu", "cpu"), ("mps", "cpu"), ("cuda", "cuda"), ("auto", "cuda")])
def test_the_default_prices_the_configs_train_device(device, priced):
    experiment = load_experiment(ROOT / "configs" / "transformer_mqar.yaml")
    experiment = replace(experiment, train=replace(experiment.train, device=device))
    assert estimate_training_memory(experiment, 2, 8).device == priced
