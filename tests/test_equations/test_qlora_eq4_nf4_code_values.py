"""NF4's 16 values (QLoRA Sec. 3, Eq. (4)): the paper's published table, exact zero, symmetric construction."""

import math
import statistics

import torch

from src.layers.quantization import nf4_code_values

# the NF4 map of the official code (bitsandbytes), the data type QLoRA trains with
PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip


def test_equals_the_published_table():
    torch.testing.assert_close(
        nf4_code_values(torch.float64), torch.tensor(PUBLISHED, dtype=torch.float64), atol=2e-7, rtol=0
    )


def test_each_value_is_a_normal_quantile_from_an_independent_inverse_cdf():
    """Rebuild the positive half with statistics.NormalDist (not torch): Q_X at linspace(δ, 1/2, 9)."""
    offset = 0.5 * ((1 - 1 / 32) + (1 - 1 / 30))
    positions = [offset + (0.5 - offset) * i / 8 for i in range(8)]
    quantiles = [statistics.NormalDist().inv_cdf(p) for p in positions]
    expected = sorted(q / quantiles[0] for q in quantiles)
    got = nf4_code_values(torch.float64)[8:].tolist()
    assert all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(got, expected))


def test_sixteen_sorted_values_with_one_exact_zero_and_eight_positive():
    values = nf4_code_values()
    assert values.numel() == 16 and torch.all(values[1:] > values[:-1])
    assert (values == 0).sum() == 1 and (values > 0).sum() == 8 and values[0] == -1 and values[-1] == 1
