"""What people do to modules after loading them, on fused models: a forward set on the instance
(accelerate, adapters and debugging tools patch modules so), hooks whose order or side effects
matter (eager's order: conv1 ... bn3, then the downsample), and modules used at several places
(tied). The rule behind all three (fpnops/nn/_exact.py: inlinable): a fused parent computes a
child's part itself only where calling the child would run its class's forward and nothing
else; any other child is called, at eager's position.

Every case runs the same change on an eager copy and compares: the calls each patched forward
or hook saw, and the outputs (within the fused modules' rounding)."""
import copy
import types

import pytest
import torch
import torch.nn as nn
import torchvision
from fused_models import bottleneck, randomize_bn, rel_err
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork

import fpnops
from fpnops.nn import FusedBasicBlock, FusedBottleneck, FusedConvBNAct


def _resnet(kind=torchvision.models.resnet.BasicBlock, layers=(2, 2, 1, 1)):
    torch.manual_seed(0)
    return randomize_bn(torchvision.models.ResNet(kind, list(layers), num_classes=10)).eval()


def _backbone():
    torch.manual_seed(0)
    return randomize_bn(resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                            trainable_layers=5)).eval()


def _fpn():
    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork([64, 128, 256], 64).eval()
    for m in fpn.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.bias)
    return fpn


def _pyramid(n=1, size=16, layout=torch.channels_last):
    return {f"c{i}": torch.randn(n, c, size >> i, size >> i).contiguous(memory_format=layout)
            for i, c in enumerate([64, 128, 256])}


def _sequential():
    """A Sequential of Conv2dNormActivation-like runs (mobilenet's shape), fused as
    FusedConvBNAct children."""
    torch.manual_seed(0)
    run = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False),  # noqa: E731
                                     nn.BatchNorm2d(o), nn.ReLU(inplace=True))
    return randomize_bn(nn.Sequential(run(3, 16), run(16, 16), run(16, 8))).eval()


# (model, input, path of the module whose forward is patched): blocks, the convs, BNs and ReLUs
# inside them, a downsample and its conv, stems, Sequential runs, the FPN's convs and blocks
PATCHED = {
    "block in a layer": (_resnet, (1, 3, 32, 36), "layer2.1"),
    "first block of a layer": (_resnet, (1, 3, 32, 36), "layer2.0"),
    "conv1 of a block": (_resnet, (1, 3, 32, 36), "layer1.0.conv1"),
    "bn2 of a block": (_resnet, (1, 3, 32, 36), "layer1.1.bn2"),
    "relu of a block": (_resnet, (1, 3, 32, 36), "layer3.0.relu"),
    "downsample": (_resnet, (1, 3, 32, 36), "layer2.0.downsample"),
    "downsample conv": (_resnet, (1, 3, 32, 36), "layer2.0.downsample.0"),
    "bottleneck conv3": (lambda: _resnet(torchvision.models.resnet.Bottleneck, (1, 1, 1, 1)),
                         (1, 3, 32, 36), "layer1.0.conv3"),
    "stem conv1": (_resnet, (1, 3, 32, 36), "conv1"),
    "stem bn1": (_resnet, (1, 3, 32, 36), "bn1"),
    "stem relu": (_resnet, (1, 3, 32, 36), "relu"),
    "a whole layer": (_resnet, (1, 3, 32, 36), "layer1"),
    "backbone body block": (_backbone, (1, 3, 96, 96), "body.layer3.1"),
    "backbone body conv": (_backbone, (1, 3, 96, 96), "body.layer1.0.conv2"),
    "backbone fpn inner conv": (_backbone, (1, 3, 96, 96), "fpn.inner_blocks.0.0"),
    "backbone fpn layer conv": (_backbone, (1, 3, 96, 96), "fpn.layer_blocks.0.0"),
    "backbone fpn inner block": (_backbone, (1, 3, 96, 96), "fpn.inner_blocks.0"),
    "sequential run": (_sequential, (2, 3, 12, 14), "1"),
    "sequential run conv": (_sequential, (2, 3, 12, 14), "1.0"),
    "sequential run bn": (_sequential, (2, 3, 12, 14), "2.1"),
}


_CALLS = []  # id of the module, per call of a patched forward


def _patched_forward(self, *args, **kwargs):
    """A forward set on the instance, as an adapter would: it logs the call and changes the
    result (x1.5 + 0.25), so a fused parent that skipped it would give other numbers. Bound
    with types.MethodType, so that deepcopy (fuse's) binds the copy to the copied module."""
    _CALLS.append(id(self))
    return type(self).forward(self, *args, **kwargs) * 1.5 + 0.25


def _patch(model, path):
    m = model.get_submodule(path)
    m.forward = types.MethodType(_patched_forward, m)
    return m


def _out(y):
    if isinstance(y, dict):
        return torch.cat([v.flatten() for v in y.values()])
    return y


@pytest.mark.parametrize("when, layout", [("after fuse", "contiguous"), ("after fuse", "channels_last"),
                                          ("before fuse", "channels_last")])
@pytest.mark.parametrize("case", PATCHED)
def test_instance_forward_overrides_are_called_where_eager_calls_them(case, layout, when):
    """The patched forward runs as often as in eager, and the outputs agree. Patched after
    fuse(): the fused parent calls the patched child. Patched before: fuse() leaves a patched
    module it would replace alone (it cannot know what it computes) and fuses around it."""
    ctor, shape, path = PATCHED[case]
    eager = ctor()
    if when == "after fuse":
        fused = fpnops.fuse(eager)
        _patch(eager, path), _patch(fused, path)
    else:
        _patch(eager, path)
        fused = fpnops.fuse(eager)
    ids = id(eager.get_submodule(path)), id(fused.get_submodule(path))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape).contiguous(memory_format=fmt)
    with torch.no_grad():
        for _ in range(2):  # the second call runs on the filled cache
            _CALLS.clear()
            ref, out = _out(eager(x)), _out(fused(x))
            assert _CALLS.count(ids[0]) >= 1
            assert _CALLS.count(ids[1]) == _CALLS.count(ids[0])
            assert rel_err(out, ref) < 1e-5


def test_a_patched_conv_inside_a_fused_block_leaves_the_rest_fused(monkeypatch):
    """Calling one patched child does not give up the rest: the downsample's conv runs through
    its own (patched) forward, every other conv still fused."""
    from fused_models import count_fused_convs, fused_conv_count
    model = _resnet()
    fused = fpnops.fuse(model)
    calls = count_fused_convs(monkeypatch)
    x = torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        fused(x)
        full = len(calls)
        conv = fused.layer2[0].downsample[0]
        conv.forward = conv.forward  # a bound method on the instance: the call is the same
        calls.clear()
        fused(x)
    assert full == fused_conv_count(model)
    assert len(calls) == full - 1


def test_from_module_refuses_a_block_whose_forward_is_set_on_the_instance():
    block = bottleneck()
    block.forward = lambda x: x
    with pytest.raises(TypeError, match="forward is set on the instance"):
        FusedBottleneck.from_module(block)
    seq = _sequential()
    seq.forward = lambda x: x
    with pytest.raises(TypeError, match="forward is set on the instance"):
        FusedConvBNAct.from_module(seq)
    fpn = _fpn()
    fpn.forward = lambda x: x
    with pytest.raises(TypeError, match="forward is set on the instance"):
        fpnops.FusedFPN.from_module(fpn)


def test_fuse_reports_a_module_whose_forward_is_set_on_the_instance(capsys):
    model = _resnet()
    model.layer1[0].forward = model.layer1[0].forward
    fused = fpnops.fuse(model, verbose=True)
    assert type(fused.layer1[0]) is torchvision.models.resnet.BasicBlock
    assert type(fused.layer1[1]) is FusedBasicBlock
    assert "left alone  layer1.0 (BasicBlock): its forward is set on the instance" in capsys.readouterr().out


# --- eager's order: conv1 ... bn3, then the downsample, then the add ---------------------------

def _order_log(model, paths):
    """Forward pre-hooks on `paths` that log their path and the sum of their input."""
    log = []
    for p in paths:
        model.get_submodule(p).register_forward_pre_hook(
            lambda m, args, p=p: log.append((p, round(args[0].double().sum().item(), 3))))
    return log


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
def test_a_downsample_pre_hook_that_edits_its_input_sees_eager_order(kind, layout):
    """A pre-hook on the downsample doubles the block's input in place. In eager, conv1 has
    read x by then; a fused block that ran the downsample first would feed conv1 the doubled x
    (14% off in an outside probe)."""
    block_kind = {"bottleneck": torchvision.models.resnet.Bottleneck,
                  "basic": torchvision.models.resnet.BasicBlock}[kind]
    eager = _resnet(block_kind, (1, 1, 1, 1))
    fused = fpnops.fuse(eager)
    for m in (eager, fused):
        m.layer2[0].downsample.register_forward_pre_hook(lambda mod, args: args[0].mul_(2.0))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(1, 3, 40, 44).contiguous(memory_format=fmt)
    with torch.no_grad():
        for _ in range(2):
            ref, out = eager(x), fused(x)
            assert rel_err(out, ref) < 1e-5


def test_hooks_fire_in_eager_order_across_a_fused_model():
    """Pre-hooks on every downsample and on a few convs of other blocks: the same sequence of
    (module, input) events as in eager."""
    paths = ["layer2.0.downsample", "layer3.0.downsample", "layer2.1.conv2", "layer3.0.downsample.1",
             "layer4.0.conv1", "layer1.1"]
    eager = _resnet()
    fused = fpnops.fuse(eager)
    log_eager, log_fused = _order_log(eager, paths), _order_log(fused, paths)
    x = torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        eager(x), fused(x)
    assert [p for p, _ in log_fused] == [p for p, _ in log_eager]
    for (_, a), (_, b) in zip(log_fused, log_eager):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-2)


# --- tied modules ----------------------------------------------------------------------------

def test_a_block_used_twice_is_fused_once_and_stays_tied():
    torch.manual_seed(0)
    b0 = randomize_bn(torchvision.models.resnet.BasicBlock(8, 8)).eval()
    b = randomize_bn(torchvision.models.resnet.BasicBlock(8, 8)).eval()
    eager = nn.Sequential(b0, b, b)
    fused = fpnops.fuse(eager)
    assert type(fused[1]) is FusedBasicBlock and fused[1] is fused[2]
    assert fused[0] is not fused[1]
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        assert rel_err(fused(x), eager(x)) < 1e-5
        for m in (eager[1], fused[1]):  # an update through one position reaches the other
            m.bn2.running_var.mul_(3.0)
            m.conv1.weight.mul_(-0.5)
        assert rel_err(fused(x), eager(x)) < 1e-5
    assert len(list(fused.parameters())) == len(list(eager.parameters()))


def test_tied_runs_and_fpns_stay_tied(capsys):
    """A Sequential run and a whole FPN held at two attributes: one replacement each, reported
    once as fused and once as the same module."""
    torch.manual_seed(0)
    model = nn.Module()
    model.a = model.b = _sequential()[0]
    model.p = model.q = _fpn()
    fused = fpnops.fuse(model, verbose=True)
    assert type(fused.a) is FusedConvBNAct and fused.a is fused.b
    assert isinstance(fused.p, fpnops.FusedFPN) and fused.p is fused.q
    out = capsys.readouterr().out
    assert "fused       b (Sequential -> FusedConvBNAct)" in out
    assert "fused       q (FeaturePyramidNetwork -> FusedFeaturePyramidNetwork)" in out


def test_copies_of_a_fused_model_keep_its_ties():
    import pickle
    torch.manual_seed(0)
    b = randomize_bn(torchvision.models.resnet.BasicBlock(8, 8)).eval()
    fused = fpnops.fuse(nn.Sequential(b, b))
    for copied in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert copied[0] is copied[1]


# --- train/eval modes ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", ["fuse", "from_module"])
def test_fusing_keeps_each_childs_own_mode(make):
    """A container in training mode may hold BNs in eval mode (a frozen part of a model being
    fine-tuned): fusing it must not switch them to training (batch statistics), and from_module
    must not change the modules it adopts."""
    torch.manual_seed(0)
    block = randomize_bn(torchvision.models.resnet.BasicBlock(8, 8))
    block.bn1.eval(), block.bn2.eval()  # the block itself stays in training mode
    seq = randomize_bn(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
    seq[1].eval()
    fpn = _fpn()
    fpn.train()
    fpn.inner_blocks[0].eval()
    for eager, cls in ((block, FusedBasicBlock), (seq, FusedConvBNAct), (fpn, fpnops.FusedFPN)):
        modes = [m.training for m in eager.modules()]
        fused = fpnops.fuse(eager) if make == "fuse" else cls.from_module(eager)
        assert [m.training for m in fused.modules()] == modes
        assert [m.training for m in eager.modules()] == modes
    x = torch.randn(2, 8, 9, 11)
    fused = fpnops.fuse(block) if make == "fuse" else FusedBasicBlock.from_module(copy.deepcopy(block))
    with torch.no_grad():
        assert rel_err(fused(x), block(x)) < 1e-5
