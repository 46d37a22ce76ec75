"""Seeded fuzz of FusedBottleneck / FusedBasicBlock against a float64 eager reference: random
torchvision block configurations (stride, downsample, width, groups, dilation where torchvision
allows them), random BN statistics and eps, nn.BatchNorm2d (affine or not) and
FrozenBatchNorm2d, float32 (a few bfloat16 and float64), NCHW and channels_last inputs of odd
sizes, no_grad and autograd; then NaN/+inf/-inf injected: NaN and inf masks equal eager's."""
import copy
import functools
import random

import pytest
import torch
import torch.nn as nn
from fused_models import assert_same_nonfinite, nonfinite_like
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

import fpnops
from fpnops.nn import FusedBasicBlock, FusedBottleneck

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float64: 1e-12}


def _batch_norm_takes_eps_0():
    """torch 2.11's F.batch_norm refuses eps 0 (ValueError), even in eval; later versions only
    in training."""
    try:
        torch.nn.functional.batch_norm(torch.ones(1, 1), torch.zeros(1), torch.ones(1), eps=0.0)
    except ValueError:
        return False
    return True


BN_EPS_0 = _batch_norm_takes_eps_0()


def _norm(rng):
    kind = rng.choice(["bn", "bn", "bn_no_affine", "frozen"])
    eps = rng.choice([0.0, 1e-5, 1e-3, 0.1])
    if eps == 0.0 and kind != "frozen" and not BN_EPS_0:
        eps = 1e-12  # all but 0 next to var >= 0.05 (FrozenBatchNorm2d keeps eps 0 everywhere)
    if kind == "frozen":
        return functools.partial(FrozenBatchNorm2d, eps=eps), kind
    return functools.partial(nn.BatchNorm2d, eps=eps, affine=kind == "bn"), kind


def _randomize(model, rng):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.05)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) * 1.5 - 0.25)  # some negative
                    m.bias.copy_(torch.rand(c, generator=g) - 0.5)
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
    return model


def make_block(seed):
    """(block, description, input shape) for `seed`: a torchvision Bottleneck or BasicBlock."""
    rng = random.Random(seed)
    norm, norm_kind = _norm(rng)
    stride = rng.choice([1, 2])
    if rng.random() < 0.6:
        planes, groups = rng.choice([4, 8]), rng.choice([1, 2, 4])
        base_width = rng.choice([16, 32, 64])
        dilation = rng.choice([1, 1, 2])
        inplanes = rng.choice([planes * 4, 8, 12])
        kw = dict(groups=groups, base_width=base_width, dilation=dilation)
        cls, out = Bottleneck, planes * 4
    else:
        planes, inplanes, kw, cls = rng.choice([4, 8, 12]), rng.choice([4, 8, 12]), {}, BasicBlock
        out = planes
    downsample = None
    if stride != 1 or inplanes != out or rng.random() < 0.3:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), norm(out))
    block = cls(inplanes, planes, stride, downsample, norm_layer=norm, **kw)
    block = _randomize(block, rng).eval()
    shape = (rng.choice([1, 2]), inplanes, rng.randrange(5, 18), rng.randrange(5, 18))
    desc = f"{cls.__name__}(in={inplanes}, planes={planes}, stride={stride}, {kw}, {norm_kind}, " \
           f"downsample={downsample is not None}) x{shape}"
    return block, desc, shape, rng


def _layout(x, rng):
    return x.contiguous(memory_format=torch.channels_last) if rng.random() < 0.5 else x


def _dtype(seed):
    return {3: torch.bfloat16, 7: torch.float64, 11: torch.bfloat16, 13: torch.float64}.get(seed % 17, torch.float32)


@pytest.mark.parametrize("seed", range(48))
def test_fused_block_matches_float64_eager(seed):
    block, desc, shape, rng = make_block(seed)
    dtype = _dtype(seed)
    ref64 = copy.deepcopy(block).double()
    fused = fpnops.fuse(block).to(dtype)
    assert isinstance(fused, (FusedBottleneck, FusedBasicBlock)), desc
    x = _layout(torch.randn(shape), rng)
    autograd = seed % 3 == 0
    frozen = autograd and seed % 2 == 0  # parameters frozen: autograd through the cache
    if frozen:
        fused.requires_grad_(False)
    xin = x.to(dtype).detach().requires_grad_(autograd)
    with torch.set_grad_enabled(autograd):
        out = fused(xin)
        ref = ref64(x.double().requires_grad_(autograd))
    assert out.dtype == dtype and out.shape == ref.shape, desc
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < TOL[dtype], (desc, dtype, err)
    if autograd:
        g = torch.randn(ref.shape, dtype=torch.float64)
        gx = torch.autograd.grad(out, xin, g.to(dtype))[0]
        x64 = x.double().requires_grad_()
        gref = torch.autograd.grad(ref64(x64), x64, g)[0]
        gerr = ((gx.double() - gref).norm() / gref.norm()).item()
        assert gerr < max(TOL[dtype] * 10, 1e-12), (desc, "grad", gerr)


def _nonfinite_case(seed, autograd):
    block, desc, shape, rng = make_block(1000 + seed)
    dtype = torch.float64 if seed % 5 == 4 else torch.float32
    block = block.to(dtype)
    fused = fpnops.fuse(block)
    kinds = [("nan",), ("inf",), ("-inf",), ("nan", "inf", "-inf")][seed % 4]
    x = _layout(nonfinite_like(shape, seed, kinds=kinds, count=2), rng).to(dtype)
    with torch.set_grad_enabled(autograd):
        with torch.no_grad():
            fused(torch.randn(shape, dtype=dtype))  # the cache filled on a finite input
        out = fused(x.clone().requires_grad_(autograd))
        ref = block(x.clone().requires_grad_(autograd))
    assert_same_nonfinite(out.detach(), ref.detach())
    return desc


@pytest.mark.parametrize("seed", range(24))
def test_nonfinite_inputs_no_grad(seed):
    _nonfinite_case(seed, autograd=False)


@pytest.mark.parametrize("seed", range(8))
def test_nonfinite_inputs_autograd(seed):
    _nonfinite_case(seed, autograd=True)
