"""Fused ResNet modules behave exactly like the modules they replace, at run time: NaN and inf
as eager (the NaN test before oneDNN's ReLU), modules _exact rejects never folded, the original
class's own forward where the fused path cannot stand in, requested outputs kept, autocast."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from fused_models import (assert_same_nonfinite, basic_block, bottleneck, count_fused_convs,
                          nonfinite_like, randomize_bn)
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck

import fpnops
from fpnops.nn import FusedBasicBlock, FusedBottleneck, FusedConvBNAct
from fpnops.reference import resnet as ref_resnet


@pytest.fixture
def prepacked(monkeypatch):
    """Counts the convs the CPU float32 prepacked fused path runs."""
    return count_fused_convs(monkeypatch)


def _resnet10():
    model = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
    model.layer3, model.layer4, model.fc = nn.Identity(), nn.Identity(), nn.Linear(128, 10)
    return randomize_bn(model).eval()


MODELS = {
    "bottleneck": (bottleneck, (2, 16, 9, 11)),
    "bottleneck_stride2": (lambda: bottleneck(stride=2), (2, 16, 9, 11)),
    "bottleneck_identity": (lambda: bottleneck(inplanes=32, downsample=False), (2, 32, 9, 11)),
    "basic": (basic_block, (2, 8, 9, 11)),
    "sequential": (lambda: randomize_bn(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                                                      nn.ReLU())).eval(), (2, 8, 9, 11)),
    "resnet10": (_resnet10, (1, 3, 35, 37)),
}


# --- NaN and inf -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in MODELS if n != "bottleneck_identity"])
@pytest.mark.parametrize("kinds", [("nan",), ("inf",), ("-inf",), ("nan", "inf", "-inf")], ids="+".join)
def test_nonfinite_inputs_as_eager_no_grad(name, kinds, prepacked):
    """CPU float32 inference: a NaN or inf input fails the NaN test and runs the original math,
    so the output is eager's exactly (oneDNN's ReLU post-op would turn NaN into 0)."""
    ctor, shape = MODELS[name]
    eager = ctor()
    fused = fpnops.fuse(eager)
    x = nonfinite_like(shape, seed=len(name) + len(kinds), kinds=kinds)
    with torch.no_grad():
        fused(torch.randn(shape))  # the fast path ran, the cache is filled
        assert prepacked
        out, ref = fused(x), eager(x)
    assert torch.equal(out.isnan(), ref.isnan()) and (not ("nan" in kinds) or ref.isnan().any())
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)  # it ran eager's math


@pytest.mark.parametrize("name", ["bottleneck", "basic", "sequential"])
def test_nonfinite_inputs_as_eager_autograd(name):
    ctor, shape = MODELS[name]
    eager = ctor()
    fused = fpnops.fuse(eager)
    x = nonfinite_like(shape, seed=7)
    assert_same_nonfinite(fused(x.clone().requires_grad_()), eager(x.clone().requires_grad_()))


@pytest.mark.parametrize("name", ["bottleneck_identity", "sequential", "bottleneck"])
def test_overflow_from_finite_inputs_runs_the_original_math(name, prepacked):
    """Finite inputs whose bound passes SAFE_BOUND (huge inputs, a BN scaling by 1e15): a value
    that may overflow to inf (and inf - inf to NaN) is computed as eager computes it. (With a
    downsample, the block's source forward calls it, a FusedConvBNAct that passes its own
    test: same NaN and inf, not the same bits.)"""
    ctor, shape = MODELS[name]
    eager = ctor()
    for bn in [m for m in eager.modules() if isinstance(m, nn.BatchNorm2d)][:1]:
        bn.running_var.fill_(0.0)
        bn.eps = 1e-30  # var + eps: a scale of 1e15 (torch 2.11's batch_norm refuses eps 0)
    fused = fpnops.fuse(eager)
    with torch.no_grad():
        for scale, finite in ((1e36, None), (1e25, False)):
            x = torch.randn(shape) * scale
            prepacked.clear()
            out, ref = fused(x), eager(x)
            assert finite is None or ref.isfinite().all().item() == finite
            if name == "bottleneck":
                assert len(prepacked) <= 1  # the downsample's own
                assert_same_nonfinite(out, ref)
            else:
                assert not prepacked
                torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
        x = torch.randn(shape) * 1e5  # bound ~1e21: the fast path, and right
        out, ref = fused(x), eager(x)
        assert prepacked and ((out - ref).norm() / ref.norm()).item() < 1e-5


def test_finite_inputs_take_the_fast_path(prepacked):
    ctor, shape = MODELS["bottleneck"]
    eager = ctor()
    fused = fpnops.fuse(eager)
    with torch.no_grad():
        x = torch.randn(shape) * 1e4
        out, ref = fused(x), eager(x)
    assert len(prepacked) == 4  # conv1..3 and the downsample
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


# --- modules _exact rejects, and the source's own forward ----------------------------------------

class WSConv2d(nn.Conv2d):
    """Weight standardisation: a Conv2d subclass with its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ClippedReLU(nn.ReLU):
    def forward(self, x):
        return x.clamp(0.1, 2.0)


def _seq(*mods):
    return randomize_bn(nn.Sequential(*mods)).eval()


REJECTED = {
    "conv subclass": lambda: _seq(WSConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
    "reflect padding": lambda: _seq(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                                    nn.BatchNorm2d(8), nn.ReLU()),
    "same, asymmetric": lambda: _seq(nn.Conv2d(8, 8, 4, padding="same"), nn.BatchNorm2d(8), nn.ReLU()),
    "GroupNorm": lambda: _seq(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU()),
    "Identity": lambda: _seq(nn.Conv2d(8, 8, 3, padding=1), nn.Identity(), nn.ReLU()),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_rejected_modules_are_never_folded(name, prepacked):
    seq = REJECTED[name]()
    fused = FusedConvBNAct.from_module(seq)
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        out, ref = fused(x), seq(x)
    assert not prepacked
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_relu_subclass_runs_itself_and_same_padding_folds(prepacked):
    seq = _seq(nn.Conv2d(8, 8, 3, padding="same", dilation=2), nn.BatchNorm2d(8), ClippedReLU())
    fused = FusedConvBNAct.from_module(seq)
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        out, ref = fused(x), seq(x)
    assert len(prepacked) == 1  # conv + BN folded, the ReLU subclass ran as itself
    assert out.min().item() >= 0.1 and ((out - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("attr,new", [
    ("conv2", lambda b: WSConv2d(8, 8, 3, padding=1, bias=False)),
    ("bn1", lambda b: nn.GroupNorm(2, 8)),
    ("relu", lambda b: ClippedReLU()),
])
def test_block_runs_its_source_forward_where_a_module_is_rejected(attr, new, prepacked):
    """A module replaced after fusing by one _exact rejects: the block runs its source class's
    own forward (torchvision's Bottleneck here), exactly."""
    eager = bottleneck(inplanes=32, downsample=False)
    fused = fpnops.fuse(eager)
    replacement = new(eager)
    setattr(eager, attr, replacement)
    setattr(fused, attr, copy.deepcopy(replacement))
    x = torch.randn(2, 32, 9, 11)
    with torch.no_grad():
        out, ref = fused(x), eager(x)
    assert len(prepacked) == 0
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_source_forward_is_the_source_class_own():
    """The original math is the source class's forward: torchvision's BasicBlock adds in place
    (out += identity), the reference one does not; each fused block calls its own."""
    tv = fpnops.fuse(basic_block())
    ref = FusedBasicBlock.from_module(randomize_bn(ref_resnet.BasicBlock(8, 8)).eval())
    assert tv._source is torchvision.models.resnet.BasicBlock
    assert ref._source is ref_resnet.BasicBlock
    order = []
    for name, m in tv.named_children():
        m.register_forward_pre_hook(lambda m, a, n=name: order.append(n))
    with torch.no_grad():
        tv(torch.randn(1, 8, 5, 5))
    assert order == ["conv1", "bn1", "relu", "conv2", "bn2", "relu"]


def test_from_module_refuses_what_it_cannot_stand_in_for():
    """Decision: from_module raises a TypeError naming the module and the reason (fuse() does
    not convert such blocks; a block changed after fusing runs its source's forward)."""
    ws = Bottleneck(16, 4)
    ws.conv2 = WSConv2d(4, 4, 3, padding=1, bias=False)
    with pytest.raises(TypeError, match=r"FusedBottleneck.from_module: conv2/bn2 of Bottleneck: "
                                        r"WSConv2d overrides nn.Conv2d's forward"):
        FusedBottleneck.from_module(ws)
    gn = Bottleneck(16, 4)
    gn.bn3 = nn.GroupNorm(2, 16)
    with pytest.raises(TypeError, match=r"conv3/bn3 .* GroupNorm is not nn.BatchNorm2d"):
        FusedBottleneck.from_module(gn)
    with pytest.raises(TypeError, match=r"FusedBasicBlock.from_module: m must be .*BasicBlock, got Bottleneck"):
        FusedBasicBlock.from_module(Bottleneck(16, 4))

    class MyBlock(Bottleneck):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(TypeError, match=r"got MyBlock"):
        FusedBottleneck.from_module(MyBlock(16, 4))


# --- requested outputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("return_layers", [{"bn1": "a", "layer1": "b"}, {"conv1": "a", "relu": "b"},
                                           {"conv1": "a", "bn1": "b", "maxpool": "c"}])
def test_layer_getter_keeps_requested_outputs(return_layers, prepacked):
    body = IntermediateLayerGetter(_resnet10(), return_layers)
    fused = fpnops.fuse(body)
    x = torch.randn(1, 3, 35, 37)
    with torch.no_grad():
        out, ref = fused(x), body(x)
    assert list(out) == list(ref)
    for k in ref:
        assert ((out[k] - ref[k]).norm() / ref[k].norm()).item() < 1e-5, k


# --- autocast and dtypes -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bottleneck", "basic", "sequential", "stem"])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_autocast_returns_what_eager_returns(name, in_dtype, prepacked):
    if name == "stem":  # torchvision's stem (fused by subclassing), its output returned
        eager, shape = IntermediateLayerGetter(_resnet10(), {"relu": "stem", "layer1": "c2"}), (1, 3, 35, 37)
    else:
        ctor, shape = MODELS[name]
        eager = ctor()
    fused = fpnops.fuse(eager)
    x = torch.randn(shape).to(in_dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = fused(x), eager(x)
    assert not prepacked
    out, ref = (list(out.values()), list(ref.values())) if isinstance(ref, dict) else ([out], [ref])
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype == torch.bfloat16
        assert ((o.double() - r.double()).norm() / r.double().norm()).item() < 2e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_prepacked_only_for_float32_weights_and_input(dtype, prepacked):
    eager = bottleneck().to(dtype)
    fused = fpnops.fuse(eager)
    x = torch.randn(2, 16, 9, 11, dtype=dtype)
    with torch.no_grad():
        out, ref = fused(x), eager(x)
    assert not prepacked and out.dtype == dtype
    assert ((out.double() - ref.double()).norm() / ref.double().norm()).item() < (1e-12 if dtype == torch.float64 else 2e-2)


def test_from_module_of_a_subclass_and_of_a_fused_block():
    """A subclass keeping the block's forward is accepted (its forward is the original math);
    a fused block converts again, keeping the source class and the very same children."""

    class Tagged(Bottleneck):
        def __init__(self, *args):
            super().__init__(*args)
            self.tag = "kept"

    block = randomize_bn(Tagged(16, 4)).eval()
    fused = FusedBottleneck.from_module(FusedBottleneck.from_module(block))
    assert fused._source is Tagged and fused.tag == "kept" and fused.conv2 is block.conv2
    x = torch.randn(1, 16, 7, 6)
    with torch.no_grad():
        assert ((fused(x) - block(x)).norm() / block(x).norm()).item() < 1e-5
