"""AdamW's parameter groups (src/optimizer.py): which parameters weight decay applies to.

Over every registered mixer (the configurations of tests/test_mixer_contract.py), a one-block
PaperModel's decayed parameters are exactly its tensors of two or more dimensions less the ones
its mixers declare; the SSMs' A_log, D and Δ bias are never decayed; the groups partition the
trainable parameters, a tied embedding once. The same holds for an adapted pretrained model (its
frozen base in neither group) and under FSDP2, whose parameters are DTensor shards.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch.distributed.tensor import DTensor

from src.adapted.model import AdaptedModel
from src.config import load_experiment, resolve_model_section
from src.distributed import processes
from src.layers import MIXERS
from src.layers.selective_ssm import MambaMixer
from src.model import PaperModel
from src.optimizer import parameter_groups
from src.training import build_training
from src.validation import read_yaml
from tests.test_cli import tiny_experiment
from tests.test_distributed import _free_port
from tests.test_mixer_contract import D_MODEL, EXAMPLES

WEIGHT_DECAY = 0.1
# The parameters each mixer keeps from weight decay although they have two or more dimensions (A_log
# is (d_inner, N)), or whatever their dimensions: the official Mamba module's `_no_weight_decay`
# (A_log, D), its Δ bias, and their counterparts in the LTI twin. Every other mixer declares none.
NOT_DECAYED = {
    "selective_ssm": {"A_log", "D", "dt_proj.bias"},
    "lti_ssm": {"A_log", "D", "delta_bias"},
}
PREFIX = "blocks.0.mixer."


def one_block_model(kind: str, kwargs: dict, tie_embeddings: bool = True) -> PaperModel:
    section = {
        "vocab_size": 32,
        "d_model": D_MODEL,
        "tie_embeddings": tie_embeddings,
        "blocks": [{"mixer": {"type": kind, **kwargs}, "mlp": {"type": "swiglu", "d_hidden": 32}}],
    }
    return PaperModel(resolve_model_section(section, "test"))


def group_names(model: torch.nn.Module, groups: list[dict]) -> tuple[list[str], list[str]]:
    """The names of the decayed group's parameters and of the other group's, each in model order."""
    name_of = {id(parameter): name for name, parameter in model.named_parameters()}
    return [name_of[id(p)] for p in groups[0]["params"]], [name_of[id(p)] for p in groups[1]["params"]]


def expected_not_decayed(model: torch.nn.Module, declared: dict[str, set[str]]) -> set[str]:
    """Every trainable tensor of fewer than two dimensions, and the declared names (prefix -> names)."""
    small = {name for name, p in model.named_parameters() if p.requires_grad and p.dim() < 2}
    return small | {prefix + name for prefix, names in declared.items() for name in names}


def test_every_registered_mixer_has_an_example_and_only_the_ssms_declare_parameters():
    assert {kind for kind, _ in EXAMPLES.values()} == set(MIXERS)
    for kind, cls in MIXERS.items():
        assert set(cls.no_weight_decay) == NOT_DECAYED.get(kind, set()), kind


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_exactly_the_matrices_decay_except_the_declared_ones(example):
    kind, kwargs = EXAMPLES[example]
    model = one_block_model(kind, kwargs)
    groups = parameter_groups(model, WEIGHT_DECAY)
    assert [group["weight_decay"] for group in groups] == [WEIGHT_DECAY, 0.0]
    decayed, not_decayed = group_names(model, groups)
    assert set(not_decayed) == expected_not_decayed(model, {PREFIX: NOT_DECAYED.get(kind, set())})
    assert set(decayed) == {name for name, _ in model.named_parameters()} - set(not_decayed)
    assert all(model.get_parameter(name).dim() >= 2 for name in decayed)
    assert len(decayed) + len(not_decayed) == len(set(decayed) | set(not_decayed))  # each once
    assert "embedding.weight" in decayed and "norm.weight" in not_decayed  # nanoGPT's rule


@pytest.mark.parametrize("kind", ["selective_ssm", "lti_ssm"])
def test_a_log_d_and_the_delta_bias_never_decay(kind):
    model = one_block_model(kind, {"d_state": 4})
    decayed, not_decayed = group_names(model, parameter_groups(model, WEIGHT_DECAY))
    mixer = model.blocks[0].mixer
    assert mixer.A_log.dim() == 2  # the dimension rule alone would decay it
    assert {PREFIX + name for name in NOT_DECAYED[kind]} <= set(not_decayed)
    assert not {PREFIX + name for name in NOT_DECAYED[kind]} & set(decayed)
    for name in ("in_proj.weight", "conv1d.weight", "out_proj.weight"):
        assert PREFIX + name in decayed
    assert PREFIX + "conv1d.bias" in not_decayed


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_the_groups_hold_every_parameter_once_a_tied_embedding_too(tie_embeddings):
    model = one_block_model("selective_ssm", {"d_state": 4}, tie_embeddings)
    groups = parameter_groups(model, WEIGHT_DECAY)
    ids = [id(p) for group in groups for p in group["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert sum(p.numel() for group in groups for p in group["params"]) == model.num_parameters()
    decayed, _ = group_names(model, groups)
    assert ("head.weight" in decayed) is not tie_embeddings  # tied: the embedding's name alone


def test_frozen_parameters_are_in_neither_group():
    model = one_block_model("selective_ssm", {"d_state": 4})
    model.embedding.weight.requires_grad_(False)
    model.blocks[0].mixer.D.requires_grad_(False)
    decayed, not_decayed = group_names(model, parameter_groups(model, WEIGHT_DECAY))
    assert "embedding.weight" not in decayed and PREFIX + "D" not in not_decayed
    assert len(decayed) + len(not_decayed) == sum(p.requires_grad for p in model.parameters())


def test_a_declared_name_that_is_not_a_parameter_is_named():
    class Misdeclared(MambaMixer):
        no_weight_decay = ("A_log", "dt_bias")

    with pytest.raises(AttributeError, match=r"Misdeclared\.no_weight_decay names 'dt_bias'"):
        parameter_groups(Misdeclared(D_MODEL, d_state=4), WEIGHT_DECAY)


def test_an_adapted_model_groups_its_adapters_only(tiny_bases):
    adapters = [
        {"type": "memory", "layers": [0], "variant": "A", "n_heads": 4, "n_memory": 16},
        {"type": "lora", "targets": ["q_proj", "v_proj"], "rank": 4, "alpha": 8},
    ]
    section = resolve_model_section({"base": {"directory": str(tiny_bases["llama"])}, "adapters": adapters}, "test")
    model = AdaptedModel(section, "test")
    decayed, not_decayed = group_names(model, parameter_groups(model, WEIGHT_DECAY))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(decayed) | set(not_decayed) == trainable
    assert len(trainable) < len(list(model.named_parameters()))  # the frozen base is left out
    assert set(not_decayed) == expected_not_decayed(model, {})
    assert {"base.model.layers.0.self_attn.q_proj.A", "memory_adapters.layer0A.memory.M"} <= set(decayed)  # LoRA, bank
    assert "memory_adapters.layer0A.alpha" in not_decayed  # the tanh gate, a scalar


def _fsdp_process(rank: int, world_size: int, port: int, path: str, out: str) -> None:
    """One of two gloo processes: build_training under fsdp; writes what it saw of its shards' groups to `out`."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    experiment = load_experiment(path)
    with processes(experiment.train, path, torch.device("cpu")) as group:
        training = build_training(experiment, group)
        seen = {
            "all_dtensors": all(isinstance(p, DTensor) for p in training.model.parameters()),
            "local_A_log_rows": training.model.blocks[0].mixer.A_log.to_local().shape[0],
            "groups": group_names(training.model, training.optimizer.param_groups),
            "weight_decays": [g["weight_decay"] for g in training.optimizer.param_groups],
        }
        inputs = torch.randint(0, 8, (2, 12))
        loss, *_ = training.wrapped(inputs, inputs)
        loss.backward()
        training.optimizer.step()  # AdamW steps both groups of shards
        seen["finite_after_step"] = all(bool(torch.isfinite(p.to_local()).all()) for p in training.model.parameters())
    Path(out.format(rank=rank)).write_text(json.dumps(seen))


def test_fsdp_shards_are_grouped_as_the_whole_parameters(tmp_path):
    raw = read_yaml(tiny_experiment(tmp_path, parallel="fsdp", weight_decay=WEIGHT_DECAY))
    raw["model"]["blocks"] = [{"mixer": {"type": "selective_ssm", "d_state": 4}, "mlp": "none", "repeat": 2}]
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = str(tmp_path / "rank{rank}.json")
    mp.start_processes(_fsdp_process, args=(2, _free_port(), str(path), out), nprocs=2, start_method="fork")
    reference = PaperModel(load_experiment(path).model)
    expected = [list(names) for names in group_names(reference, parameter_groups(reference, WEIGHT_DECAY))]
    for rank in range(2):
        seen = json.loads(Path(out.format(rank=rank)).read_text())
        assert seen["all_dtensors"] and seen["finite_after_step"]
        assert seen["local_A_log_rows"] == 16  # half of d_inner 32
        assert seen["groups"] == expected
        assert seen["weight_decays"] == [WEIGHT_DECAY, 0.0]
