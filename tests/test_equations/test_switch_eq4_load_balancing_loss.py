"""Switch load-balancing loss, Eq. (4)-(6): uniform routing gives alpha, one chapter gives the maximum."""

import torch

from src.layers.routing import load_balancing_loss


def test_uniform_routing_gives_alpha():
    N, alpha = 4, 0.01
    probs = torch.full((8, N), 1 / N, dtype=torch.float64)
    chosen = torch.arange(8).remainder(N)[:, None]  # each chapter gets 2 of the 8 tokens
    torch.testing.assert_close(load_balancing_loss(probs, chosen, N, alpha), torch.tensor(alpha, dtype=torch.float64))


def test_everything_in_one_chapter_gives_the_maximum_alpha_n():
    N, alpha = 4, 0.5
    probs = torch.zeros(6, N, dtype=torch.float64)
    probs[:, 2] = 1.0
    chosen = torch.full((6, 1), 2)
    loss = load_balancing_loss(probs, chosen, N, alpha)
    assert loss.item() == alpha * N
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # any other routing of the same items is lower
        p = torch.softmax(torch.randn(6, N, generator=g, dtype=torch.float64), dim=-1)
        assert load_balancing_loss(p, p.argmax(-1, keepdim=True), N, alpha) < loss


def test_hand_worked_top_2():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    chosen = torch.tensor([[0, 1], [1, 2]])
    # f = (1, 2, 1) / 4; P = (0.3, 0.45, 0.25); loss = 1 * 3 * (0.075 + 0.225 + 0.0625) = 1.0875
    torch.testing.assert_close(load_balancing_loss(probs, chosen, 3, 1.0), torch.tensor(1.0875, dtype=torch.float64))


def test_gradient_flows_through_the_probabilities_only():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]], dtype=torch.float64, requires_grad=True)
    loss = load_balancing_loss(probs, torch.tensor([[0], [0]]), 2, 1.0)
    (grad,) = torch.autograd.grad(loss, probs)
    # d/dP_i of N * sum f_i P_i with f = (1, 0): N * f_i / T per item
    torch.testing.assert_close(grad, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
