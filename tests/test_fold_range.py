"""Folding BatchNorm into a conv whose dtype cannot hold the folded values (fpnops/ops/fold.py:
fold_conv_bn_if_it_fits): the fold is computed in float64 and checked against the conv's
dtype. float16 holds at most 65504; a channel with running_mean 300 and running_var + eps
1e-5 folds a bias of about -9.5e4, -inf in float16, while eager, which normalises the conv's
output in float32 and rounds once, stays finite. The fused modules run the unfolded math there,
fuse() leaves such a module alone and says so, and statistics that change after fuse() are
checked again at every fold."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from fused_models import randomize_bn

import fpnops
from fpnops.nn import FusedBasicBlock, FusedConvBNAct
from fpnops.ops.fold import fold_conv_bn, fold_conv_bn_if_it_fits


def _degenerate(bn, channel=1):
    """A channel whose mean is far from 0 and whose variance is tiny: it folds to a bias of
    -mean / sqrt(var + eps) ~ -9.5e4 (with gamma 1). The tiny part is nn.BatchNorm2d's eps,
    1e-5, with var 0: torch 2.11's batch_norm refuses eps 0, even in eval."""
    with torch.no_grad():
        assert bn.eps == 1e-5
        bn.running_mean[channel] = 300.0
        bn.running_var[channel] = 0.0
        bn.weight[channel] = 1.0
        bn.bias[channel] = 0.0
    return bn


def _conv_bn(dtype, degenerate=True):
    """A 1x1 conv whose channel 1 sums its 4 inputs (about 1 each, see _input) to about 300,
    the degenerate BN's mean: eager's (y - 300) * 316 is a few hundred, finite in float16."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6)
    randomize_bn(nn.Sequential(bn))
    with torch.no_grad():
        conv.weight[1] = 75.0
    if degenerate:
        _degenerate(bn)
    return conv.eval().to(dtype), bn.eval().to(dtype)


def _input(dtype, n=2):
    return (1 + 0.01 * torch.randn(n, 4, 7, 9)).to(dtype)


def test_fold_in_float64_checks_the_conv_dtype():
    conv, bn = _conv_bn(torch.float16)
    w, b = fold_conv_bn(conv, bn)
    assert b.dtype == torch.float16 and b.isinf().any()  # what the plain fold makes of it
    assert fold_conv_bn_if_it_fits(conv, bn) is None
    for dtype in (torch.float32, torch.bfloat16, torch.float64):  # wider ranges: it fits
        c, n = _conv_bn(dtype)
        folded = fold_conv_bn_if_it_fits(c, n)
        assert folded is not None
        ref = fold_conv_bn(c, n)
        assert torch.equal(folded[0], ref[0]) and torch.equal(folded[1], ref[1])
    c, n = _conv_bn(torch.float16, degenerate=False)
    assert fold_conv_bn_if_it_fits(c, n) is not None


@pytest.mark.parametrize("when", ["before fuse", "after fuse"])
def test_a_run_whose_fold_overflows_float16_runs_unfolded(when, capsys):
    """Degenerate at fuse() time: left alone, and reported. Degenerate later: the fused module
    runs the modules' own math for it. Either way eager's bits, finite where the folded bias
    (-inf) would have made -inf."""
    conv, bn = _conv_bn(torch.float16, degenerate=when == "before fuse")
    eager = nn.Sequential(conv, bn).eval()
    fused = fpnops.fuse(eager, verbose=True)
    report = capsys.readouterr().out
    if when == "before fuse":
        assert type(fused) is nn.Sequential
        assert ("left alone  (the model itself) (Sequential): folding gives values that "
                "torch.float16 cannot hold (beyond 6.55e+04)") in report
    else:
        assert type(fused) is FusedConvBNAct
        for m in (eager, fused):
            _degenerate(m[1])
    x = _input(torch.float16)
    with torch.no_grad():
        ref, out = eager(x), fused(x)
    assert ref.isfinite().all() and ref[:, 1].abs().max() > 1  # the channel in question
    assert torch.equal(out, ref)


def test_a_fused_block_follows_statistics_into_and_out_of_the_float16_range():
    """A block whose bn2 leaves float16's foldable range after fusing runs its own forward
    (eager's bits) while it is out, and folds again once it is back."""
    torch.manual_seed(0)
    eager = randomize_bn(torchvision.models.resnet.BasicBlock(6, 6)).eval().half()
    fused = FusedBasicBlock.from_module(copy.deepcopy(eager))
    x = torch.randn(2, 6, 7, 9, dtype=torch.float16)
    with torch.no_grad():
        for step in range(3):
            ref, out = eager(x), fused(x)
            if step == 1:
                assert torch.equal(out, ref)  # unfolded: the block's own math
            else:
                assert not torch.equal(out, ref)  # folded: it rounds differently
                torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
            for m in (eager, fused):
                if step == 0:
                    _degenerate(m.bn2, channel=3)  # out of range
                else:
                    m.bn2.running_var.fill_(1.0)  # back in range
