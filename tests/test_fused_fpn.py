"""FusedFPN: a drop-in for torchvision's FeaturePyramidNetwork and the reference FPN, and
fpnops.fuse() over the models that hold them."""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torchvision
from helpers import backends_for, run_threads
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

import fpnops
from fpnops.nn import FusedReferenceFPN
from fpnops.reference import FPN, DetectionModel

CHANNELS = [16, 24, 32, 40]


def features(dtype=torch.float32, layout=torch.contiguous_format, sizes=((41, 59), (21, 30), (11, 15), (6, 8))):
    return OrderedDict((f"feat{i}", torch.randn(2, c, h, w, dtype=dtype).contiguous(memory_format=layout))
                       for i, (c, (h, w)) in enumerate(zip(CHANNELS, sizes)))


def extra_blocks():
    return {"none": None, "pool": LastLevelMaxPool(), "p6p7": LastLevelP6P7(8, 8)}


def assert_same_outputs(a, b, exact=True):
    assert list(a.keys()) == list(b.keys())
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k])


# --- drop-in contract ----------------------------------------------------------------------

@pytest.mark.parametrize("extra", ["none", "pool", "p6p7"])
@pytest.mark.parametrize("norm", [None, nn.BatchNorm2d])
def test_same_names_state_dict_and_outputs(extra, norm):
    torch.manual_seed(1)
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=extra_blocks()[extra], norm_layer=norm).eval()
    torch.manual_seed(1)
    ours = fpnops.FusedFPN(CHANNELS, 8, extra_blocks=extra_blocks()[extra], norm_layer=norm).eval()
    # Same construction, same initialisation order: identical parameters without loading.
    assert list(ours.state_dict().keys()) == list(tv.state_dict().keys())
    for (k, a), b in zip(ours.state_dict().items(), tv.state_dict().values()):
        assert torch.equal(a, b), k
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in tv.named_modules()]
    x = features()
    with torch.no_grad():
        assert_same_outputs(ours(x), tv(x))
    names = list(ours(x).keys())
    assert names[:4] == list(x.keys()) and names[4:] == {"none": [], "pool": ["pool"],
                                                         "p6p7": ["p6", "p7"]}[extra]


def test_loads_torchvision_checkpoints_including_version_1():
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    ours = fpnops.FusedFPN(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    ours.load_state_dict(tv.state_dict())
    x = features()
    assert_same_outputs(ours(x), tv(x))
    # torchvision < 0.13 saved `inner_blocks.0.weight` (version 1); both remap it.
    v1 = OrderedDict((k.replace(".0.weight", ".weight").replace(".0.bias", ".bias"), v)
                     for k, v in tv.state_dict().items())
    v1._metadata = OrderedDict({"": {"version": 1}})
    fresh = fpnops.FusedFPN(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    fresh.load_state_dict(v1)
    assert_same_outputs(fresh(x), tv(x))


def test_repr_and_bad_arguments():
    m = fpnops.FusedFPN(CHANNELS, 8, backend="torch")
    assert "backend='torch'" in repr(m)
    with pytest.raises(ValueError, match="backend must be one of.*'fast'"):
        fpnops.FusedFPN(CHANNELS, 8, backend="fast")
    with pytest.raises(ValueError, match="in_channels=0"):
        fpnops.FusedFPN([16, 0], 8)
    with pytest.raises(TypeError, match="extra_blocks should be an ExtraFPNBlock.*str"):
        fpnops.FusedFPN(CHANNELS, 8, extra_blocks="pool")
    with pytest.raises(TypeError, match="from_module: expected .* got Linear"):
        fpnops.FusedFPN.from_module(nn.Linear(2, 2))


# --- from_module --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backends_for("cpu"))
def test_from_module_torchvision_shares_weights(backend):
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelP6P7(8, 8)).eval()
    fused = fpnops.FusedFPN.from_module(tv, backend=backend)
    assert fused.inner_blocks[0][0].weight is tv.inner_blocks[0][0].weight
    assert not fused.training
    x = features()
    assert_same_outputs(fused(x), tv(x))
    copied = fpnops.FusedFPN.from_module(tv, copy=True)
    assert copied.inner_blocks[0][0].weight is not tv.inner_blocks[0][0].weight
    assert_same_outputs(copied(x), tv(x))


@pytest.mark.parametrize("variant", ["notebook", "paper"])
def test_from_module_reference_fpn_keeps_call_convention(variant):
    ref = FPN(CHANNELS, 8, variant=variant).eval()
    fused = fpnops.FusedFPN.from_module(ref)
    assert isinstance(fused, FusedReferenceFPN) and fused.variant == variant
    assert fused.state_dict().keys() == ref.state_dict().keys()
    sizes = [(32, 48), (16, 24), (8, 12), (4, 6)] if variant == "paper" else [(33, 49), (17, 25), (9, 13), (5, 7)]
    cs = [torch.randn(1, c, h, w) for c, (h, w) in zip(CHANNELS, sizes)]
    with torch.no_grad():
        a, b = ref(*cs), fused(*cs)
    assert len(a) == len(b) == (4 if variant == "paper" else 5)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


# --- bit-identical in eval, every dtype and layout; the detection backbone on an odd image ---

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_bit_identical_every_dtype_and_layout(dtype, layout):
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval().to(dtype)
    fused = fpnops.FusedFPN.from_module(tv)
    x = features(dtype, layout)
    with torch.no_grad():
        assert_same_outputs(fused(x), tv(x))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_resnet_fpn_backbone_odd_image(layout):
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5).eval()
    backbone = backbone.to(memory_format=layout)
    fused = fpnops.fuse(backbone, fold_bn=False)  # only the FPN: bit-exact
    assert isinstance(fused.fpn, fpnops.FusedFPN) and type(backbone.fpn) is FeaturePyramidNetwork
    img = torch.randn(1, 3, 801, 1199).contiguous(memory_format=layout)
    with torch.no_grad():
        a, b = backbone(img), fused(img)
    assert list(a.keys()) == ["0", "1", "2", "3", "pool"]
    assert_same_outputs(a, b)


# --- training: gradients equal the source's --------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=str)
def test_gradients_match(dtype, tol):
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelP6P7(8, 8),
                               norm_layer=nn.BatchNorm2d).to(dtype).train()
    fused = fpnops.FusedFPN.from_module(tv, copy=True).train()
    x1 = OrderedDict((k, v.requires_grad_()) for k, v in features(dtype).items())
    x2 = OrderedDict((k, v.detach().clone().requires_grad_()) for k, v in x1.items())
    out_a, out_b = tv(x1), fused(x2)
    grads = [torch.randn_like(v) for v in out_a.values()]
    torch.autograd.backward(list(out_a.values()), grads)
    torch.autograd.backward(list(out_b.values()), grads)
    for k in x1:
        torch.testing.assert_close(x2[k].grad, x1[k].grad, atol=tol, rtol=tol)
    for (n, p), q in zip(fused.named_parameters(), tv.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=tol, rtol=tol, msg=n)
    for (n, b), c in zip(fused.named_buffers(), tv.buffers()):  # BatchNorm running stats
        torch.testing.assert_close(b, c, atol=tol, rtol=tol, msg=n)


# --- compile, autocast, export, TorchScript --------------------------------------------------

def test_torch_compile_fullgraph():
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    fused = fpnops.FusedFPN.from_module(tv)
    x = features()
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True)
    with torch.no_grad():
        ref, out = tv(x), compiled(x)
    assert_same_outputs(ref, out, exact=False)  # inductor may reorder the convs' rounding


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast(dtype):
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    fused = fpnops.FusedFPN.from_module(tv)
    x = features()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        a, b = tv(x), fused(x)
    assert all(v.dtype == dtype for v in b.values())
    assert_same_outputs(a, b)


def test_torch_export():
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    fused = fpnops.FusedFPN.from_module(tv)
    x = features()
    ep = torch.export.export(fused, (x,))
    assert any("fpnops.upsample_add" in str(n.target) for n in ep.graph.nodes)
    assert_same_outputs(ep.module()(x), tv(x))


def test_torch_jit_script():
    """torchvision's FPN is scriptable, and so is FusedFPN: it calls the op directly there."""
    tv = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    scripted = torch.jit.script(fpnops.FusedFPN.from_module(tv))
    x = features()
    assert "fpnops::upsample_add" in str(scripted.graph) or "fpnops::upsample_add" in str(scripted.inlined_graph)
    assert_same_outputs(scripted(x), tv(x))


# --- fuse() over whole models ------------------------------------------------------------------

def test_fuse_leaves_input_alone_unless_inplace():
    model = DetectionModel(backbone="resnet34").eval()
    fused = fpnops.fuse(model, fold_bn=False)
    assert type(model.fpn) is FPN and isinstance(fused.fpn, FusedReferenceFPN)
    assert fused.backbone is not model.backbone  # a deep copy: the input is untouched
    assert fused.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for (o1, b1), (o2, b2) in zip(model(x), fused(x)):
            assert torch.equal(o1, o2) and torch.equal(b1, b2)
    same = fpnops.fuse(model, inplace=True, fold_bn=False)
    assert same is model and isinstance(model.fpn, FusedReferenceFPN)


def test_fuse_root_module_and_unrelated_models():
    tv = FeaturePyramidNetwork(CHANNELS, 8)
    assert isinstance(fpnops.fuse(tv), fpnops.FusedFPN)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    fused = fpnops.fuse(plain)
    assert [type(m) for m in fused] == [nn.Conv2d, nn.ReLU]
    with pytest.raises(TypeError, match="model must be an nn.Module, got int"):
        fpnops.fuse(3)


def test_fasterrcnn_same_boxes_after_fuse():
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=224, max_size=320, box_score_thresh=0.0).eval()
    fused = fpnops.fuse(model, fold_bn=False)
    assert isinstance(fused.backbone.fpn, fpnops.FusedFPN)
    img = [torch.rand(3, 211, 287)]
    with torch.no_grad():
        a, b = model(img)[0], fused(img)[0]
    assert a["boxes"].shape[0] > 0
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(a[k], b[k]), k
    # With the backbone's conv-BN folded too, rounding moves: the same detections, scores and
    # boxes agree closely (near-tied scores may swap places in the ranking).
    with torch.no_grad():
        c = fpnops.fuse(model)(img)[0]
    assert c["boxes"].shape == a["boxes"].shape
    torch.testing.assert_close(c["scores"], a["scores"], atol=1e-4, rtol=0)
    for box, label, score in zip(c["boxes"], c["labels"], c["scores"]):
        same = (a["labels"] == label) & ((a["scores"] - score).abs() < 1e-4) & \
               ((a["boxes"] - box).abs().amax(dim=1) < 0.05)  # px
        assert same.any(), (box, label, score)


def test_retinanet_and_maskrcnn_fuse():
    for ctor in (torchvision.models.detection.retinanet_resnet50_fpn,
                 torchvision.models.detection.maskrcnn_resnet50_fpn):
        model = ctor(weights=None, weights_backbone=None)
        fused = fpnops.fuse(model)
        fpns = [m for m in fused.modules() if isinstance(m, fpnops.FusedFPN)]
        assert len(fpns) == 1 and not any(type(m) is FeaturePyramidNetwork for m in fused.modules())
        assert fused.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("shapes", [
    [(2, 16, 16, 16), (1, 24, 8, 8), (2, 32, 4, 4)],                   # a batch of 1 broadcasts
    [(1, 16, 16, 16), (1, 24, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2)],    # more maps than levels
    [(1, 16, 16, 16), (1, 24, 8, 8), (1, 32, 4, 4), (1, 8, 3, 3), (1, 32, 2, 2)],  # one passes through
    [(1, 16, 16, 16), (1, 32, 4, 4)],                                  # fewer maps than levels
], ids=["broadcast", "more_maps", "pass_through", "fewer_maps"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_unusual_inputs_compute_what_torchvision_computes(shapes, layout):
    """torchvision's FPN picks a block per map (the last block for the coarsest) and broadcasts
    a batch of 1 in its adds: FusedFPN does the same, where it used to raise (channels_last:
    on packed convs, the lateral summed into the upsampled top where it can be)."""
    tv = FeaturePyramidNetwork(CHANNELS[:3], 8).eval()
    fused = fpnops.FusedFPN.from_module(tv)
    x = OrderedDict((str(i), torch.randn(s).contiguous(memory_format=layout))
                    for i, s in enumerate(shapes))
    with torch.no_grad():
        assert_same_outputs(fused(x), tv(x))


# --- packed convs (CPU float32 inference, channels_last) ------------------------------------------

def _packed_entries(fused):
    return sum(len(lru) for lru in fused._fpnops_cache._packed.values())


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_packed_convs_are_eager_bit_for_bit_and_follow_weight_changes(mode):
    """channels_last CPU float32 inference runs each plain conv on a weight oneDNN reordered
    once per input shape: the same bits as torchvision's FPN, rebuilt where a weight changes in
    place or is replaced, and (.data changes) after fpnops.refresh."""
    torch.manual_seed(0)
    ref = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    fused = fpnops.FusedFPN.from_module(ref, copy=True)
    x = features(layout=torch.channels_last)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with ctx():
        assert_same_outputs(fused(x), ref(x))
        assert _packed_entries(fused) == 2 * len(CHANNELS)
        assert_same_outputs(fused(x), ref(x))  # from the cache
    bias = torch.randn(8)
    for m in (ref, fused):
        with torch.no_grad():
            m.layer_blocks[0][0].weight.mul_(-2.0)
            m.inner_blocks[1][0].bias = nn.Parameter(bias.clone())
    with ctx():
        assert_same_outputs(fused(x), ref(x))
    for m in (ref, fused):
        m.inner_blocks[2][0].weight.data.mul_(3.0)  # unseen by version counters
    fpnops.refresh(fused)
    with ctx():
        assert_same_outputs(fused(x), ref(x))


@pytest.mark.parametrize("case", ["nchw", "autograd", "hook", "backend torch", "eval->train"])
def test_packed_convs_only_where_eager_would_compute_the_same(case):
    """NCHW input (eager's output would be NCHW), autograd, a hook on a conv, backend="torch":
    the block runs itself (same output, same layout, the hook called), nothing packed (the
    hooked conv only: the others are)."""
    torch.manual_seed(0)
    ref = FeaturePyramidNetwork(CHANNELS, 8).eval()
    fused = fpnops.FusedFPN.from_module(ref, copy=True, backend="torch" if case == "backend torch" else "auto")
    x = features(layout=torch.contiguous_format if case == "nchw" else torch.channels_last)
    called = []
    if case == "hook":
        for m in (ref, fused):
            m.inner_blocks[0][0].register_forward_hook(lambda *a: called.append(1))
    if case == "eval->train":  # train() and eval() drop the packed weights
        with torch.no_grad():
            fused(x)
        assert _packed_entries(fused) == 2 * len(CHANNELS)
        fused.train().eval()
        assert _packed_entries(fused) == 0
    with torch.set_grad_enabled(case == "autograd"):
        out, expect = fused(x), ref(x)
    assert_same_outputs(out, expect)
    for k in out:
        assert out[k].stride() == expect[k].stride()
    packed = {"hook": 2 * len(CHANNELS) - 1, "eval->train": 2 * len(CHANNELS)}.get(case, 0)
    assert _packed_entries(fused) == packed
    assert case != "hook" or len(called) == 2


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_packed_convs_after_copies(how):
    """A FusedFPN whose cache holds opaque oneDNN weights, copied: the copy starts with an empty
    cache (nothing opaque pickled), computes the same bits, and its parameters are its own."""
    import copy
    import io
    import pickle
    torch.manual_seed(0)
    ref = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    fused = fpnops.FusedFPN.from_module(ref, copy=True)
    x = features(layout=torch.channels_last)
    with torch.no_grad():
        fused(x)
    assert _packed_entries(fused) == 2 * len(CHANNELS)

    def saved(m):
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)
    copied = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
              "torch.save": saved}[how](fused)
    assert type(copied) is type(fused) and isinstance(copied, fpnops.FusedFPN)
    assert isinstance(copied, FeaturePyramidNetwork) and _packed_entries(copied) == 0
    with torch.no_grad():
        assert_same_outputs(copied(x), ref(x))
        assert_same_outputs(fused(x), ref(x))
    for a, b in zip(copied.parameters(), fused.parameters()):
        assert a is not b and torch.equal(a, b)


def test_packed_convs_from_threads():
    """Threads calling one FusedFPN at once with different input shapes (each its own packed
    weights, the cache's LRU changed under its lock) all get eager's bits."""
    torch.manual_seed(0)
    ref = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    fused = fpnops.FusedFPN.from_module(ref, copy=True)
    sizes = [((41, 59), (21, 30), (11, 15), (6, 8)), ((40, 40), (20, 20), (10, 10), (5, 5)),
             ((33, 17), (17, 9), (9, 5), (5, 3))]
    inputs = [features(layout=torch.channels_last, sizes=s) for s in sizes]
    with torch.no_grad():
        expected = [ref(x) for x in inputs]
    mismatches = []

    def work(i):
        for r in range(6):
            k = (i + r) % len(inputs)
            with torch.no_grad():
                out = fused(inputs[k])
            if not all(torch.equal(out[n], expected[k][n]) for n in out):
                mismatches.append((i, r))

    errors = run_threads(work, 4, switch_interval=1e-5)
    assert not errors, errors[:3]
    assert not mismatches
    assert 0 < _packed_entries(fused) <= 2 * len(CHANNELS) * len(sizes)


def _bits(t):
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("values", ["random", "nan_inf_zeros"])
@pytest.mark.parametrize("sizes", [((41, 59), (21, 30), (11, 15), (6, 8)),
                                   ((32, 32), (16, 16), (8, 8), (4, 4)),
                                   ((7, 5), (7, 5), (3, 2), (2, 1)), ((9, 9), (5, 5), (3, 3), (1, 1))],
                         ids=["odd", "2x", "same_size", "one_by_one"])
def test_lateral_summed_into_the_upsampled_top_is_eager_bit_for_bit(sizes, values, monkeypatch):
    """channels_last CPU float32 inference: each lateral 1x1 conv adds its output into the
    upsampled top (no separate upsample_add pass), and every output bit (signed zeros, inf, NaN
    included) is torchvision's; the top it reads is left as it was."""
    import fpnops.nn.fpn as fpn_module
    torch.manual_seed(0)
    ref = FeaturePyramidNetwork(CHANNELS, 8, extra_blocks=LastLevelMaxPool()).eval()
    with torch.no_grad():
        for b in ref.inner_blocks:  # biases of both signs, a -0.0 among them
            b[0].bias.copy_(torch.randn(8))
            b[0].bias[0] = -0.0
    fused = fpnops.FusedFPN.from_module(ref, copy=True)
    x = features(layout=torch.channels_last, sizes=sizes)
    if values == "nan_inf_zeros":
        for i, t in enumerate(x.values()):
            t[:, :, :2] = 0.0  # exact zeros: the conv gives +-0 plus the bias
            flat = t.permute(0, 2, 3, 1).view(-1)  # channels_last: dense in this order
            flat[i::7] = float("nan")
            flat[i + 3::11] = float("inf")
    calls = []
    top_down = fpn_module._top_down
    monkeypatch.setattr(fpn_module, "_top_down", lambda *a, **k: calls.append(1) or top_down(*a, **k))
    before = {k: v.clone() for k, v in x.items()}
    with torch.no_grad():
        out, expect = fused(x), ref(x)
    # every top-down step summed into the upsampled top, but from a 1x1 map: eager's conv runs
    # that in NCHW (not packed), and an NCHW top upsamples to an NCHW map
    assert len(calls) == (1 if sizes[-1] == (1, 1) else 0)
    assert list(out) == list(expect)
    for k in out:
        assert out[k].stride() == expect[k].stride()
        assert torch.equal(_bits(out[k]), _bits(expect[k])), k
    for k in x:
        assert torch.equal(_bits(x[k]), _bits(before[k]))


# --- exact=True in every layout ------------------------------------------------------------

def _map(rng, n, c, h, w):
    """A random map in one of the layouts people hand an FPN: dense NCHW or channels_last, or
    a view with strided rows, columns or channels in either order (a 1x1 or 1xW map included,
    where both formats hold at once)."""
    kind = rng.randrange(6)
    if kind == 0:
        return torch.randn(n, c, h, w), kind
    if kind == 1:
        return torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last), kind
    if kind == 2:  # channels_last, every other column
        return torch.randn(n, h, 2 * w + 1, c).permute(0, 3, 1, 2)[..., ::2], kind
    if kind == 3:  # channels_last, every other channel
        return torch.randn(n, h, w, 2 * c).permute(0, 3, 1, 2)[:, ::2], kind
    if kind == 4:  # NCHW, every other column
        return torch.randn(n, c, h, 2 * w + 1)[..., ::2], kind
    return torch.randn(n, h, c, w).permute(0, 2, 1, 3), kind  # rows outermost


@pytest.mark.parametrize("seed", range(3))
def test_exact_is_bit_identical_in_every_layout(seed):
    """exact=True (the default) keeps torchvision's bits and strides on every level, whatever
    the layout of each input map (a 1x1 map given as a channels_last view was 1 ulp off: eager's
    add lays such a sum out otherwise, and the 3x3 conv then took another algorithm), with
    channel counts that reach oneDNN's convolutions."""
    import random
    rng = random.Random(seed)
    torch.manual_seed(seed)
    chans = [64, 128, 256]
    tv = FeaturePyramidNetwork(chans, 64, extra_blocks=LastLevelMaxPool()).eval()
    for m in tv.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.bias)
    fused = fpnops.FusedFPN.from_module(tv)
    for case in range(40):
        n = rng.choice((1, 2))
        size = [rng.choice((1, 1, 2, 3, 5, 9, 12)) for _ in range(2)]
        sizes = [(max(1, size[0] >> (2 - i)) * 2 ** (2 - i), max(1, size[1] >> (2 - i)) * 2 ** (2 - i))
                 for i in range(3)][::-1]
        if rng.random() < 0.3:  # the coarsest maps 1x1 or 1xW
            sizes = [(rng.choice((1, 2, 4)), rng.choice((1, 3))), (1, rng.choice((1, 2))), (1, 1)]
        x, kinds = OrderedDict(), []
        for i, (c, (h, w)) in enumerate(zip(chans, sizes)):
            t, kind = _map(rng, n, c, h, w)
            x[f"f{i}"] = t
            kinds.append(kind)
        with torch.no_grad():
            ref, out = tv(x), fused(x)
        for k in ref:
            where = (case, k, sizes, kinds, n)
            assert torch.equal(out[k], ref[k]), where
            assert out[k].stride() == ref[k].stride(), where
