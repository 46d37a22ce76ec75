"""conv_bn_act and fold_conv_bn: every backend against the plain composite, autograd, opcheck,
torch.compile; regressions (integer-likes, Triton routing, NaN/Inf, autocast). Bad input:
test_conv_bn_act_errors.py; random cases with NaN/Inf: test_conv_bn_act_fuzz.py."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
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


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("formats", ["nchw/nchw", "nchw/nhwc", "nhwc/nchw", "nhwc/nhwc"])
def test_output_layout_is_eagers(device, dtype, formats):
    """Every backend returns the layout eager's convolution returns on that device (CPU and
    cuDNN: channels_last where x or the weight is), and its fake kernel predicts it, so a
    channels_last model fed an NCHW image gets channels_last maps without copies."""
    fx, fw = (torch.channels_last if f == "nhwc" else torch.contiguous_format for f in formats.split("/"))
    for k in (1, 3):
        x = torch.randn(2, 8, 7, 9, dtype=dtype, device=device).contiguous(memory_format=fx)
        w = torch.randn(6, 8, k, k, dtype=dtype, device=device).contiguous(memory_format=fw)
        b, r = torch.randn(6, dtype=dtype, device=device), torch.randn(2, 6, 7, 9, dtype=dtype, device=device)
        want = F.conv2d(x, w, b, padding=k // 2).stride()
        for backend in backends_for(device):
            if backend == "triton" and k != 1:
                continue  # the Triton kernel is 1x1 only; 3x3 goes to another backend
            out = fpnops.conv_bn_act(x, w, b, padding=k // 2, residual=r, backend=backend)
            assert out.stride() == want, (backend, k, out.stride(), want)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = torch.ops.fpnops.conv_bn_act(mode.from_tensor(x), mode.from_tensor(w), mode.from_tensor(b),
                                                [1, 1], [k // 2] * 2, [1, 1], 1, mode.from_tensor(r), True)
        assert fake.stride() == want, (k, fake.stride(), want)


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


# --- regressions ------------------------------------------------------------------------------

def test_integer_likes_are_ints():
    """stride/padding/dilation/groups take numpy ints, 0-d integer tensors and pairs of them."""
    x, w, b = torch.randn(1, 4, 9, 8), torch.randn(6, 2, 3, 3), torch.randn(6)
    ref = conv_bn_act_reference(x, w, b, (2, 1), (1, 2), (1, 2), 2)
    for backend in backends_for("cpu"):
        for kwargs in ({"stride": (np.int64(2), 1), "padding": (1, np.int32(2)),
                        "dilation": np.array([1, 2]), "groups": np.int64(2)},
                       {"stride": torch.tensor([2, 1]), "padding": [torch.tensor(1), 2],
                        "dilation": (1, 2), "groups": torch.tensor(2)}):
            out = fpnops.conv_bn_act(x, w, b, backend=backend, **kwargs)
            assert rel_err(out, ref) < 1e-5, (backend, kwargs)


@pytest.mark.skipif("triton" not in backends_for("cpu"), reason="needs Triton's interpreter")
def test_triton_routes_what_it_cannot_compute(monkeypatch):
    """The Triton kernel computes 1x1 convs without padding or groups; others go to native with
    the right answer (it used to ignore padding: 5x5 instead of 7x7)."""
    calls = []
    real = torch.ops.fpnops.conv1x1_bn_act_triton
    monkeypatch.setattr(torch.ops.fpnops, "conv1x1_bn_act_triton",
                        lambda *a: calls.append(1) or real(*a))
    x, b = torch.randn(1, 4, 5, 5), torch.randn(8)
    for w, kwargs, shape, triton in [
            (torch.randn(8, 4, 1, 1), {"padding": 1}, (1, 8, 7, 7), False),
            (torch.randn(8, 4, 1, 1), {"padding": (0, 2)}, (1, 8, 5, 9), False),
            (torch.randn(8, 2, 1, 1), {"groups": 2}, (1, 8, 5, 5), False),
            (torch.randn(8, 4, 3, 3), {}, (1, 8, 3, 3), False),
            (torch.randn(8, 4, 1, 1), {"stride": 2, "dilation": 3}, (1, 8, 3, 3), True),
            (torch.randn(8, 4, 1, 1), {}, (1, 8, 5, 5), True)]:
        r = torch.randn(shape)
        calls.clear()
        out = fpnops.conv_bn_act(x, w, b, residual=r, backend="triton", **kwargs)
        assert out.shape == shape and bool(calls) == triton, (kwargs, out.shape, calls)
        assert rel_err(out, conv_bn_act_reference(x, w, b, residual=r, **kwargs)) < 1e-5, kwargs


def eager_masks(x, w, b, r, relu, **kwargs):
    """Eager's NaN, +inf and -inf masks, eager in the inputs' own dtype on this machine (its
    half-precision convolutions, and where they spread NaN, depend on the CPU's instructions)."""
    ref = conv_bn_act_reference(x, w, b, residual=r, relu=relu, **kwargs)
    return ref.isnan(), ref.isposinf(), ref.isneginf()


NUMPY_NAN_WARNINGS = pytest.mark.filterwarnings(  # Triton's interpreter computes in numpy
    "ignore:(invalid value|overflow) encountered:RuntimeWarning")


@NUMPY_NAN_WARNINGS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("cin,cout", [(5, 6), (24, 6)], ids=["widening", "narrowing"])
def test_nan_and_inf_propagate_as_in_eager(dtype, k, cin, cout):
    """relu(NaN) = NaN, relu(inf) = inf, relu(-inf) = 0 on every backend (native and Triton used
    to turn NaN into 0: oneDNN's ReLU post-op and tl.maximum drop it). On the CPU a narrowing
    conv takes the other exact way (no post-op, our ReLU over its smaller output)."""
    nan, inf = float("nan"), float("inf")
    x = torch.randn(2, cin, 9, 11, dtype=dtype)
    x[0, 1, 4, 4], x[1, 2, 0, 7], x[1, 4, 8, 1] = nan, inf, -inf
    w = torch.randn(cout, cin, k, k, dtype=dtype) / (cin * k * k) ** 0.5
    b = torch.randn(cout, dtype=dtype)
    b_bad = b.clone()
    b_bad[1], b_bad[3], b_bad[4] = nan, inf, -inf
    r = torch.randn(2, cout, 9, 11, dtype=dtype)
    r[0, 0, 1, 1], r[1, 5, 2, 2], r[0, 3, 7, 9] = nan, inf, -inf
    for fmt in (torch.contiguous_format, torch.channels_last):
        for xx, bb, rr in ((x, b, None), (x, b, r), (x.nan_to_num(0, 0, 0), b_bad, None),
                           (x.nan_to_num(0, 0, 0), b, r)):
            xx = xx.contiguous(memory_format=fmt)
            for relu in (True, False):
                want = eager_masks(xx, w, bb, rr, relu, padding=k // 2)
                assert want[0].any()
                for backend in backends_for("cpu"):
                    out = fpnops.conv_bn_act(xx, w, bb, padding=k // 2, residual=rr, relu=relu,
                                             backend=backend)
                    got = (out.isnan(), out.isposinf(), out.isneginf())
                    for name, g, e in zip(("nan", "+inf", "-inf"), got, want):
                        assert torch.equal(g, e), (backend, relu, rr is not None, name,
                                                   g.sum().item(), e.sum().item())


@NUMPY_NAN_WARNINGS
def test_relu_of_a_negative_is_plus_zero():
    """As eager: relu(negative) = +0.0 (not -0.0) on every backend and path (fused post-op,
    and our epilogue where a NaN forces it)."""
    x, w, b = torch.randn(1, 4, 6, 7), torch.randn(8, 4, 1, 1), torch.randn(8)
    x_nan = x.clone()
    x_nan[0, 0, 0, 0] = float("nan")
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for xx in (x, x_nan):
            for backend in backends_for("cpu"):
                out = fpnops.conv_bn_act(xx.to(dtype), w.to(dtype), b.to(dtype), backend=backend)
                zeros = out == 0
                assert zeros.sum() > 10 and not out[zeros].signbit().any(), (dtype, backend)


@NUMPY_NAN_WARNINGS
def test_huge_finite_inputs():
    """Inputs whose bound reaches past 1e30 skip oneDNN's fused ReLU; the answer is eager's,
    inf where the convolution overflows."""
    x = torch.randn(1, 3, 6, 5) * 1e18
    w = torch.randn(4, 3, 3, 3) * 1e15
    b = torch.randn(4)
    for backend in backends_for("cpu"):
        out = fpnops.conv_bn_act(x, w, b, padding=1, backend=backend)
        assert rel_err(out, conv_bn_act_reference(x.double(), w.double(), b.double(), 1, 1)) < 1e-5
    x = torch.full((1, 2, 3, 3), 3e38)
    w = torch.ones(2, 2, 1, 1)
    w[1] = -1
    for backend in backends_for("cpu"):
        out = fpnops.conv_bn_act(x, w, None, backend=backend)
        assert out[0, 0].isposinf().all() and (out[0, 1] == 0).all(), backend


def test_autocast_cpu():
    """Under CPU autocast conv_bn_act computes as F.conv2d does there: in bfloat16 (it returned
    float32). float64 tensors are left alone, as autocast does."""
    x, w, b = torch.randn(2, 4, 9, 9), torch.randn(8, 4, 3, 3), torch.randn(8)
    r = torch.randn(2, 8, 9, 9)
    for backend in backends_for("cpu"):
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                eager = F.conv2d(x, w, b, padding=1)
                out = fpnops.conv_bn_act(x, w, b, padding=1, residual=r, backend=backend)
                out64 = fpnops.conv_bn_act(x.double(), w.double(), b.double(), padding=1,
                                           backend=backend)
            assert eager.dtype == out.dtype == dtype and out64.dtype == torch.float64
            want = fpnops.conv_bn_act(x.to(dtype), w.to(dtype), b.to(dtype), padding=1,
                                      residual=r.to(dtype), backend=backend)
            assert torch.equal(out, want), backend
        xg = x.clone().requires_grad_()
        with torch.autocast("cpu"):
            out = fpnops.conv_bn_act(xg, w, b, padding=1, backend=backend)
        out.float().sum().backward()
        assert xg.grad.dtype == torch.float32 and xg.grad.abs().sum() > 0


def test_autocast_under_compile():
    x, w, b = torch.randn(1, 4, 7, 7), torch.randn(8, 4, 3, 3), torch.randn(8)

    def fn(x, w, b):
        with torch.autocast("cpu"):
            return fpnops.conv_bn_act(x, w, b, padding=1)

    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True)(x, w, b)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, fn(x, w, b)) < 1e-2


def test_nan_anywhere_in_a_large_weight():
    """The weight's bound is a parallel reduction over output channels: a NaN in any of them
    (first, middle, last chunk) must keep oneDNN's ReLU post-op off."""
    x = torch.randn(1, 64, 5, 6).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 64, 3, 3) / 24
    for co in (0, 300, 511):
        for fmt in (torch.contiguous_format, torch.channels_last):
            wn = w.clone()
            wn[co, 17, 1, 1] = float("nan")  # the centre tap: never over the padding
            wn = wn.contiguous(memory_format=fmt)
            out = fpnops.conv_bn_act(x, wn, None, padding=1, backend="native")
            assert out[:, co].isnan().all() and not out[:, :co].isnan().any(), (co, fmt)
            assert not out[:, co + 1:].isnan().any()
