"""MambaMixer and S4DMixer: the Fig. 3 block composed from the equation functions; initialisation."""

import torch
import torch.nn.functional as F

from src.layers.selective_ssm import (
    MambaMixer,
    S4DMixer,
    causal_conv1d,
    selection_functions,
    selective_scan_sequential,
)


def test_forward_equals_the_equations_composed_by_hand():
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=8, d_state=4).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    u, z = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    u = F.silu(causal_conv1d(u, mixer.conv1d.weight[:, 0], mixer.conv1d.bias))
    s_delta, B, C = selection_functions(u, mixer.x_proj.weight, mixer.dt_proj.weight, 4)
    y = selective_scan_sequential(
        u, s_delta, -torch.exp(mixer.A_log), B, C, mixer.D, z, mixer.dt_proj.bias, delta_softplus=True
    )
    torch.testing.assert_close(mixer(x), mixer.out_proj(y.transpose(1, 2)), rtol=1e-10, atol=1e-12)


def test_initialisation_follows_the_paper():
    mixer = MambaMixer(d_model=32, d_state=16)
    assert mixer.dt_rank == 2  # ceil(32 / 16)
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 17).repeat(64, 1))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.equal(mixer.D, torch.ones(64))


def test_sequential_scan_option_gives_the_same_block_and_gradients():
    torch.manual_seed(2)
    fast = MambaMixer(d_model=8, d_state=4).double()
    reference = MambaMixer(d_model=8, d_state=4, scan="sequential").double()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    y_fast, y_ref = fast(x), reference(x)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-12)
    g_fast = torch.autograd.grad(y_fast.square().sum(), list(fast.parameters()))
    g_ref = torch.autograd.grad(y_ref.square().sum(), list(reference.parameters()))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_lti_baseline_is_the_time_invariant_recurrence():
    torch.manual_seed(3)
    mixer = S4DMixer(d_model=8, d_state=4).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    u, z = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    u = F.silu(causal_conv1d(u, mixer.conv1d.weight[:, 0], mixer.conv1d.bias))
    delta = F.softplus(mixer.delta_bias)[:, None]  # (d, 1)
    A = -torch.exp(mixer.A_log)
    A_bar, B_bar = torch.exp(delta * A), torch.expm1(delta * A) / A  # ZOH with B = 1
    h = torch.zeros(2, 16, 4, dtype=torch.float64)
    ys = []
    for t in range(9):  # h_t = Ā h_{t-1} + B̄ x_t, y_t = C h_t + D x_t, gated by SiLU(z)
        h = A_bar * h + B_bar * u[..., t, None]
        ys.append(((h * mixer.C).sum(-1) + mixer.D * u[..., t]) * F.silu(z[..., t]))
    expected = mixer.out_proj(torch.stack(ys, dim=-1).transpose(1, 2))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-12)
