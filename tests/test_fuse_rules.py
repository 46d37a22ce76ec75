"""fuse() replaces a module only where the replacement computes exactly what the original's own
forward does: exact classes, foldable convs and norms, hooks kept, requested outputs kept;
everything else stays as it was and verbose=True says why."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FeaturePyramidNetwork
from fused_models import randomize_bn

import fpnops
from fpnops.nn import FusedBottleneck, FusedConvBNAct, FusedFPN


class WSConv2d(nn.Conv2d):
    """Weight standardisation: a Conv2d whose forward is not nn.Conv2d's."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def test_conv_subclass_with_own_forward_is_left_alone():
    seq = randomize_bn(nn.Sequential(WSConv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())).eval()
    block = randomize_bn(Bottleneck(16, 4)).eval()
    block.conv2 = WSConv2d(4, 4, 3, padding=1, bias=False)
    for model, x in ((seq, torch.randn(2, 3, 9, 11)), (block, torch.randn(2, 16, 9, 11))):
        fused = fpnops.fuse(model)
        assert type(fused) is type(model)
        with torch.no_grad():
            assert same(fused(x), model(x))


def test_fpn_subclass_with_own_forward_is_left_alone():
    class ScaledFPN(FeaturePyramidNetwork):
        def forward(self, x):
            return {k: 2 * v for k, v in super().forward(x).items()}

    model = ScaledFPN([4, 8], 4).eval()
    fused = fpnops.fuse(model)
    assert type(fused) is ScaledFPN
    x = {"a": torch.randn(1, 4, 10, 12), "b": torch.randn(1, 8, 5, 6)}
    with torch.no_grad():
        assert same(fused(x), model(x))
    with pytest.raises(TypeError, match="ScaledFPN overrides the forward"):
        FusedFPN.from_module(model)


@pytest.mark.parametrize("norm", [lambda c: nn.GroupNorm(2, c), nn.Identity], ids=["groupnorm", "identity"])
def test_resnets_with_other_norms_are_left_alone(norm):
    model = torchvision.models.resnet18(norm_layer=norm).eval()
    fused = fpnops.fuse(model)  # raised inside fuse() before
    assert not any(isinstance(m, (fpnops.FusedBasicBlock, FusedConvBNAct)) for m in fused.modules())
    assert type(fused) is type(model)
    x = torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        assert same(fused(x), model(x))


def test_padding_modes():
    reflect = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
                                         nn.BatchNorm2d(8))).eval()
    odd_same = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 2, padding="same"), nn.BatchNorm2d(8))).eval()
    even_same = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding="same", dilation=2),
                                           nn.BatchNorm2d(8), nn.ReLU())).eval()
    x = torch.randn(2, 3, 13, 10)
    for model in (reflect, odd_same):  # raised at forward before
        fused = fpnops.fuse(model)
        assert type(fused) is nn.Sequential
        with torch.no_grad():
            assert same(fused(x), model(x))
    fused = fpnops.fuse(even_same)  # symmetric 'same' padding folds like explicit padding=2
    assert isinstance(fused, FusedConvBNAct)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), even_same(x), rtol=1e-5, atol=1e-5)


def test_hooks_on_replaced_modules_move_with_them():
    model = randomize_bn(Bottleneck(16, 4)).eval()
    seen = []
    handle = model.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    model.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    x = torch.randn(1, 16, 7, 9)
    with torch.no_grad():
        ref = model(x)
    fused = fpnops.fuse(model, inplace=True)  # in place: the handle is the model's own
    assert isinstance(fused, FusedBottleneck)
    with torch.no_grad():
        out = fused(x)
    assert len(seen) == 2
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[1], ref, rtol=1e-5, atol=1e-5)
    handle.remove()  # the handle still reaches the hook
    with torch.no_grad():
        fused(x)
    assert len(seen) == 2


def test_hooks_on_children_still_fire():
    model = randomize_bn(torchvision.models.resnet18()).eval()
    order = []
    for name in ("conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer2.0.downsample.1"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: order.append(name))
    fused = fpnops.fuse(model)
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        model(x)
        expected, order[:] = list(order), []
        fused(x)
    assert order == expected


def test_fpn_calls_its_blocks_in_torchvision_order():
    model = FeaturePyramidNetwork([4, 8, 16], 4).eval()
    order = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(lambda m, i, name=name: order.append(name))
    x = {"a": torch.randn(1, 4, 20, 24), "b": torch.randn(1, 8, 10, 12), "c": torch.randn(1, 16, 5, 6)}
    fused = fpnops.fuse(model)
    assert isinstance(fused, FusedFPN)
    with torch.no_grad():
        ref = model(x)
        expected, order[:] = list(order), []
        assert same(fused(x), ref)
    assert order == expected


def test_requested_outputs_inside_a_stem_are_kept():
    backbone = randomize_bn(torchvision.models.resnet18()).eval()
    getter = IntermediateLayerGetter(backbone, return_layers={"bn1": "stem_bn", "layer1": "c2"})
    fused = fpnops.fuse(getter)
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        ref, out = getter(x), fused(x)
    assert list(out) == ["stem_bn", "c2"]
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)
    # torchvision's stem ReLU is in place, so eager returns bn1's tensor after the ReLU ran on
    # it; the fused getter returns the same (checked above), not a pre-ReLU copy.


def test_verbose_report(capsys):
    model = nn.Sequential(nn.Sequential(WSConv2d(3, 8, 3), nn.BatchNorm2d(8)),
                          nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()),
                          BasicBlock(8, 8, norm_layer=nn.Identity))
    fpnops.fuse(model.eval(), verbose=True)
    out = capsys.readouterr().out
    assert "1 module(s) fused, 2 left alone" in out
    assert "left alone  0 (Sequential): WSConv2d overrides nn.Conv2d's forward" in out
    assert "fused       1 (Sequential -> FusedConvBNAct)" in out
    assert "left alone  3 (BasicBlock): conv1/bn1: Identity is not nn.BatchNorm2d" in out
    assert "  2 (" not in out  # a Sequential without conv -> norm is not worth a line
    fpnops.fuse(model.eval())
    assert capsys.readouterr().out == ""


def test_subclass_of_a_pattern_is_reported(capsys):
    class MyBottleneck(Bottleneck):
        pass

    fused = fpnops.fuse(MyBottleneck(16, 4).eval(), verbose=True)
    assert type(fused) is MyBottleneck
    assert "a subclass of Bottleneck" in capsys.readouterr().out


def test_arguments_are_checked_even_when_nothing_is_fused():
    with pytest.raises(ValueError, match="fuse: backend must be one of.*'bogus'"):
        fpnops.fuse(nn.Linear(2, 2), backend="bogus")
    for name in ("inplace", "fold_bn", "verbose"):
        with pytest.raises(TypeError, match=f"fuse: {name} must be True or False, got 'yes'"):
            fpnops.fuse(nn.Linear(2, 2), **{name: "yes"})


def test_fuse_under_inference_mode_gives_normal_tensors():
    model = randomize_bn(torchvision.models.resnet18()).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        fused = fpnops.fuse(model)
        assert not any(p.is_inference() for p in fused.parameters())
        out = fused(x)  # failed on its first forward before
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)


def test_fuse_of_a_fused_model_after_a_forward():
    model = randomize_bn(torchvision.models.resnet18()).eval()
    fused = fpnops.fuse(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = fused(x)
        again = fpnops.fuse(fused)  # deep-copied a cache of oneDNN tensors before
        b = again(x)
        c = copy.deepcopy(fused)(x)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_bad_inputs():
    """fuse()'s arguments, and what a fused model's forward says of a bad input, in a child
    interpreter (a crash fails this test rather than the run)."""
    from helpers import assert_bad_inputs
    setup = ("import torch, torch.nn as nn, torchvision, fpnops\n"
             "net = torchvision.models.resnet18().eval()\n")
    assert_bad_inputs([
        ("model int", "fpnops.fuse(3)", "TypeError", r"fuse: model must be an nn\.Module, got int"),
        ("model class", "fpnops.fuse(nn.Linear)", "TypeError", r"fuse: model must be an nn\.Module, got type"),
        ("backend bogus", "fpnops.fuse(net, backend='bogus')", "ValueError", r"fuse: backend must be one of .*'bogus'"),
        ("backend None", "fpnops.fuse(net, backend=None)", "ValueError", r"fuse: backend must be one of .*None"),
        ("inplace str", "fpnops.fuse(net, inplace='no')", "TypeError", r"fuse: inplace must be True or False, got 'no'"),
        ("fold_bn int", "fpnops.fuse(net, fold_bn=1)", "TypeError", r"fuse: fold_bn must be True or False, got 1"),
        ("verbose None", "fpnops.fuse(net, verbose=None)", "TypeError", r"fuse: verbose must be True or False, got None"),
        ("positional backend", "fpnops.fuse(net, 'native')", "TypeError", r"positional argument"),
        ("fused: 3 channels short", "fpnops.fuse(net)(torch.randn(1, 2, 32, 32))", "ValueError",
         r"conv1: x has 2 channels, conv1 expects 3"),
        ("fused: 3-D input", "fpnops.fuse(net)(torch.randn(3, 32, 32))", "ValueError",
         r"x must be 4-D \(N, C, H, W\), got 3-D"),
        ("fused: float64 input, float32 model", "fpnops.fuse(net)(torch.randn(1, 3, 32, 32, dtype=torch.float64))",
         "TypeError", r"conv1: x is torch\.float64, conv1\.weight is torch\.float32"),
        ("fused: too small", "fpnops.fuse(nn.Sequential(nn.Conv2d(3, 4, 5), nn.BatchNorm2d(4)).eval())"
         "(torch.randn(1, 3, 4, 4))", "ValueError", r"FusedConvBNAct\.0: .*smaller than the"),
    ], setup=setup)
