"""fpnops::max_abs (CPU): max |x|, NaN-propagating; the fused convolutions' test that no NaN
can reach a oneDNN ReLU post-op."""
import math

import pytest
import torch
from helpers import DTYPES, LAYOUTS, make

import fpnops  # noqa: F401


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 2, 2, 3), (2, 3, 5, 7), (1, 64, 33, 17), (3, 8, 40, 41)])
def test_matches_abs_max(dtype, layout, shape):
    x = make(shape, dtype, "cpu", layout) * 3
    assert torch.ops.fpnops.max_abs(x) == x.abs().max().double().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_anywhere(dtype, bad):
    x = torch.randn(1, 37, 29, 31, dtype=dtype)  # 33263 elements: vector body, tail, two tasks
    for i in (0, 7, 16, 1000, 32767, 32768, x.numel() - 1):
        y = x.clone()
        y.view(-1)[i] = bad
        got = torch.ops.fpnops.max_abs(y)
        assert math.isnan(got) if math.isnan(bad) else got == math.inf, (i, got)
    y = x.clone()
    y.view(-1)[5], y.view(-1)[9000] = float("inf"), float("nan")
    assert math.isnan(torch.ops.fpnops.max_abs(y))


def test_empty_and_errors():
    assert torch.ops.fpnops.max_abs(torch.empty(0, 3)) == 0.0
    with pytest.raises(RuntimeError, match="floating dtype"):
        torch.ops.fpnops.max_abs(torch.ones(3, dtype=torch.int32))
