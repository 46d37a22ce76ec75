"""What one fused call hands the next (fpnops/nn/_run.py: run_bounded, _call_bounded) inside
a fused model's own forward (a fused stem's model, a ResNet layer of fused blocks):
- the bound on |values| a fused block proves for its output stands in for reading the next
  block's input (max_abs), until it proves too loose. These tests pin that it reads fewer
  inputs, and that every way other code could change a tensor between two fused calls (hooks on
  a block, a layer or the pool, in place, in inference mode) makes the next call read its input
  again, so NaN and inf stay eager's;
- whether the tensor is fpnops' own intermediate, which a block's last conv may sum its output
  into (in place, as Inductor's frozen graph does): never a tensor the caller holds."""
import copy
import functools

import pytest
import torch
import torch.nn as nn
import torchvision
from fused_models import assert_same_nonfinite, randomize_bn, rel_err
from torchvision.models._utils import IntermediateLayerGetter

import fpnops
from fpnops.nn import _chain


@pytest.fixture
def reads(monkeypatch):
    """Counts the fused modules' input reads (max_abs) of CPU float32 inference."""
    calls = []
    real = torch.ops.fpnops.max_abs
    monkeypatch.setattr(torch.ops.fpnops, "max_abs", lambda x: calls.append(tuple(x.shape)) or real(x))
    return calls


def _resnet(blocks=(1, 1, 1, 1), kind=torchvision.models.resnet.BasicBlock, seed=0, width=8):
    """torchvision's ResNet (the exact class: fuse() runs its blocks as one run) with `width` channels in
    its stem, doubling per layer: small and quick."""
    torch.manual_seed(seed)
    m = torchvision.models.ResNet(kind, [1, 1, 1, 1], num_classes=10)
    m.inplanes = width
    m.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    m.bn1 = nn.BatchNorm2d(width)
    for i, n in enumerate(blocks):
        setattr(m, f"layer{i + 1}", m._make_layer(kind, width << i, n, stride=1 if i == 0 else 2))
    m.fc = nn.Linear(m.inplanes, 10)
    return randomize_bn(m).eval()


def _layer_getter(model):
    return IntermediateLayerGetter(model, {"layer2": "c3", "layer4": "c5"})


def _outputs(y):
    return list(y.values()) if isinstance(y, dict) else [y]


MODELS = {
    "resnet50 body": lambda: _layer_getter(randomize_bn(torchvision.models.resnet50()).eval()),
    "resnet-basic 2222": lambda: _resnet((2, 2, 2, 2), width=32),
    "resnet-bottleneck 3463": lambda: _resnet((3, 4, 6, 3), torchvision.models.resnet.Bottleneck, width=16),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_bound_stands_in_for_reading_the_next_input(name, reads):
    """ResNet50 has 16 blocks and a stem, each read its input before (17 reads); with bounds passed along,
    the first fused call reads its input (the stem of a backbone body reads the image; a ResNet
    classifier's stem runs unfused, so its first block reads the pooled map) and a block reads
    its input only where the bound it was handed has grown past SAFE_BOUND (every few blocks:
    each conv multiplies it by max_co sum|w|)."""
    eager = MODELS[name]()
    fused = fpnops.fuse(copy.deepcopy(eager))
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        outs, refs = _outputs(fused(x)), _outputs(eager(x))
    for out, ref in zip(outs, refs):
        assert rel_err(out, ref) < 1e-5
    blocks = sum(isinstance(m, (fpnops.FusedBottleneck, fpnops.FusedBasicBlock)) for m in fused.modules())
    first = (1, 3, 64, 72) if name.endswith("body") else (1, eager.conv1.out_channels, 16, 18)
    assert reads[0] == first
    assert 1 <= len(reads) <= (blocks + 1) // 2, (len(reads), blocks)


def _nan_writer(where):
    """A hook that writes NaN (and -inf) into a tensor in place: what a bound must not hide."""
    def put(t):
        t[0, 0, 1, 1] = float("nan")
        t[0, -1, 0, 0] = -float("inf")

    if where == "forward":
        return lambda module, args, out: put(out)
    return lambda module, args: put(args[0])


HOOKED = {  # (module path, hook kind)
    "block forward hook": ("layer1.0", "forward"),
    "block pre-hook": ("layer2.0", "pre"),
    "layer forward hook": ("layer1", "forward"),
    "maxpool forward hook": ("maxpool", "forward"),
    "stem relu forward hook": ("relu", "forward"),
}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("case", list(HOOKED))
def test_a_tensor_changed_between_fused_calls_is_read_again(case, mode):
    """A NaN written in place by a hook between two fused calls (inference tensors have no
    version counter: nothing else could tell) reaches the output as in eager; were the bound on
    the tensor before the hook trusted, oneDNN's ReLU post-op would turn it into 0."""
    path, kind = HOOKED[case]
    eager = _resnet()
    fused = fpnops.fuse(copy.deepcopy(eager))
    for model in (eager, fused):
        m = model.get_submodule(path)
        (m.register_forward_hook if kind == "forward" else m.register_forward_pre_hook)(_nan_writer(kind))
    x = torch.randn(1, 3, 64, 72)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with ctx():
        fused(torch.randn(1, 3, 64, 72))  # warm: weights folded and packed
        out, ref = fused(x), eager(x)
    assert ref.isnan().any()
    assert_same_nonfinite(out, ref)


def test_a_block_whose_forward_is_compiled_is_called_as_such():
    """Where m.compile() gave a block a compiled call, the bounded path calls m (whose compiled
    forward may differ) and the next block reads its input."""
    fused = fpnops.fuse(_resnet())
    called = []
    block = fused.layer1[0]
    block._compiled_call_impl = lambda *a, **k: called.append(1) or block._call_impl(*a, **k)
    with torch.no_grad():
        fused(torch.randn(1, 3, 32, 32))
    assert called


@functools.lru_cache(maxsize=None)
def _fuzz_base(bottleneck):
    kind = torchvision.models.resnet.Bottleneck if bottleneck else torchvision.models.resnet.BasicBlock
    return _resnet(blocks=(2, 1, 2, 1), kind=kind, seed=int(bottleneck))


@pytest.mark.parametrize("seed", range(24))
def test_fuzz_overflow_anywhere_matches_eager(seed, reads):
    """Random small ResNets with one BN scaling by up to 1e25 somewhere (a bound handed on grows
    past SAFE_BOUND there) and inputs scaled up to 1e12, some with NaN/inf: the same NaN and
    inf as eager, finite values close (relative to their norm: a BN scaling by 1e25 leaves
    cancellation that folding rounds differently); inputs are read again where a bound was too
    loose."""
    g = torch.Generator().manual_seed(seed)
    eager = copy.deepcopy(_fuzz_base(seed % 2 == 0))
    bns = [m for m in eager.modules() if isinstance(m, nn.BatchNorm2d)]
    bn = bns[int(torch.randint(0, len(bns), (1,), generator=g))]
    with torch.no_grad():
        bn.weight.mul_(10.0 ** float(torch.randint(0, 26, (1,), generator=g)))
    model = _layer_getter(eager) if seed % 3 == 0 else eager
    fused = fpnops.fuse(copy.deepcopy(model))
    x = torch.randn(1, 3, 33, 41, generator=g) * 10.0 ** float(torch.randint(0, 13, (1,), generator=g))
    if seed % 4 == 1:
        x[0, int(torch.randint(0, 3, (1,), generator=g)), 5, 7] = (float("nan"), float("inf"))[seed % 8 == 1]
    with torch.no_grad():
        outs, refs = _outputs(fused(x)), _outputs(model(x))
    for out, ref in zip(outs, refs):
        for kind in (torch.isnan, torch.isposinf, torch.isneginf):
            assert torch.equal(kind(out), kind(ref)), (kind.__name__, kind(out).sum(), kind(ref).sum())
        fin = ref.isfinite()
        if fin.any() and ref[fin].abs().max() > 0:
            assert rel_err(out[fin], ref[fin]) < 1e-4


def _out_of_place(into, x, packed, bias, args, relu):
    """_sum_into's result without writing into `into`."""
    stride, padding, dilation, groups = args
    return torch.ops.fpnops.conv_bn_act_cpu_prepacked(x, packed, bias, stride, padding, dilation,
                                                      groups, into.clone(), relu)


SUMMED = {  # model, the number of blocks whose last conv sums into its residual in place
    "resnet50 body": (lambda: _layer_getter(randomize_bn(torchvision.models.resnet50()).eval()), 16),
    # layer1.0 has no downsample: its residual is the max pool's output, returned as "pool"
    "resnet getter keeping the pool": (lambda: IntermediateLayerGetter(
        _resnet((2, 2, 1, 1), width=16), {"maxpool": "pool", "layer2": "c3", "layer4": "c5"}), 5),
    # a classifier's stem runs unfused (stem.py): its max pool's output is NCHW, which layer1.0
    # reads into its packed path but does not sum into (only a channels_last map)
    "resnet": (lambda: _resnet((2, 2, 1, 1), width=16), 5),
}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", list(SUMMED))
def test_sums_into_its_own_intermediates_only(name, mode, monkeypatch):
    """Every block's last conv sums into its residual in place where that residual is a
    downsample's output or the previous fused block's (fpnops' own), never into a tensor the
    caller gets (a returned layer or pool output) or passed in; the outputs are bit for bit
    those of the out-of-place sum."""
    ctor, expected = SUMMED[name]
    fused = fpnops.fuse(ctor())
    x = torch.randn(1, 3, 64, 72)
    x0 = x.clone()
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    calls = []
    real = _chain._sum_into
    with ctx():
        fused(x)  # warm
        monkeypatch.setattr(_chain, "_sum_into", lambda *a: calls.append(1) or real(*a))
        outs = _outputs(fused(x))
        assert len(calls) == expected
        monkeypatch.setattr(_chain, "_sum_into", _out_of_place)
        refs = _outputs(fused(x))
    assert torch.equal(x, x0)
    for out, ref in zip(outs, refs):
        assert torch.equal(out, ref)


def test_a_block_called_by_the_user_never_writes_into_its_input():
    block = fpnops.fuse(_resnet((2, 1, 1, 1), width=16)).layer1[1]  # an identity block
    x = torch.randn(1, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    x0 = x.clone()
    with torch.no_grad():
        block(x)
    assert torch.equal(x, x0)
