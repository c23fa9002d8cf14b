"""The linear neural memory token by token (Titans Eq. 12-15): a scalar float64 loop, a hand-worked
two-token case, and what the memory is for: it learns to answer k with v."""

import torch

from src.layers.neural_memory import neural_memory_recurrent


def reference(q, k, v, alpha, eta, theta):
    """Eq. (12)-(15) with Python floats for one sequence: (L, d_k), (L, d_v), (L,)."""
    L, d_k = k.shape
    d_v = v.shape[1]
    M = [[0.0] * d_v for _ in range(d_k)]
    S = [[0.0] * d_v for _ in range(d_k)]
    y = []
    for t in range(L):
        kt, vt = k[t].tolist(), v[t].tolist()
        error = [sum(kt[i] * M[i][j] for i in range(d_k)) - vt[j] for j in range(d_v)]  # M_{t-1}(k_t) - v_t
        for i in range(d_k):
            for j in range(d_v):
                grad = 2 * kt[i] * error[j]
                S[i][j] = float(eta[t]) * S[i][j] - float(theta[t]) * grad
                M[i][j] = (1 - float(alpha[t])) * M[i][j] + S[i][j]
        y.append([sum(float(q[t, i]) * M[i][j] for i in range(d_k)) for j in range(d_v)])
    return (
        torch.tensor(y, dtype=torch.float64),
        torch.tensor(M, dtype=torch.float64),
        torch.tensor(S, dtype=torch.float64),
    )


def test_matches_the_scalar_loop():
    g = torch.Generator().manual_seed(0)
    b, L, d_k, d_v = 2, 9, 3, 4
    q, k = (torch.randn(b, L, d_k, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, L, d_v, generator=g, dtype=torch.float64)
    alpha, eta, theta = (torch.rand(b, L, generator=g, dtype=torch.float64) * s for s in (0.3, 1.0, 0.2))
    y, M, S = neural_memory_recurrent(q, k, v, alpha, eta, theta)
    for i in range(b):
        y_ref, M_ref, S_ref = reference(q[i], k[i], v[i], alpha[i], eta[i], theta[i])
        torch.testing.assert_close(y[i], y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(M[i], M_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(S[i], S_ref, rtol=1e-12, atol=1e-12)


def test_hand_worked_two_tokens():
    d = torch.float64
    q = torch.tensor([[[1.0], [2.0]]], dtype=d)
    k = torch.tensor([[[1.0], [1.0]]], dtype=d)
    v = torch.tensor([[[2.0], [1.0]]], dtype=d)
    alpha, eta, theta = (torch.tensor([pair], dtype=d) for pair in ([0.0, 0.5], [0.0, 0.5], [0.5, 0.25]))
    y, M, S = neural_memory_recurrent(q, k, v, alpha, eta, theta)
    # t=1: grad = 2*1*(0 - 2) = -4, S = -0.5 * -4 = 2, M = 2, y = 1 * 2 = 2.
    # t=2: grad = 2*1*(2 - 1) = 2, S = 0.5*2 - 0.25*2 = 0.5, M = 0.5*2 + 0.5 = 1.5, y = 2 * 1.5 = 3.
    assert y.flatten().tolist() == [2.0, 3.0]
    assert M.item() == 1.5 and S.item() == 0.5


def test_memory_trained_on_one_pair_answers_it_better_after_every_step():
    g = torch.Generator().manual_seed(3)
    steps = 12
    k = torch.nn.functional.normalize(torch.randn(1, 1, 5, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(1, 1, 4, generator=g, dtype=torch.float64)
    k_seq, v_seq = k.expand(1, steps, 5), v.expand(1, steps, 4)
    zeros = torch.zeros(1, steps, dtype=torch.float64)
    theta = torch.full((1, steps), 0.1, dtype=torch.float64)
    y, _, _ = neural_memory_recurrent(k_seq, k_seq, v_seq, zeros, zeros, theta)  # query with the key itself
    errors = (y - v).norm(dim=-1)[0]
    assert (errors[1:] < errors[:-1]).all()
    # With ||k|| = 1 each step scales the error by (1 - 2 theta): closed form.
    expected = v.norm() * (1 - 2 * 0.1) ** torch.arange(1, steps + 1, dtype=torch.float64)
    torch.testing.assert_close(errors, expected, rtol=1e-12, atol=1e-12)
