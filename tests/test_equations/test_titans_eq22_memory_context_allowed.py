"""MAC's causal mask over [persistent || h_t || S^(t)] (Titans Sec. 4.1, Eq. (22)-(23)): literal loop, hand case."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from src.layers.titans import memory_context_allowed


def _loop(n_persistent, length, n_queries):
    allowed = torch.zeros(n_queries, n_persistent + 2 * length, dtype=torch.bool)
    for i in range(n_queries):
        m = length - n_queries + i  # the query's index in the segment
        for j in range(n_persistent + 2 * length):
            if j < n_persistent:
                allowed[i, j] = True
            elif j < n_persistent + length:
                allowed[i, j] = j - n_persistent <= m
            else:
                allowed[i, j] = j - n_persistent - length <= m
    return allowed


def test_hand_worked_case():
    # N_p = 1, two segment tokens so far, both asking: token 0 sees p, h_0, s_0; token 1 sees everything
    assert memory_context_allowed(1, 2, 2).int().tolist() == [[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]]
    # the second token alone (the first is cached)
    assert memory_context_allowed(1, 2, 1).int().tolist() == [[1, 1, 1, 1, 1]]


@given(st.integers(0, 4), st.integers(1, 9), st.data())
def test_equals_a_literal_loop(n_persistent, length, data):
    n_queries = data.draw(st.integers(1, length))
    assert torch.equal(memory_context_allowed(n_persistent, length, n_queries), _loop(n_persistent, length, n_queries))


@pytest.mark.parametrize(
    ("arguments", "message"), [((0, 0, 1), "1 <= n_queries <= length"), ((2, 3, 4), "got 2, 4, 3")]
)
def test_bad_sizes_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        memory_context_allowed(*arguments)
