"""conv_bn_act and fold_conv_bn: every backend against the plain composite, autograd, opcheck,
torch.compile, bad input."""
import pytest
import torch
import torch.nn as nn
from conftest import devices
from helpers import backends_for
from torchvision.ops.misc import FrozenBatchNorm2d

import fpnops
from fpnops.ops.conv_bn_act import conv_bn_act_reference

# Relative error ||out - ref|| / ||ref|| against the float64 composite: the op changes rounding
# (one rounding of conv + bias + residual), never semantics.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
CASES = [  # kernel, stride, padding, dilation, groups
    (1, 1, 0, 1, 1), (1, 2, 0, 1, 1), (3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (7, 2, 3, 1, 1),
    (3, 1, 2, 2, 1), (3, 1, 1, 1, 4)]


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_case(device, dtype, layout, k, s, p, d, g, residual, cin=16, cout=24, hw=(13, 17)):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, cin, *hw, device=device, dtype=dtype).contiguous(memory_format=fmt)
    w = (torch.randn(cout, cin // g, k, k, device=device, dtype=dtype) / (cin * k * k) ** 0.5)
    b = torch.randn(cout, device=device, dtype=dtype)
    out_shape = conv_bn_act_reference(x, w, b, s, p, d, g).shape
    r = torch.randn(out_shape, device=device, dtype=dtype).contiguous(memory_format=fmt) if residual else None
    return x, w, b, r


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{}s{}p{}d{}g{}".format(*c))
def test_matches_composite(device, dtype, layout, case):
    for residual in (False, True):
        x, w, b, r = make_case(device, dtype, layout, *case, residual)
        k, s, p, d, g = case
        for relu in (True, False):
            ref = conv_bn_act_reference(*(t.double() if t is not None else None for t in (x, w, b)),
                                        s, p, d, g, r.double() if r is not None else None, relu)
            eager = conv_bn_act_reference(x, w, b, s, p, d, g, r, relu)
            for backend in backends_for(device):
                out = fpnops.conv_bn_act(x, w, b, stride=s, padding=p, dilation=d, groups=g,
                                         residual=r, relu=relu, backend=backend)
                assert out.shape == eager.shape and out.dtype == dtype
                assert out.stride() == eager.stride(), (backend, out.stride(), eager.stride())
                assert rel_err(out, ref) < TOL[dtype], (backend, relu, residual, rel_err(out, ref))
                if relu:
                    assert (out >= 0).all()


def test_no_bias_and_odd_channels():
    x = torch.randn(1, 5, 9, 8)
    w = torch.randn(7, 5, 3, 3)
    for backend in backends_for("cpu"):
        out = fpnops.conv_bn_act(x, w, None, padding=1, backend=backend)
        assert rel_err(out, conv_bn_act_reference(x, w, None, 1, 1)) < 1e-5


@pytest.mark.parametrize("device", devices())
def test_gradcheck(device):
    for backend in backends_for(device):
        for k, s, p in ((1, 2, 0), (3, 1, 1)):
            x = torch.randn(1, 4, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
            w = torch.randn(5, 4, k, k, dtype=torch.float64, device=device, requires_grad=True)
            b = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)
            out_shape = conv_bn_act_reference(x, w, b, s, p).shape
            r = torch.randn(out_shape, dtype=torch.float64, device=device, requires_grad=True)

            def fn(x, w, b, r):
                return fpnops.conv_bn_act(x, w, b, stride=s, padding=p, residual=r, backend=backend)

            assert torch.autograd.gradcheck(fn, (x, w, b, r)), backend


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    x, w, b, r = make_case(device, torch.float32, "channels_last", 3, 2, 1, 1, 1, True)
    for requires_grad in (False, True):
        args = [t.detach().requires_grad_(requires_grad) for t in (x, w, b, r)]
        torch.library.opcheck(torch.ops.fpnops.conv_bn_act, (args[0], args[1], args[2], [2, 2], [1, 1], [1, 1], 1, args[3], True))
        torch.library.opcheck(torch.ops.fpnops.conv_bn_act, (args[0], args[1], None, [2, 2], [1, 1], [1, 1], 1, None, False))
    if "triton" in backends_for(device):
        x, w, b, r = make_case(device, torch.float32, "channels_last", 1, 2, 0, 1, 1, True)
        torch.library.opcheck(torch.ops.fpnops.conv1x1_bn_act_triton, (x, w, b, [2, 2], r, True))
        torch.library.opcheck(torch.ops.fpnops.conv1x1_bn_act_triton, (x, w, None, [2, 2], None, False))


def test_torch_compile_fullgraph():
    x, w, b, r = make_case("cpu", torch.float32, "contiguous", 3, 1, 1, 1, 1, True)

    def block(x, w, b, r):
        return fpnops.conv_bn_act(x, w, b, padding=1, residual=r) * 2

    torch._dynamo.reset()
    out = torch.compile(block, fullgraph=True)(x, w, b, r)
    assert rel_err(out, block(x, w, b, r)) < 1e-6


# --- fold_conv_bn ------------------------------------------------------------------------------

def random_bn(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("bn_kind", ["batchnorm", "frozen", "frozen_eps0", "no_affine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_fold_conv_bn(conv_bias, bn_kind, dtype):
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=conv_bias)
    if bn_kind == "batchnorm":
        bn = random_bn(nn.BatchNorm2d(8, eps=1e-3))
    elif bn_kind == "no_affine":
        bn = nn.BatchNorm2d(8, affine=False)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    else:
        bn = random_bn(FrozenBatchNorm2d(8, eps=0.0 if bn_kind == "frozen_eps0" else 1e-5))
    conv, bn = conv.to(dtype).eval(), bn.to(dtype).eval()
    w, b = fpnops.fold_conv_bn(conv, bn)
    assert w.dtype == b.dtype == dtype and w.shape == conv.weight.shape and b.shape == (8,)
    x = torch.randn(2, 6, 7, 9, dtype=dtype)
    with torch.no_grad():
        ref = bn.double()(conv.double()(x.double()))
    assert rel_err(nn.functional.conv2d(x.double(), w.double(), b.double(), padding=1), ref) < \
        {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-2}[dtype]


def test_fold_conv_bn_errors():
    conv = nn.Conv2d(3, 4, 1)
    with pytest.raises(ValueError, match="bn has 5 channels but conv has 4 output channels"):
        fpnops.fold_conv_bn(conv, nn.BatchNorm2d(5))
    with pytest.raises(TypeError, match="bn must be nn.BatchNorm2d or .*FrozenBatchNorm2d, got LayerNorm"):
        fpnops.fold_conv_bn(conv, nn.LayerNorm(4))
    with pytest.raises(TypeError, match="conv must be nn.Conv2d, got Linear"):
        fpnops.fold_conv_bn(nn.Linear(3, 4), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="no running statistics"):
        fpnops.fold_conv_bn(conv, nn.BatchNorm2d(4, track_running_stats=False))


# --- bad input ---------------------------------------------------------------------------------

X, W, B = torch.randn(2, 8, 9, 9), torch.randn(4, 8, 3, 3), torch.randn(4)


@pytest.mark.parametrize("args,kwargs,exc,pattern", [
    ((X[0], W, B), {}, ValueError, r"x must be 4-D, got 3-D"),
    ((X, W[0], B), {}, ValueError, r"weight must be 4-D, got 3-D"),
    ((X, torch.randn(4, 6, 3, 3), B), {}, ValueError, r"x has 8 channels, weight \(4, 6, 3, 3\) with groups=1 expects 6"),
    ((X, W, torch.randn(5)), {}, ValueError, r"bias must have shape \(4,\), got \(5,\)"),
    ((X, W.double(), B), {}, TypeError, r"weight must have x's dtype torch.float32, got torch.float64"),
    ((X.int(), W.int(), None), {}, TypeError, r"floating dtype, got x torch.int32"),
    ((X, W, B), {"residual": torch.randn(2, 4, 9, 9)}, ValueError, r"residual must have the output's shape \(2, 4, 7, 7\), got \(2, 4, 9, 9\)"),
    ((X, W, B), {"residual": torch.randn(2, 4, 7, 7).double()}, TypeError, r"residual must have x's dtype"),
    ((X, W, B), {"residual": torch.empty(2, 4, 7, 7, device="meta")}, ValueError, r"residual must be on x's device cpu"),
    ((X, W, B), {"stride": 0}, ValueError, r"stride >= 1"),
    ((X, W, B), {"stride": (1, 2, 3)}, TypeError, r"stride must be an int or a pair of ints"),
    ((X, W, B), {"groups": 3}, ValueError, r"groups=3"),
    ((X, torch.randn(4, 8, 11, 11), B), {}, ValueError, r"smaller than the kernel"),
    ((X, W, B), {"backend": "mkl"}, ValueError, r"backend must be one of"),
])
def test_bad_input(args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fpnops.conv_bn_act(*args, **kwargs)


def test_direct_op_call_is_checked_in_cpp():
    with pytest.raises(RuntimeError, match=r"x has 8 channels"):
        torch.ops.fpnops.conv_bn_act(X, torch.randn(4, 6, 3, 3), B, [1, 1], [0, 0], [1, 1], 1, None, True)
    with pytest.raises(RuntimeError, match=r"residual must have the output's shape"):
        torch.ops.fpnops.conv_bn_act(X, W, B, [1, 1], [0, 0], [1, 1], 1, torch.randn(2, 4, 9, 9), True)
