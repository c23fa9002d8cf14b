"""GNMT length penalty lp(Y), Sec. 7: values against the closed form and a hand-worked case, and the
properties the paper states (lp = 1 for alpha = 0; longer hypotheses are divided by more)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from src.generation_scoring import length_penalty


def test_matches_closed_form_per_length():
    for alpha in (0.0, 0.2, 0.6, 1.0, 2.0):
        for length in range(1, 40):
            expected = (5 + length) ** alpha / (5 + 1) ** alpha
            got = length_penalty(torch.tensor(float(length), dtype=torch.float64), alpha)
            assert abs(got.item() - expected) <= 1e-12 * expected


def test_hand_worked_values():
    # |Y| = 7, alpha = 1: (5 + 7) / 6 = 2; |Y| = 1: 6 / 6 = 1 for any alpha; alpha = 0.5, |Y| = 19: sqrt(24 / 6) = 2.
    torch.testing.assert_close(length_penalty(torch.tensor([7.0, 1.0]), 1.0), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(length_penalty(torch.tensor([1.0]), 3.7), torch.tensor([1.0]))
    torch.testing.assert_close(length_penalty(torch.tensor([19.0]), 0.5), torch.tensor([2.0]))


@given(length=st.integers(1, 10_000), alpha=st.floats(0.01, 3))
def test_alpha_zero_is_plain_log_probability_and_penalty_grows_with_length(length, alpha):
    lengths = torch.tensor([float(length), float(length + 1)], dtype=torch.float64)
    assert torch.equal(length_penalty(lengths, 0.0), torch.ones(2, dtype=torch.float64))
    lp = length_penalty(lengths, alpha)
    assert 1 <= lp[0] < lp[1]


def test_normalisation_lets_a_longer_hypothesis_win():
    # log P = -3 over 2 tokens vs -4 over 10 tokens: without normalisation the short one wins; with
    # alpha = 1, s = -3 / (7/6) = -2.571 vs -4 / (15/6) = -1.6, and the long one wins.
    log_p = torch.tensor([-3.0, -4.0], dtype=torch.float64)
    lengths = torch.tensor([2.0, 10.0], dtype=torch.float64)
    assert (log_p / length_penalty(lengths, 0.0)).argmax() == 0
    assert (log_p / length_penalty(lengths, 1.0)).argmax() == 1


@pytest.mark.parametrize(
    ("lengths", "alpha", "message"),
    [
        (torch.tensor([0.0]), 0.6, "lengths must be >= 1"),
        (torch.tensor([2.0]), -0.1, "alpha must be >= 0"),
        (torch.tensor([2]), 0.6, "lengths must be a floating-point tensor"),
    ],
)
def test_bad_arguments_are_named(lengths, alpha, message):
    with pytest.raises((ValueError, TypeError), match=message):
        length_penalty(lengths, alpha)
