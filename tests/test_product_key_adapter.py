"""A product-key memory adapter on a tiny random Llama: the base's logits at initialisation, its parameters
counted as built, its values in an AdamW group of their own learning rate, and its config errors named; the
optional query batch normalisation reads each token alone in eval mode."""

import pytest
import torch

from src.adapted.config import count_adapted_parameters
from src.adapted.model import AdaptedModel
from src.config import resolve_model_section
from src.layers.product_keys import ProductKeyMemory
from src.optimizer import set_learning_rates
from src.validation import ConfigError

transformers = pytest.importorskip("transformers")

PRODUCT_KEYS = {"type": "product_key_memory", "layers": [1], "variant": "B", "n_keys": 8, "top_k": 4,
                "heads": 2, "key_dim": 8, "value_dim": 16, "value_lr_scale": 10.0}  # fmt: skip


def section(directory, adapters):
    return resolve_model_section({"base": {"directory": str(directory)}, "adapters": adapters}, "test.yaml")


def test_logits_equal_the_base_exactly_at_initialisation(tiny_bases):
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    model = AdaptedModel(section(tiny_bases["llama"], [PRODUCT_KEYS]))
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_bases["llama"]).eval()
    with torch.no_grad():
        assert torch.equal(model(ids), base(ids).logits)


def test_parameters_are_counted_as_built(tiny_bases):
    resolved = section(tiny_bases["llama"], [{**PRODUCT_KEYS, "layers": [0, 1]}])
    model = AdaptedModel(resolved)
    d = model.hidden_size
    # per layer: RMSNorm d, gate 1, W_q d x (2 x 8), sub-keys 2 heads x 2 halves x 8 x 4, values 64 x 16, W_o 16 x d
    per_layer = d + 1 + d * 16 + 2 * 2 * 8 * 4 + 64 * 16 + 16 * d
    assert model.trainable_parameters() == 2 * per_layer
    assert count_adapted_parameters(resolved) == (model.num_parameters(), model.trainable_parameters())


def test_the_values_train_at_their_own_learning_rate(tiny_bases):
    model = AdaptedModel(section(tiny_bases["llama"], [PRODUCT_KEYS]))
    values = model.memory_adapters["layer1B"].memory.values
    optimizer = torch.optim.AdamW(model.parameter_groups(0.1), lr=1.0)
    set_learning_rates(optimizer, 3e-3)
    (scaled,) = [group for group in optimizer.param_groups if any(p is values for p in group["params"])]
    assert scaled["params"] == [values] and scaled["lr"] == pytest.approx(3e-2) and scaled["weight_decay"] == 0.1
    assert [group["lr"] for group in optimizer.param_groups[:2]] == [3e-3, 3e-3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key_dim": 7}, r"key 'model\.adapters\[0\]': key_dim=7 must be even"),
        ({"top_k": 9}, r"key 'model\.adapters\[0\]': top_k=9 must be at most n_keys=8"),
        ({"n_memory": 9}, r"model\.adapters\[0\]\.n_memory"),
        ({"value_lr_scale": 0}, r"model\.adapters\[0\]\.value_lr_scale"),
    ],
)
def test_bad_keys_are_named(tiny_bases, change, message):
    with pytest.raises(ConfigError, match=message):
        section(tiny_bases["llama"], [{**PRODUCT_KEYS, **change}])


def test_a_bank_and_product_keys_at_one_place_are_refused(tiny_bases):
    bank = {"type": "memory", "layers": [1], "variant": "B", "n_heads": 2, "n_memory": 8}
    with pytest.raises(ConfigError, match="two memory adapters at layer 1, variant B"):
        section(tiny_bases["llama"], [bank, PRODUCT_KEYS])


def test_query_batchnorm_reads_each_token_alone_in_eval_mode():
    memory = ProductKeyMemory(16, n_keys=8, top_k=3, heads=2, key_dim=8, value_dim=4, query_batchnorm=True).double()
    x = torch.randn(3, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    memory.train()
    memory(x)  # one training batch moves the running statistics the eval reads use
    assert not torch.equal(memory.query_norm.running_mean, torch.zeros(16, dtype=torch.float64))
    memory.eval()
    whole = memory(x)
    torch.testing.assert_close(memory(x[1:2, :4]), whole[1:2, :4], rtol=0, atol=1e-12)  # no other row, no later token
