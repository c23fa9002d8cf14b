"""Selection functions s_B, s_C, s_Δ of Algorithm 2 (rank-R s_Δ of Sec. 3.6)."""

import pytest
import torch

from src.layers.selective_ssm import selection_functions


def test_values_against_explicit_linear_maps():
    torch.manual_seed(0)
    b, d, l, R, N = 2, 5, 7, 2, 3
    x = torch.randn(b, d, l, dtype=torch.float64)
    W_x = torch.randn(R + 2 * N, d, dtype=torch.float64)
    W_delta = torch.randn(d, R, dtype=torch.float64)
    s_delta, B, C = selection_functions(x, W_x, W_delta, N)
    for batch in range(b):
        for t in range(l):
            projected = W_x @ x[batch, :, t]
            torch.testing.assert_close(B[batch, :, t], projected[R : R + N])
            torch.testing.assert_close(C[batch, :, t], projected[R + N :])
            torch.testing.assert_close(s_delta[batch, :, t], W_delta @ projected[:R])


def test_selection_is_per_position():
    # Changing x at one position changes B, C, s_Δ only there: the selection is input-dependent, not mixing.
    torch.manual_seed(1)
    x = torch.randn(1, 4, 6, dtype=torch.float64)
    W_x, W_delta = torch.randn(7, 4, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    before = selection_functions(x, W_x, W_delta, 3)
    x[..., 2] += 1.0
    after = selection_functions(x, W_x, W_delta, 3)
    for old, new in zip(before, after):
        changed = (old != new).any(dim=1)[0]
        assert changed.tolist() == [False, False, True, False, False, False]


def test_wrong_projection_size_is_named():
    with pytest.raises(ValueError, match="W_x must have R \\+ 2N = 9 rows, got 7"):
        selection_functions(torch.randn(1, 4, 3), torch.randn(7, 4), torch.randn(4, 1), 4)
