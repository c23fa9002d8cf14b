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

Parameters are grouped by name (`named_parameters`, which lists a tied embedding once) and by
`dim()`, so the groups are the same after FSDP2 has made the parameters DTensor shards (a DTensor's
`dim()` is the whole tensor's). The optimizer is built from the groups after wrapping.
`LanguageModel.parameter_groups` (what the training loop calls) returns these groups.
"""

from torch import nn

from src.layers.mixer import Mixer


def exempt_parameter_names(model: nn.Module) -> set[str]:
    """The qualified names of the parameters the model's mixers declare in `no_weight_decay`.

    A declared name that is not a parameter of its mixer is an error naming both.
    """
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, Mixer):
            for name in module.no_weight_decay:
                try:
                    module.get_parameter(name)
                except AttributeError as error:
                    raise AttributeError(
                        f"{type(module).__name__}.no_weight_decay names {name!r}, which is not one of its parameters"
                    ) from error
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's two parameter groups of `model`'s trainable parameters: decayed, then not decayed.

    A parameter is decayed with `weight_decay` when it has two or more dimensions and no mixer
    declares it in `no_weight_decay`; every other trainable parameter is in the second group, with
    weight decay 0. Each parameter is in exactly one group (a tied embedding once). Both groups are
    always present, so an optimizer's state has the same layout for every model.
    """
    exempt = exempt_parameter_names(model)
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 and name not in exempt else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
