"""The equation battery: every catalogued equation function, from the inputs registered for it in
tests/test_equations/battery_inputs.py, gives finite outputs at inputs scaled by 1e3 and 1e-6 (or
names its domain limit there), the same outputs twice, each batch row's outputs alone, and finite
gradients. One test id per function and property; a catalogued function without inputs fails."""

import pytest
import torch

from src.catalogue import equation_functions
from tests.test_equations.battery_inputs import BATCH, INPUTS, random_numbers

FUNCTIONS = {function.__name__: function for function in equation_functions()}
SCALES = (1e3, 1e-6)


def tensors(tree) -> list[torch.Tensor]:
    """The tensors of a function's output (tuples and dicts walked)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for item in tree for t in tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in tensors(item)]
    return []


def call(name: str, scale: float = 1.0, rows: slice | None = None, grad: bool = False):
    """(output, float inputs) of function `name` on its registered inputs (batch rows `rows` only)."""
    spec = INPUTS[name]
    args, kwargs = spec.make(scale, random_numbers())
    if rows is not None:

        def cut(value):  # a batched tensor, or a dict of them (a memory's weights)
            return value[rows] if isinstance(value, torch.Tensor) else {k: v[rows] for k, v in value.items()}

        args = tuple(cut(a) if i in spec.batched else a for i, a in enumerate(args))
        kwargs = {k: cut(v) if k in spec.batched else v for k, v in kwargs.items()}
    leaves = [t for t in tensors([args, kwargs]) if t.is_floating_point()]
    for leaf in leaves if grad else ():
        leaf.requires_grad_(True)
    return FUNCTIONS[name](*args, **kwargs), leaves


def test_every_catalogued_function_has_inputs():
    assert sorted(set(FUNCTIONS) - set(INPUTS)) == [] and sorted(set(INPUTS) - set(FUNCTIONS)) == []


@pytest.mark.parametrize("scale", SCALES, ids=["x1e3", "x1e-6"])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_finite_at_scaled_inputs(name, scale):
    if limit := INPUTS[name].limits.get(scale):
        pytest.skip(f"domain limit: {limit}")
    with torch.no_grad():
        output, _ = call(name, scale)
    assert all(t.isfinite().all() for t in tensors(output) if t.is_floating_point())


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_deterministic(name):
    with torch.no_grad():
        first, second = call(name)[0], call(name)[0]
    assert all(torch.equal(a, b) for a, b in zip(tensors(first), tensors(second), strict=True))


BATCHED = sorted(name for name in FUNCTIONS if INPUTS[name].batched)


@pytest.mark.parametrize("name", BATCHED)
def test_batch_rows_are_independent(name):
    with torch.no_grad():
        whole = tensors(call(name)[0])
        for row in range(BATCH):
            alone = tensors(call(name, rows=slice(row, row + 1))[0])
            for full, single in zip(whole, alone, strict=True):
                expected = full[row : row + 1] if full.dim() and full.shape[0] == BATCH else full
                torch.testing.assert_close(single, expected, rtol=1e-10, atol=1e-12)


DIFFERENTIABLE = sorted(name for name in FUNCTIONS if INPUTS[name].differentiable)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_finite_gradients(name):
    output, leaves = call(name, grad=True)
    total = sum(t.sum() for t in tensors(output) if t.is_floating_point() and t.requires_grad)
    total.backward()
    assert any(leaf.grad is not None for leaf in leaves)
    assert all(leaf.grad.isfinite().all() for leaf in leaves if leaf.grad is not None)
