"""Small models and helpers shared by the fused-module tests (test_fused_*.py)."""
import copy

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

import fpnops


def randomize_bn(model, eps=None):
    """Random (never identity) BN statistics and affine parameters, so folding matters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                if eps is not None:
                    m.eps = eps
    return model


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def bottleneck(inplanes=16, planes=8, stride=1, norm_layer=None, downsample=True):
    """torchvision's Bottleneck with a downsample (conv 1x1 + BN; without one, inplanes must be
    planes * 4 and stride 1), random BN statistics, eval."""
    norm = norm_layer or nn.BatchNorm2d
    ds = None
    if downsample:
        ds = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), norm(planes * 4))
    return randomize_bn(Bottleneck(inplanes, planes, stride, ds, norm_layer=norm_layer)).eval()


def basic_block(planes=8, norm_layer=None):
    return randomize_bn(BasicBlock(planes, planes, norm_layer=norm_layer)).eval()


def fused_and_eager(model):
    """(fused, eager): eager is an independent copy of `model`, fused is fpnops.fuse of another."""
    return fpnops.fuse(model), copy.deepcopy(model)


def same_state(fused, eager):
    """Load fused's parameters and buffers into eager (both may have been changed since)."""
    eager.load_state_dict(fused.state_dict())
    return eager


def nonfinite_like(shape, seed, kinds=("nan", "inf", "-inf"), count=3):
    """A random input with `count` of each non-finite kind at random places."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    flat = x.view(-1)
    values = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf")}
    for k in kinds:
        idx = torch.randint(0, flat.numel(), (count,), generator=g)
        flat[idx] = values[k]
    return x


def assert_same_nonfinite(out, ref):
    """Same NaN mask, same +inf and -inf masks, finite values close."""
    assert torch.equal(out.isnan(), ref.isnan()), (out.isnan().sum().item(), ref.isnan().sum().item())
    assert torch.equal(out == float("inf"), ref == float("inf"))
    assert torch.equal(out == -float("inf"), ref == -float("inf"))
    fin = ref.isfinite()
    if fin.any():
        torch.testing.assert_close(out[fin].double(), ref[fin].double(), rtol=1e-4, atol=1e-4)


def fused_conv_count(model):
    """How many of `model`'s convs fpnops.fuse(model) runs fused: all, but for torchvision's
    ResNet classifier, whose stem runs unfused (fpnops/nn/stem.py says why)."""
    import torchvision
    n = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return n - (type(model) is torchvision.models.ResNet)


def count_fused_convs(monkeypatch):
    """A list that gets one entry per conv the CPU float32 fused path runs: the prepacked op
    (1), a last conv summed into its residual in place (fpnops/nn/_chain.py: _sum_into; 1), or a
    3x3 conv as Winograd's ("winograd")."""
    from fpnops.nn import _chain
    calls = []
    real, real_sum = torch.ops.fpnops.conv_bn_act_cpu_prepacked, _chain._sum_into
    real_wino = torch.ops.fpnops.conv3x3_winograd
    monkeypatch.setattr(torch.ops.fpnops, "conv_bn_act_cpu_prepacked",
                        lambda *args: calls.append(1) or real(*args))
    monkeypatch.setattr(torch.ops.fpnops, "conv3x3_winograd",
                        lambda *args: calls.append("winograd") or real_wino(*args))
    monkeypatch.setattr(_chain, "_sum_into", lambda *args: calls.append(1) or real_sum(*args))
    return calls
