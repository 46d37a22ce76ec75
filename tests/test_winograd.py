"""conv3x3_winograd (Winograd F(4x4, 3x3), csrc/cpu/winograd.cpp, fpnops/ops/winograd.py): the op
against a float64 convolution on random inputs (odd sizes, partial tiles, every layout, bias,
residual, ReLU), a seeded fuzz, the generic (non-AVX2) kernels, bad input, the rule that picks
it, and the fused ResNets that run it (which convs, the whole-network error, weight updates)."""
import copy
import pickle
import random

import pytest
import torch
import torch.nn.functional as F
import torchvision
from fused_models import count_fused_convs, fused_conv_count, randomize_bn, rel_err
from helpers import LAYOUTS, assert_bad_inputs, make, run_generic_cpu

import fpnops
from fpnops.nn import FusedBasicBlock, FusedBottleneck
from fpnops.ops import winograd
from fpnops.ops.winograd import conv3x3_winograd, winograd_weight

# The bound conv3x3_winograd keeps (fpnops/ops/winograd.py), per output: TILE_TOL times the
# largest |x| over the output's 6x6 input tile times sum |w[k]|, plus the bias and residual
# adds' rounding and, for subnormal inputs, an absolute term. It is not a bound relative to the
# output itself, nor to conv(|x|, |w|) at that output: one bright pixel in a tile moves the
# error of its dim neighbours (test_adversarial_tiles).
TILE_TOL = 2e-6  # where the fused modules run it: 64+ input channels (winograd.MIN_CHANNELS)
TILE_TOL_FEW = 8e-6  # fewer: one input channel measured 3.7e-6 (no sum over channels to average)
ADD_TOL = 2.0 ** -23
# And over a whole output (norm-wise), against ~1e-6 measured: a direct float32 conv gets ~3e-7.
NORM_TOL = 1e-5


def tile_bound(x, wt, extra=None):
    """Per output (N, K, H, W): the bound above, with `extra` (|bias| + |residual| + |exact|, as
    float64) for the adds."""
    n, c, h, w = x.shape
    th, tw = (h + 3) // 4, (w + 3) // 4
    a = x.double().abs().amax(1, keepdim=True) if c else torch.zeros(n, 1, h, w, dtype=torch.float64)
    a = F.pad(a, (1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))  # rows and columns -1 .. 4 * th
    t = F.max_pool2d(a, 6, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)[..., :h, :w]
    s = wt.double().abs().sum((1, 2, 3)).view(1, -1, 1, 1)
    subnormal = 400 * (c + 36) * 2.0 ** -149
    tol = TILE_TOL if c >= winograd.MIN_CHANNELS else TILE_TOL_FEW
    return tol * t * s + (0 if extra is None else ADD_TOL * extra) + subnormal


def check_case(n, c, k, h, w, layout, bias, residual, relu, seed=0, x=None):
    """One call against float64; returns the norm-wise error. x: an input of its own (the
    adversarial tiles), else random."""
    g = torch.Generator().manual_seed(seed)
    if x is None:
        x = make((n, c, h, w), torch.float32, "cpu", layout)
        x.copy_(torch.randn(x.shape, generator=g))
    wt = torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)
    b = torch.randn(k, generator=g) if bias else None
    r = make((n, k, h, w), torch.float32, "cpu", layout) if residual else None
    if r is not None:
        r.copy_(torch.randn(r.shape, generator=g))
    out = conv3x3_winograd(x, winograd_weight(wt), b, r, relu)
    ref = F.conv2d(x.double(), wt.double(), None if b is None else b.double(), padding=1)
    extra = ref.abs() + (0 if b is None else b.double().abs().view(1, -1, 1, 1))
    if r is not None:
        ref, extra = ref + r.double(), extra + r.double().abs()
    if relu:
        ref = ref.clamp_min(0)
    assert out.shape == (n, k, h, w) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    err = (out.double() - ref).abs()
    bound = tile_bound(x, wt, extra)
    assert (err <= bound).all(), (err / bound).max().item()
    if relu:
        assert (out >= 0).all()
    norm_err = (err.norm() / ref.norm()).item() if ref.norm() > 0 else err.norm().item()
    return norm_err


def check_norm(*args, **kwargs):
    norm_err = check_case(*args, **kwargs)
    assert norm_err < NORM_TOL, norm_err
    return norm_err


# (N, C, K, H, W): partial tiles at both edges, maps smaller than a tile, one pixel, channel
# counts on both sides of the 8-lane vectors, and ResNet-sized ones.
SHAPES = [(1, 5, 7, 9, 13), (2, 16, 24, 8, 8), (3, 9, 17, 1, 1), (1, 3, 1, 2, 3), (2, 8, 8, 4, 4),
          (1, 1, 33, 7, 5), (1, 33, 9, 6, 11), (2, 128, 128, 10, 7), (1, 256, 64, 12, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_float64_conv(shape, layout):
    for bias, residual, relu in [(True, True, True), (False, False, False), (True, False, True),
                                 (False, True, False)]:
        check_norm(*shape, layout, bias, residual, relu)


def test_empty_and_zero_channel_inputs():
    wt = torch.randn(4, 3, 3, 3)
    assert conv3x3_winograd(torch.randn(0, 3, 5, 5), winograd_weight(wt)).shape == (0, 4, 5, 5)
    assert conv3x3_winograd(torch.randn(2, 3, 0, 5), winograd_weight(wt)).shape == (2, 4, 0, 5)
    b = torch.randn(4)
    out = conv3x3_winograd(torch.randn(2, 0, 5, 6), winograd_weight(torch.randn(4, 0, 3, 3)), b)
    assert torch.equal(out, b.view(1, 4, 1, 1).expand(2, 4, 5, 6))  # no input: the bias alone


def run_fuzz(seed, cases):
    rng = random.Random(seed)
    worst = 0.0
    for i in range(cases):
        shape = (rng.randint(1, 3), rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 19),
                 rng.randint(1, 19))
        worst = max(worst, check_norm(*shape, rng.choice(LAYOUTS), rng.random() < 0.7,
                                      rng.random() < 0.5, rng.random() < 0.5, seed=seed * 100000 + i))
    return worst


def test_fuzz_against_float64():
    assert run_fuzz(1, 1000) > 0  # and every case within the tolerances (check_case)


def _adversarial(kind, shape, g):
    n, c, h, w = shape
    if kind == "bright pixel":  # dim values, one pixel of 1000 every few tiles
        x = torch.full(shape, 0.01)
        x[:, torch.randint(0, c, (1,), generator=g), 1::7, 2::9] = 1000.0
    elif kind == "alternating signs":  # over rows, columns and channels
        grid = (torch.arange(c).view(c, 1, 1) + torch.arange(h).view(h, 1) + torch.arange(w))
        x = (1 - 2 * (grid % 2)).float().expand(n, c, h, w) * (1 + 0.1 * torch.rand(shape, generator=g))
    elif kind == "near the safe bound":  # max|x| * sum|w| ~ 1e29 (SAFE_BOUND 1e30): no overflow
        x = torch.randn(shape, generator=g) * (1e29 / (8 * c ** 0.5))
    else:  # subnormal: 1e-40 is below float32's smallest normal (1.2e-38)
        x = torch.randn(shape, generator=g) * 1e-40
    return x.contiguous()


@pytest.mark.parametrize("kind", ["bright pixel", "alternating signs", "near the safe bound", "subnormal"])
@pytest.mark.parametrize("shape", [(1, 64, 64, 17, 23), (2, 8, 5, 9, 9), (1, 256, 32, 12, 8)], ids=str)
def test_adversarial_tiles(kind, shape):
    """The tile bound (TILE_TOL) holds on the inputs that stress it most: high dynamic range
    inside a tile, cancellation, values near the largest the fused modules let through, and
    subnormals; every output finite."""
    n, c, k, h, w = shape
    g = torch.Generator().manual_seed(len(kind) * 1000 + c)
    for bias, residual, relu in [(False, False, False), (True, True, True)]:
        x = _adversarial(kind, (n, c, h, w), g)
        check_case(n, c, k, h, w, "contiguous", bias, residual, relu, seed=c, x=x)


def test_the_bound_is_per_tile_not_per_output():
    """What the bound does not say: an output far below its tile's largest value is not within
    a float32 rounding of itself (the direct convolution is: winograd=False keeps that)."""
    x = torch.full((1, 64, 8, 8), 0.01)
    x[0, 0, 5, 2] = 1000.0  # in the 6x6 input tile of outputs (4..7, 0..3), out of column 0's reach
    wt = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0)) / 24
    out = conv3x3_winograd(x, winograd_weight(wt))
    direct = F.conv2d(x, wt, padding=1)
    ref = F.conv2d(x.double(), wt.double(), padding=1)
    scale = F.conv2d(x.double().abs(), wt.double().abs(), padding=1)
    far = (slice(None), slice(None), slice(4, 8), 0)
    assert scale[far].max() < 1  # no tap on the bright pixel (one would weigh 1000 |w| ~ 40)
    assert ((direct.double() - ref).abs() / scale).max() < 1e-5  # direct: per output
    assert ((out.double() - ref).abs() / scale)[far].max() > 2e-5  # Winograd: per tile
    assert ((out.double() - ref).abs() <= tile_bound(x, wt, ref.abs())).all()


def test_generic_kernels(tmp_path):
    """The generic (non-AVX2) copies of the transforms, in a child with ATEN_CPU_CAPABILITY=default."""
    run_generic_cpu("from test_winograd import run_fuzz\nrun_fuzz(2, 200)\nprint('generic ok')\n",
                    tmp_path)


def test_residual_may_be_read_from_any_layout_and_is_left_alone():
    x, wt = torch.randn(2, 8, 9, 10), torch.randn(6, 8, 3, 3)
    r = torch.randn(2, 6, 9, 10)
    r0 = r.clone()
    a = conv3x3_winograd(x, winograd_weight(wt), None, r, False)
    b = conv3x3_winograd(x, winograd_weight(wt), None, r.contiguous(memory_format=torch.channels_last), False)
    assert torch.equal(a, b) and torch.equal(r, r0)


SETUP = """
import torch
from fpnops.ops.winograd import winograd_weight
X, WT = torch.randn(2, 8, 9, 9), torch.randn(4, 8, 3, 3)
V, B, R = winograd_weight(WT), torch.randn(4), torch.randn(2, 4, 9, 9)
op = torch.ops.fpnops.conv3x3_winograd
"""

BAD = [
    ("x 3-D", "op(X[0], V, B, None, True)", "RuntimeError",
     r"^conv3x3_winograd: x must be a 4-D strided float32 CPU tensor, got 3-D Float"),
    ("x float64", "op(X.double(), V, B, None, True)", "RuntimeError", r"x must be .* got 4-D Double"),
    ("x sparse", "op(X.to_sparse(), V, B, None, True)", "RuntimeError", r"x must be .*Sparse"),
    ("x mkldnn", "op(X.to_mkldnn(), V, B, None, True)", "RuntimeError", r"x must be .*Mkldnn"),
    ("weight dense 4-D", "op(X, WT, B, None, True)", "RuntimeError",
     r"weight must be a \(36, C, K\) float32 CPU tensor \(winograd_weight's\), got \[4, 8, 3, 3\]"),
    ("weight 16 positions", "op(X, V[:16], B, None, True)", "RuntimeError", r"got \[16, 8, 4\]"),
    ("weight float64", "op(X, V.double(), B, None, True)", "RuntimeError", r"weight must be .* Double"),
    ("weight sparse", "op(X, V.to_sparse(), B, None, True)", "RuntimeError", r"weight must be .*Sparse"),
    ("channels", "op(X[:, :6], V, B, None, True)", "RuntimeError",
     r"x has 6 channels, weight expects 8"),
    ("bias shape", "op(X, V, torch.randn(5), None, True)", "RuntimeError",
     r"bias must be a strided float32 CPU vector of 4 values, got \[5\]"),
    ("bias 2-D", "op(X, V, B[:, None], None, True)", "RuntimeError", r"bias must be .* got \[4, 1\]"),
    ("bias float64", "op(X, V, B.double(), None, True)", "RuntimeError", r"bias must be .* Double"),
    ("bias sparse", "op(X, V, B.to_sparse(), None, True)", "RuntimeError", r"bias must be .*Sparse"),
    ("residual shape", "op(X, V, B, R[:, :3], True)", "RuntimeError",
     r"residual must be a strided float32 CPU tensor of shape \[2, 4, 9, 9\], got \[2, 3, 9, 9\]"),
    ("residual float16", "op(X, V, B, R.half(), True)", "RuntimeError", r"residual must be .* Half"),
    ("residual sparse", "op(X, V, B, R.to_sparse(), True)", "RuntimeError", r"residual must be .*Sparse"),
    ("x meta", "op(X.to('meta'), V, B, None, True)", ("NotImplementedError", "RuntimeError"),
     r"conv3x3_winograd"),
    ("x list", "op([1.0], V, B, None, True)", "RuntimeError", r"for argument 'x'"),
    ("winograd_weight 1x1", "winograd_weight(torch.randn(4, 8, 1, 1))", "ValueError",
     r"^winograd_weight: weight must be \(K, C, 3, 3\), got \(4, 8, 1, 1\)"),
    ("winograd_weight 3-D", "winograd_weight(torch.randn(4, 3, 3))", "ValueError",
     r"weight must be \(K, C, 3, 3\), got \(4, 3, 3\)"),
]


def test_bad_inputs():
    assert_bad_inputs(BAD, SETUP)


W128 = torch.empty(128, 128, 3, 3)
PLAIN = ((1, 1), (1, 1), (1, 1), 1)


@pytest.mark.parametrize("weight, shape, args, expected", [
    (W128, (1, 128, 8, 8), PLAIN, True),
    (W128, (2, 128, 50, 33), PLAIN, True),
    (W128, (1, 128, 7, 64), PLAIN, False),  # a side under MIN_SIDE
    (torch.empty(64, 64, 3, 3), (1, 64, 64, 64), PLAIN, True),
    (torch.empty(32, 32, 3, 3), (1, 32, 64, 64), PLAIN, False),  # fewer channels: not measured
    (torch.empty(256, 32, 3, 3), (1, 32, 64, 64), PLAIN, False),
    (torch.empty(32, 256, 3, 3), (1, 256, 64, 64), PLAIN, False),
    (W128, (1, 128, 64, 64), ((2, 2), (1, 1), (1, 1), 1), False),  # strided
    (W128, (1, 128, 64, 64), ((1, 1), (2, 2), (2, 2), 1), False),  # dilated
    (W128, (1, 128, 64, 64), ((1, 1), (0, 0), (1, 1), 1), False),  # unpadded
    (torch.empty(128, 64, 3, 3), (1, 128, 64, 64), ((1, 1), (1, 1), (1, 1), 2), False),  # grouped
    (torch.empty(128, 128, 1, 1), (1, 128, 64, 64), ((1, 1), (0, 0), (1, 1), 1), False),
    (torch.empty(128, 128, 5, 5), (1, 128, 64, 64), ((1, 1), (2, 2), (1, 1), 1), False),
    (W128.double(), (1, 128, 64, 64), PLAIN, False),
])
def test_applies(weight, shape, args, expected):
    assert winograd.applies(shape, weight, args) is expected


def _winograd_convs(model, size):
    """How many of the model's convs the rule picks at an input of `size` (hooks on every conv
    record their input shapes in an eager run)."""
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, a: shapes.append((m, a[0].shape)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))  # the shapes do not depend on N
    for h in hooks:
        h.remove()
    return sum(winograd.applies(s, m.weight, (m.stride, m.padding, m.dilation, m.groups))
               for m, s in shapes)


@pytest.mark.parametrize("ctor", [torchvision.models.resnet50, torchvision.models.resnet34])
def test_fused_resnets_run_winograd_within_tolerance(ctor, monkeypatch):
    model = randomize_bn(ctor()).eval()
    expected = _winograd_convs(model, 128)
    assert expected >= 11  # layer1 (32x32), 2 (16x16) and 3 (8x8); layer4 (4x4) is under MIN_SIDE
    fused = fpnops.fuse(model)
    x = torch.randn(1, 3, 128, 128)
    calls = count_fused_convs(monkeypatch)
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        out = fused(x)
        out_cl = fused(x.contiguous(memory_format=torch.channels_last))
    assert calls.count("winograd") == 2 * expected
    assert len(calls) == 2 * fused_conv_count(model)
    # shared/DESIGN.md: far under 1e-4 in float32 for a whole ResNet
    assert rel_err(out, ref) < 1e-5 and rel_err(out_cl, ref) < 1e-5


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
def test_fused_block_follows_weight_updates_and_modes(kind):
    """The cached Winograd weights refresh as the folded ones do: an in-place weight update,
    train() and back, under inference_mode."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    block = Bottleneck(512, 128) if kind == "bottleneck" else BasicBlock(128, 128)
    block = randomize_bn(block).eval()
    fused = (FusedBottleneck if kind == "bottleneck" else FusedBasicBlock).from_module(copy.deepcopy(block))
    x = torch.randn(1, block.conv1.in_channels, 10, 9)
    for step in range(3):
        with torch.inference_mode():
            assert rel_err(fused(x), block.double()(x.double())) < 1e-5
        block.float()
        with torch.no_grad():  # the same update on both: fused keeps the original parameters
            for m in (block, fused):
                m.conv2.weight.mul_(1.5 if step == 0 else -1.0)
        if step == 1:
            fused.train()
            fused.eval()


# --- FusedFPN with exact=False (what fpnops.fuse makes with fold_bn=True) -----------------------

def _fpn_and_pyramid(channels=64, sizes=((20, 18), (10, 9), (5, 5)), n=2):
    """A torchvision FPN (random biases) and a channels_last float32 pyramid for it."""
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork([16, 32, 48], channels, extra_blocks=LastLevelMaxPool()).eval()
    for m in fpn.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.bias)
    x = {f"c{i}": torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
         for i, (c, (h, w)) in enumerate(zip([16, 32, 48], sizes))}
    return fpn, x


def _count_winograd(monkeypatch):
    calls = []
    real = torch.ops.fpnops.conv3x3_winograd
    monkeypatch.setattr(torch.ops.fpnops, "conv3x3_winograd",
                        lambda *args: calls.append(tuple(args[0].shape)) or real(*args))
    return calls


def test_fpn_exact_false_runs_winograd_output_convs(monkeypatch):
    fpn, x = _fpn_and_pyramid()
    approx = fpnops.FusedFPN.from_module(fpn, copy=True, exact=False)
    exact = fpnops.FusedFPN.from_module(fpn, copy=True)
    calls = _count_winograd(monkeypatch)
    with torch.no_grad():
        ref = copy.deepcopy(fpn).double()({k: v.double() for k, v in x.items()})
        got, bits = approx(x), exact(x)
        eager = fpn(x)
    assert sorted(calls) == [(2, 64, 10, 9), (2, 64, 20, 18)]  # the 5x5 level is under MIN_SIDE
    for k in eager:
        assert torch.equal(bits[k], eager[k])  # exact=True (the default): torchvision's bits
        assert got[k].is_contiguous(memory_format=torch.channels_last)
        assert rel_err(got[k], ref[k]) < 1e-5
    assert not torch.equal(got["c0"], eager["c0"])  # it did round differently
    assert torch.equal(got["c2"], eager["c2"])  # the level it did not touch


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 3e38])
def test_fpn_exact_false_runs_the_exact_conv_on_maps_not_proven_finite(value, monkeypatch):
    """A non-finite value (or one whose conv could overflow) reaching a 3x3 output conv: the
    exact conv runs, and the outputs are eager's bits, inf and NaN where eager has them."""
    fpn, x = _fpn_and_pyramid()
    x["c0"][1, 3, 7, 5] = value
    approx = fpnops.FusedFPN.from_module(fpn, copy=True, exact=False)
    calls = _count_winograd(monkeypatch)
    with torch.no_grad():
        got, eager = approx(x), fpn(x)
    assert (2, 64, 20, 18) not in calls  # the finest level's map holds the value
    assert torch.equal(got["c0"].isnan(), eager["c0"].isnan())
    assert torch.equal(got["c0"].nan_to_num(), eager["c0"].nan_to_num())


def test_fuse_sets_exact_from_fold_bn_and_copies_keep_it():
    import io
    import pickle
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    model = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5).eval()
    fpns = lambda m: [f for f in m.modules() if isinstance(f, fpnops.FusedFPN)]  # noqa: E731
    (approx,) = fpns(fpnops.fuse(model))
    (exact,) = fpns(fpnops.fuse(model, fold_bn=False))
    assert approx.exact is False and exact.exact is True
    for copied in (copy.deepcopy(approx), pickle.loads(pickle.dumps(approx))):
        assert copied.exact is False
    buf = io.BytesIO()
    torch.save(approx, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).exact is False
    with pytest.raises(TypeError, match="exact must be True or False, got 1"):
        fpnops.FusedFPN.from_module(approx, exact=1)


def test_fpn_winograd_weights_follow_weight_updates():
    fpn, x = _fpn_and_pyramid()
    approx = fpnops.FusedFPN.from_module(fpn, copy=True, exact=False)
    with torch.no_grad():
        for step in range(3):
            ref = copy.deepcopy(fpn).double()({k: v.double() for k, v in x.items()})
            assert rel_err(approx(x)["c0"], ref["c0"]) < 1e-5
            for m in (fpn, approx):
                m.layer_blocks[0][0].weight.mul_(-1.5)
                if step == 1:
                    m.layer_blocks[0][0].bias.add_(1.0)


def test_threads_on_one_fused_model_get_the_single_thread_result():
    """4 threads with 2 input shapes on one fused ResNet (Winograd weights built and cached
    while the others run): each gets what it gets alone."""
    from helpers import run_threads
    model = randomize_bn(torchvision.models.resnet18()).eval()
    inputs = [torch.randn(1, 3, 64, 64), torch.randn(2, 3, 72, 80)]
    with torch.no_grad():
        expected = [fpnops.fuse(model)(x) for x in inputs]
        fused = fpnops.fuse(model)
        got = {}

        def work(k):
            with torch.no_grad():
                for _ in range(3):
                    got[k] = fused(inputs[k % 2])

        assert run_threads(work, 4) == []
    assert _winograd_convs(model, 64) > 0
    for k, y in got.items():
        assert torch.equal(y, expected[k % 2]), k


# --- winograd=False: no Winograd anywhere, every other fusion kept ----------------------------

def _bright_image(size=64):
    x = torch.full((1, 3, size, size), 0.01)
    x[0, :, size // 2, size // 3] = 1000.0
    return x


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fuse_winograd_false_runs_no_winograd_and_keeps_every_other_fusion(layout, monkeypatch):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    torch.manual_seed(0)
    model = randomize_bn(resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                             trainable_layers=5)).eval()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(1, 3, 128, 128).contiguous(memory_format=fmt)
    calls = count_fused_convs(monkeypatch)
    with torch.no_grad():
        on, off = fpnops.fuse(model), fpnops.fuse(model, winograd=False)
        on(x)
        wino_on = calls.count("winograd")
        calls.clear()
        out = off(x)
        ref = copy.deepcopy(model).double()(x.double())
    body_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.body.modules())
    assert wino_on > 2  # the body's and the FPN's 3x3 convs Winograd takes (on)
    # off: none, and every conv of the body still fused (the FPN's output convs run as its
    # packed oneDNN convs, which count_fused_convs does not count)
    assert "winograd" not in calls and len(calls) == body_convs
    for k in ref:
        assert rel_err(out[k], ref[k]) < 1e-5
    assert all(m.winograd is False for m in off.modules() if hasattr(type(m), "winograd"))


def test_winograd_false_gives_per_output_agreement_on_a_bright_pixel():
    """The case the switch is for: dim outputs beside a bright pixel agree with eager to float32
    rounding of their own size, block by block."""
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18()).eval()
    eager = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.layer1, model.layer2)
    fused = fpnops.fuse(eager, winograd=False)
    x = _bright_image()
    with torch.no_grad():
        out, ref = fused(x), copy.deepcopy(eager).double()(x.double())
        mid = ref.abs().median()
    big = ref.abs() > mid  # the outputs that are not cancellations
    assert ((out.double() - ref).abs()[big] / ref.abs()[big]).max() < 1e-3


def test_fpn_winograd_false_and_the_flag_on_fused_modules(monkeypatch):
    fpn, x = _fpn_and_pyramid()
    off = fpnops.FusedFPN.from_module(fpn, copy=True, exact=False, winograd=False)
    calls = _count_winograd(monkeypatch)
    with torch.no_grad():
        eager = fpn(x)
        got = off(x)
    assert calls == []
    for k in eager:  # no Winograd, exact=False: the same packed convs as exact=True
        assert torch.equal(got[k], eager[k])
    block = FusedBasicBlock.from_module(randomize_bn(torchvision.models.resnet.BasicBlock(128, 128)).eval())
    y = torch.randn(1, 128, 12, 12)
    with torch.no_grad():
        block(y)
        assert calls  # Winograd ran, and its weights are cached
        calls.clear()
        block.winograd = False  # drops the cache: the next call packs oneDNN weights
        block(y)
    assert calls == [] and "winograd=False" in repr(block)
    for copied in (copy.deepcopy(block), pickle.loads(pickle.dumps(block)), copy.deepcopy(off)):
        assert copied.winograd is False
    with pytest.raises(TypeError, match="winograd must be True or False, got 0"):
        block.winograd = 0
    with pytest.raises(TypeError, match="winograd must be True or False, got 'no'"):
        fpnops.fuse(fpn, winograd="no")
