"""Logits of `MambaForCausalLM.save_pretrained` checkpoints, read by PaperModel.from_pretrained (peer check)."""

import pytest
import torch

from src.model import PaperModel

transformers = pytest.importorskip("transformers", reason="extra 'reference' (Hugging Face transformers) not installed")


def saved_hf_mamba(path, safe_serialization: bool, tie: bool = True) -> "transformers.MambaForCausalLM":
    config = transformers.MambaConfig(
        vocab_size=97, hidden_size=48, state_size=8, num_hidden_layers=3, expand=2, conv_kernel=4,
        tie_word_embeddings=tie,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(config).eval()
    with torch.no_grad():  # move every parameter off its init so a misplaced one shows
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    if safe_serialization:
        pytest.importorskip("safetensors", reason="extra 'pretrained' not installed")
    model.save_pretrained(path, safe_serialization=safe_serialization)
    return model


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_logits_match_hugging_face_mamba(tmp_path, safe_serialization):
    reference = saved_hf_mamba(tmp_path, safe_serialization)
    ours = PaperModel.from_pretrained(tmp_path)
    assert ours.num_parameters() == reference.num_parameters()
    ids = torch.randint(0, 97, (2, 61), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(ids).logits
        logits = ours(ids)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_step_continues_a_hugging_face_checkpoint(tmp_path):
    reference = saved_hf_mamba(tmp_path, safe_serialization=False, tie=False)
    ours = PaperModel.from_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    state, logits = None, []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            step_logits, state = ours.step(ids[:, t : t + 1], state)
            logits.append(step_logits)
        expected = reference(ids).logits
    torch.testing.assert_close(torch.cat(logits, dim=1), expected, rtol=1e-4, atol=1e-4)
