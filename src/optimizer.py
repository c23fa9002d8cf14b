"""AdamW's parameter groups: which parameters weight decay applies to, as the papers' code trains.

Two rules, applied to the trainable parameters (`requires_grad`) of any model, a `PaperModel` or
an adapted pretrained model (whose frozen base is left out):

1. A tensor of fewer than two dimensions (biases, norm weights, gates, per-channel scalars) is not
   decayed; matrices and embeddings are. This is nanoGPT's `GPT.configure_optimizers`
   (karpathy/nanoGPT, `model.py`): "Any parameters that is 2D will be weight decayed, otherwise
   no. i.e. all weight tensors in matmuls + embeddings decay, all biases and layernorms don't."
2. A parameter a mixer names in `Mixer.no_weight_decay` is not decayed whatever its dimensions:
   the selective SSM's A_log (d_inner, N) and D, and its Δ bias. The official Mamba module
   (state-spaces/mamba, `mamba_ssm/modules/mamba_simple.py`) sets `_no_weight_decay = True` on
   `A_log` and `D`; its Δ bias (`dt_proj.bias`) is a bias, undecayed by rule 1, and Mamba-2's module
   (`mamba2_simple.py`) marks its `dt_bias` too ("Just to be explicit"). The LTI twin (`S4DMixer`)
   declares its counterparts: `A_log`, `D` and `delta_bias`. S4D's minimal code (state-spaces/s4,
   `models/s4/s4d.py`) likewise registers its A (`log_A_real`, `A_imag`) and `log_dt` "with a
   configurable learning rate and 0 weight decay", while its C is a plain parameter, as here.

A mixer may also name parameters in `Mixer.lr_scale` (name -> factor): those form groups of their
own whose learning rate is the schedule's times the factor (`set_learning_rates`), as Memory Layers
at Scale (Berges et al. 2024, arXiv:2412.09764) train a memory's values faster than the rest.

Parameters are grouped by name (`named_parameters`, which lists a tied embedding once) and by
`dim()`, so the groups are the same after FSDP2 has made the parameters DTensor shards (a DTensor's
`dim()` is the whole tensor's). The optimizer is built from the groups after wrapping.
`LanguageModel.parameter_groups` (what the training loop calls) returns these groups.
"""

from typing import cast

import torch
from torch import nn

from src.layers.mixer import Mixer


def _declared(model: nn.Module, attribute: str) -> dict[str, object]:
    """Qualified name -> what the model's mixers declare for it in `attribute` (a collection of names, or a
    mapping of names to values). A declared name that is not a parameter of its mixer is an error naming both."""
    declared = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Mixer):
            entries = getattr(module, attribute)
            for name in entries:
                try:
                    module.get_parameter(name)
                except AttributeError as error:
                    raise AttributeError(
                        f"{type(module).__name__}.{attribute} names {name!r}, which is not one of its parameters"
                    ) from error
                declared[f"{prefix}.{name}" if prefix else name] = entries[name] if isinstance(entries, dict) else None
    return declared


def exempt_parameter_names(model: nn.Module) -> set[str]:
    """The qualified names of the parameters the model's mixers declare in `no_weight_decay`."""
    return set(_declared(model, "no_weight_decay"))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups of `model`'s trainable parameters: decayed, then not decayed, then any
    with a learning-rate factor.

    A parameter is decayed with `weight_decay` when it has two or more dimensions and no mixer
    declares it in `no_weight_decay`; every other trainable parameter is undecayed, with weight
    decay 0. Each group carries its `lr_scale` (1 but for parameters a mixer names in `lr_scale`,
    which get a group per decay and factor after the first two). Each parameter is in exactly one
    group (a tied embedding once). The first two groups are always present, so an optimizer's state
    has the same layout for every model without factors.
    """
    exempt, scales = exempt_parameter_names(model), _declared(model, "lr_scale")
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            decayed = parameter.dim() >= 2 and name not in exempt
            scale = cast(float, scales.get(name, 1.0))  # Mixer.lr_scale's values are floats
            groups.setdefault((decayed, scale), []).append(parameter)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
        for (decayed, scale), params in groups.items()
    ]


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give each parameter group the learning rate `lr` times its `lr_scale` (see `parameter_groups`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
