"""Δ-bias initialisation: softplus(bias) is a log-uniform draw in [dt_min, dt_max]."""

import math

import pytest
import torch
import torch.nn.functional as F

from src.layers.selective_ssm import delta_bias_init


def test_softplus_inverts_to_the_drawn_step_sizes():
    bias = delta_bias_init(20000, 1e-3, 1e-1, 1e-4, generator=torch.Generator().manual_seed(0)).double()
    dt = F.softplus(bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    # log Δ_0 is uniform on [log 1e-3, log 1e-1]: mean at the midpoint, variance (range^2) / 12.
    log_dt = dt.log()
    span = math.log(1e-1) - math.log(1e-3)
    assert abs(log_dt.mean().item() - (math.log(1e-3) + span / 2)) < 0.02
    assert abs(log_dt.var().item() - span**2 / 12) < 0.03


def test_floor_clamps_small_steps():
    bias = delta_bias_init(100, 1e-6, 1e-6, 1e-4)
    torch.testing.assert_close(
        F.softplus(bias.double()), torch.full((100,), 1e-4, dtype=torch.float64), rtol=1e-4, atol=0
    )


def test_bad_ranges_are_named():
    with pytest.raises(ValueError, match="dt_max must be >= dt_min"):
        delta_bias_init(4, 0.1, 0.01, 1e-4)
    with pytest.raises(ValueError, match="dt_min must be positive"):
        delta_bias_init(4, 0.0, 0.01, 1e-4)
