"""FusedConvBNAct / FusedBasicBlock / FusedBottleneck and fuse() over ResNets: the original
names and checkpoints, equivalence against a float64 reference with randomised BatchNorm
statistics (so folding matters), training semantics, cache refresh."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d
from fused_models import count_fused_convs, fused_conv_count, randomize_bn, rel_err

import fpnops
import fpnops.nn.resnet as fused_resnet
from fpnops.nn import FusedBasicBlock, FusedBottleneck, FusedConvBNAct
from fpnops.reference import ResNet34, ResNet50


def outputs(y):
    if isinstance(y, dict):
        return list(y.values())
    return list(y) if isinstance(y, (tuple, list)) else [y]


TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_resnet50_matches_float64_reference(dtype, layout):
    model = randomize_bn(torchvision.models.resnet50()).eval()
    ref_model = copy.deepcopy(model).double()
    fused = fpnops.fuse(model).to(dtype=dtype, memory_format=layout)
    x = torch.randn(1, 3, 75, 101)
    with torch.no_grad():
        ref = ref_model(x.double())
        out = fused(x.to(dtype).contiguous(memory_format=layout))
    err = rel_err(out, ref)
    # float32: far under the 1e-4 the design asks; half types: under 1e-2.
    assert err < TOL[dtype], err


@pytest.mark.parametrize("ctor", [ResNet50, lambda: ResNet34(num_classes=None),
                                  torchvision.models.resnet18, torchvision.models.resnet34,
                                  torchvision.models.resnet101])
def test_fuse_resnets_keeps_state_dict_and_matches(ctor, monkeypatch):
    model = randomize_bn(ctor()).eval()
    keys = list(model.state_dict().keys())
    fused = fpnops.fuse(model)
    assert list(fused.state_dict().keys()) == keys
    blocks = [m for m in fused.modules() if isinstance(m, (FusedBottleneck, FusedBasicBlock))]
    assert len(blocks) > 0
    assert not any(type(m).__name__ in ("Bottleneck", "BasicBlock") for m in fused.modules())
    x = torch.randn(1, 3, 67, 85)
    calls = count_fused_convs(monkeypatch)
    with torch.no_grad():
        ref = [o.double() for o in outputs(copy.deepcopy(model).double()(x.double()))]
        out = outputs(fused(x))
    # every conv (stem, blocks, downsamples) ran fused; a torchvision classifier's stem: unfused
    assert len(calls) == fused_conv_count(model)
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-5
    # the input model is untouched
    assert not any(isinstance(m, (FusedBottleneck, FusedBasicBlock, FusedConvBNAct)) for m in model.modules())


def test_torchvision_checkpoint_loads_into_fused_model():
    src = randomize_bn(torchvision.models.resnet18()).eval()
    fused = fpnops.fuse(torchvision.models.resnet18()).eval()
    fused.load_state_dict(src.state_dict())  # strict: same keys, same shapes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(fused(x), src(x)) < 1e-5


def test_folded_cache_refreshes_when_weights_change():
    model = fpnops.fuse(randomize_bn(torchvision.models.resnet18()).eval())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.layer1[0].bn1.running_var.mul_(4.0)      # a buffer, in place
        model.layer2[0].conv2.weight.mul_(-1.0)        # a parameter, in place
        after = model(x)
    assert not torch.equal(before, after)
    plain = torchvision.models.resnet18().eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert rel_err(after, plain(x)) < 1e-5


def test_cpu_inference_prepacked_channels_last(monkeypatch):
    """CPU float32 inference runs every conv on oneDNN-prepacked weights in channels_last; new
    input shapes repack (the cache per conv is bounded), and results stay right."""
    model = randomize_bn(torchvision.models.resnet18()).eval()
    body = torchvision.models._utils.IntermediateLayerGetter(model, {"layer2": "c3", "layer4": "c5"})
    fused = fpnops.fuse(body)
    ref64 = copy.deepcopy(body).double()
    calls = count_fused_convs(monkeypatch)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in body.modules())
    limit = fused_resnet._FoldedWeights.PACKED_SHAPES
    shapes = [(1, 3, 67, 85), (2, 3, 64, 64)] + [(1, 3, 64 + 8 * i, 72) for i in range(limit)] + [(1, 3, 67, 85)]
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            out = fused(x)
            ref = ref64(x.double())
        for k in ref:
            assert rel_err(out[k], ref[k]) < 1e-5, (shape, k)
            assert out[k].is_contiguous(memory_format=torch.channels_last)
    assert len(calls) == n_convs * len(shapes)
    packed = [lru for m in fused.modules() if isinstance(m, FusedBasicBlock)
              for lru in m._fpnops_cache._packed.values()]
    assert packed and all(len(p) <= limit for p in packed)  # bounded
    first = fused.layer1[0]._fpnops_cache._packed["conv1"]  # by block input; stride 4: all distinct
    assert list(first)[-1] == (1, 64, 17, 22) and len(first) == limit  # most recent kept

    calls.clear()  # autograd on (parameters require grad): the same kernels, differentiable
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    out = fused(x)
    out["c5"].sum().backward()
    assert len(calls) == n_convs and x.grad is not None and fused.conv1.weight.grad is not None
    with torch.no_grad():
        assert torch.equal(out["c5"], fused(x)["c5"])  # the same bits as inference
    calls.clear()
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):  # oneDNN off: ATen's conv
        out = fused(x)
        assert not calls and rel_err(out["c5"], ref64(x.double())["c5"]) < 1e-5


def test_training_with_batchnorm_is_the_original_math():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18()).train()
    fused = fpnops.fuse(model)
    x = torch.randn(4, 3, 48, 48)
    a, b = model(x), fused(x)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    a.square().sum().backward()
    b.square().sum().backward()
    for (n, p), q in zip(fused.named_parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    for (n, s), t in zip(fused.named_buffers(), model.buffers()):  # running stats updated alike
        torch.testing.assert_close(s, t, msg=n)


def test_frozen_bn_fine_tuning_gradients():
    """Detection fine-tuning: FrozenBatchNorm2d, train mode, the fused path carries gradients to
    the input and the conv weights."""
    model = randomize_bn(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)).train()
    model64 = copy.deepcopy(model).double()
    fused = fpnops.fuse(model)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    fused(x).sum().backward()
    model64(x64).sum().backward()
    assert rel_err(x.grad, x64.grad) < 1e-4
    for (n, p), q in zip(fused.named_parameters(), model64.parameters()):
        assert p.grad is not None, n
        assert rel_err(p.grad, q.grad) < 1e-4, n


def test_resnet_fpn_backbone_and_detection_models():
    bb = randomize_bn(resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)).eval()
    fused = fpnops.fuse(bb)
    assert isinstance(fused.fpn, fpnops.FusedFPN)
    assert type(fused.body).__name__ == "FusedIntermediateLayerGetter"
    assert list(fused.state_dict().keys()) == list(bb.state_dict().keys())
    x = torch.randn(1, 3, 99, 131)
    with torch.no_grad():
        ref = copy.deepcopy(bb).double()(x.double())
        out = fused(x)
    assert list(out.keys()) == list(ref.keys())
    for k in ref:
        assert rel_err(out[k], ref[k]) < 1e-5, k
    det = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                               min_size=128, max_size=160).eval()
    fdet = fpnops.fuse(det)
    with torch.no_grad():
        a, b = det([torch.rand(3, 120, 150)]), fdet([torch.rand(3, 120, 150)])
    assert set(a[0].keys()) == set(b[0].keys())


def test_from_module_errors_and_repr():
    with pytest.raises(TypeError, match="FusedBottleneck.from_module: m must be .* Bottleneck, got Linear"):
        FusedBottleneck.from_module(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="m must be an nn.Sequential"):
        FusedConvBNAct.from_module(nn.Conv2d(2, 2, 1))
    block = FusedBasicBlock.from_module(torchvision.models.resnet.BasicBlock(8, 8), backend="torch")
    assert "backend='torch'" in repr(block)
    with pytest.raises(ValueError, match="backend must be one of"):
        FusedBasicBlock.from_module(torchvision.models.resnet.BasicBlock(8, 8), backend="x")


def test_unsupported_conv_falls_back_correctly():
    """A dilated and grouped conv (fused), a reflect-padded one (not folded): both right."""
    seq = randomize_bn(nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False),
                                     nn.BatchNorm2d(8), nn.ReLU())).eval()
    fused = FusedConvBNAct.from_module(seq)
    x = torch.randn(1, 8, 15, 17)
    with torch.no_grad():
        assert rel_err(fused(x), seq(x)) < 1e-5
    bad = randomize_bn(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
                                     nn.BatchNorm2d(8))).eval()
    with torch.no_grad():  # not folded (_exact rejects it): the Sequential's own math, exactly
        assert torch.equal(FusedConvBNAct.from_module(bad)(x), bad(x))


def test_torch_compile_fullgraph_fused_resnet():
    model = fpnops.fuse(randomize_bn(torchvision.models.resnet18()).eval())
    x = torch.randn(1, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
