"""Block checkpointing and the chunked cross-entropy change memory, not values or gradients."""

import torch
import torch.nn.functional as F

from src.model import PaperModel
from src.tasks import IGNORE
from src.training import chunked_cross_entropy
from tests.conftest import ROOT


def test_checkpointed_loss_and_gradients_equal_the_plain_ones():
    torch.manual_seed(0)
    model = PaperModel.from_config(ROOT / "configs" / "mamba_tiny.yaml").double()
    ids = torch.randint(64, (2, 17))
    targets = torch.randint(64, (2, 17))
    targets[0, :5] = IGNORE

    plain = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    hidden = model.hidden_states(ids, checkpoint_blocks=True)
    chunked = chunked_cross_entropy(hidden, model.head, targets, chunk_tokens=5)
    chunked_grads = torch.autograd.grad(chunked, list(model.parameters()))

    torch.testing.assert_close(chunked, plain, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
