"""The fused ResNet modules' folded-weight cache (fpnops/nn/_cache.py, README "The folded-weight
cache"): never stale, never copied, thread-safe, and right under inference_mode, no_grad and
autograd in any order. Every case compares with an eager copy of the same model in the same
state."""
import copy
import io
import itertools
import pickle

import pytest
import torch
import torch.nn as nn
import torchvision
from fused_models import basic_block, bottleneck, randomize_bn, same_state
from helpers import run_threads
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

import fpnops
from fpnops.nn import FusedBottleneck, FusedConvBNAct
from fpnops.reference import ResNet34


def _seq():
    return randomize_bn(nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(2))).eval()


def _resnet10():
    """torchvision's ResNet (its stem is fused by subclassing), one BasicBlock per stage; the
    two widest stages dropped to keep the tests fast."""
    model = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
    model.layer3, model.layer4, model.fc = nn.Identity(), nn.Identity(), nn.Linear(128, 10)
    return randomize_bn(model).eval()


def _resnet34_reference():
    """The reference ResNet34 (its _stem is fused by subclassing), narrowed as _resnet10."""
    model = ResNet34(num_classes=None)
    model.layer2 = model.layer3 = model.layer4 = nn.Identity()
    return randomize_bn(model).eval()


def _getter():
    return IntermediateLayerGetter(_resnet10(), {"bn1": "stem_bn", "layer1": "c2", "layer2": "c3"})


# name -> (model, input shape); each fused model holds at least one _FoldedWeights
KINDS = {
    "bottleneck": (bottleneck, (2, 16, 9, 11)),
    "basic": (basic_block, (2, 8, 9, 11)),
    "frozen_bottleneck": (lambda: bottleneck(norm_layer=FrozenBatchNorm2d), (2, 16, 9, 11)),
    "sequential": (_seq, (2, 16, 9, 11)),
    "resnet10": (_resnet10, (1, 3, 35, 37)),
    "layergetter": (_getter, (1, 3, 35, 37)),
}
RESNET34 = (_resnet34_reference, (1, 3, 35, 37))  # only where its stem's class matters


def _outputs(y):
    if isinstance(y, dict):
        return list(y.values())
    return list(y) if isinstance(y, (tuple, list)) else [y]


def assert_same(fused, eager, x, tol=1e-5):
    """fused(x) equals eager(x) (to float32 folding rounding), NaN-free, same structure."""
    with torch.no_grad():
        out, ref = _outputs(fused(x)), _outputs(eager(x))
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        assert o.shape == r.shape and o.dtype == r.dtype
        err = ((o.double() - r.double()).norm() / r.double().norm()).item()
        assert err < tol, err


def _caches(model):
    return [m._fpnops_cache for m in model.modules() if "_fpnops_cache" in m.__dict__]


def _built(model):
    """How many folded entries the model's caches hold."""
    return sum(p.folded is not None for c in _caches(model) for p in c._pairs.values())


def _first_conv_bn(model):
    mods = list(model.modules())
    for a, b in zip(mods, mods[1:]):
        if isinstance(a, nn.Conv2d) and isinstance(b, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            return a, b
    raise AssertionError("no conv -> BN")


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


def make(kind):
    ctor, shape = RESNET34 if kind == "resnet34_reference" else KINDS[kind]
    model = ctor()
    return fpnops.fuse(model), model, torch.randn(shape)


def test_every_kind_fuses_and_caches(kind):
    fused, eager, x = make(kind)
    assert _caches(fused)
    assert_same(fused, eager, x)
    assert _built(fused) > 0


def test_in_place_change_of_a_parameter_or_buffer(kind):
    fused, eager, x = make(kind)
    assert_same(fused, eager, x)
    conv, bn = _first_conv_bn(fused)
    with torch.no_grad():
        conv.weight.mul_(-1.5)
        bn.running_var.mul_(3.0)
    assert_same(fused, same_state(fused, eager), x)


def test_data_change_needs_refresh(kind):
    """`.data` has its own version counter: fpnops.refresh(model) makes the change seen."""
    fused, eager, x = make(kind)
    assert_same(fused, eager, x)
    conv, bn = _first_conv_bn(fused)
    conv.weight.data.mul_(2.0)
    bn.running_mean.data.add_(0.5)
    assert fpnops.refresh(fused) is fused
    assert _built(fused) == 0
    assert_same(fused, same_state(fused, eager), x)


def test_replaced_parameter_and_module(kind):
    fused, eager, x = make(kind)
    assert_same(fused, eager, x)
    conv, bn = _first_conv_bn(fused)
    conv.weight = nn.Parameter(torch.randn_like(conv.weight) * 0.1)  # same storage size
    assert_same(fused, same_state(fused, eager), x)
    for parent in fused.modules():  # a BN module replaced by another with other statistics
        for name, child in parent.named_children():
            if child is bn:
                setattr(parent, name, randomize_bn(copy.deepcopy(bn)))
    assert_same(fused, same_state(fused, eager), x)


@pytest.mark.parametrize("frozen", [False, True], ids=["BatchNorm2d", "FrozenBatchNorm2d"])
def test_eps_change(frozen):
    fused, eager, x = make("frozen_bottleneck" if frozen else "bottleneck")
    assert_same(fused, eager, x)
    for m in itertools.chain(fused.modules(), eager.modules()):
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            m.eps = 0.75
    assert_same(fused, eager, x)


def test_training_forward_then_eval(kind):
    """A training-mode forward updates running statistics in place without bumping their
    versions: through the fused module, and through the BN module called on its own."""
    fused, eager, x = make(kind)
    assert_same(fused, eager, x)
    fused.train()
    with torch.no_grad():
        fused(x)
    fused.eval()
    assert_same(fused, same_state(fused, eager), x)
    _, bn = _first_conv_bn(fused)
    if isinstance(bn, nn.BatchNorm2d):  # behind the fused module's back
        bn.train()
        with torch.no_grad():
            bn(torch.randn(4, bn.num_features, 5, 5) * 3 + 1)
        bn.eval()
        assert_same(fused, same_state(fused, eager), x)


def test_train_eval_to_and_load_state_dict_drop_the_cache():
    fused, eager, x = make("resnet10")
    assert_same(fused, eager, x)
    fused.train().eval()
    assert _built(fused) == 0
    assert_same(fused, eager, x)
    fused.double()  # .to(): same Parameters, new storages
    assert _built(fused) == 0
    assert_same(fused, eager.double(), x.double(), tol=1e-12)
    fused.float(), eager.float()
    src = _resnet10()
    fused.load_state_dict(src.state_dict())
    assert _built(fused) == 0
    assert_same(fused, src, x)
    other = _resnet10()
    fused.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects
    assert_same(fused, other, x)


@pytest.mark.parametrize("order", list(itertools.permutations(["inference", "no_grad", "autograd"])),
                         ids="-".join)
def test_grad_modes_in_any_order(order):
    """The cache is filled with normal tensors whatever mode it is filled under, so a later
    autograd call can save them for backward. Parameters frozen: autograd (x requires grad)
    then uses the cache too."""
    fused, eager, _ = make("bottleneck")
    for m in (fused, eager):
        m.requires_grad_(False)
    for mode in order * 2:
        x = torch.randn(2, 16, 9, 11)
        if mode == "autograd":
            xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
            out, ref = fused(xf), eager(xe)
            g = torch.randn_like(ref)
            out.backward(g)
            ref.backward(g)
            assert ((xf.grad - xe.grad).norm() / xe.grad.norm()).item() < 1e-5
        else:
            ctx = torch.inference_mode() if mode == "inference" else torch.no_grad()
            with ctx:
                out, ref = fused(x), eager(x)
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    assert _built(fused) > 0


def test_model_fused_under_inference_mode():
    """Its parameters are inference tensors (no version counter): tracked by identity and
    storage; changed in place inside inference_mode, they need fpnops.refresh."""
    eager = bottleneck()
    with torch.inference_mode():
        fused = fpnops.fuse(copy.deepcopy(eager), inplace=True)  # the copy: inference tensors
        assert fused.conv1.weight.is_inference()
        x = torch.randn(2, 16, 9, 11)
        assert_same(fused, eager, x)
    assert_same(fused, eager, x)  # and outside it
    with torch.inference_mode():
        fused.conv2.weight.mul_(2.0)
        fpnops.refresh(fused)
        ref = copy.deepcopy(eager)
        ref.conv2.weight.data.mul_(2.0)
        assert_same(fused, ref, x)
        fused.load_state_dict(eager.state_dict())  # copied into inference tensors: seen
        assert_same(fused, eager, x)


def test_autograd_on_weights_folds_afresh_and_caches_nothing():
    fused, eager, x = make("frozen_bottleneck")
    fused.train(), eager.train()
    out, ref = fused(x), eager(x)
    out.square().sum().backward()
    ref.square().sum().backward()
    assert _built(fused) == 0
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    for (n, p), q in zip(fused.named_parameters(), eager.parameters()):
        assert ((p.grad - q.grad).norm() / q.grad.norm()).item() < 1e-4, n


def test_threads_share_one_block():
    """8 threads x 12 input shapes (3x the packed LRU: constant eviction) on one block give what
    one thread gives. A tiny switch interval makes the threads interleave inside the cache."""
    fused = fpnops.fuse(basic_block(4))
    xs = [torch.randn(1, 4, 3 + i, 3 + i % 5) for i in range(12)]
    with torch.no_grad():
        expected = [fused(x) for x in xs]
    mismatches = []

    def work(k):
        for i in range(25 * len(xs)):
            j = (i + k) % len(xs)
            with torch.no_grad():
                y = fused(xs[j])
            if not torch.equal(y, expected[j]):
                mismatches.append(j)

    errors = run_threads(work, 8)
    assert not errors, errors[:3]
    assert not mismatches
    lru = fused._fpnops_cache._packed["conv1"]
    assert 0 < len(lru) <= fused._fpnops_cache.PACKED_SHAPES


def _round_trips():
    def saved(m):
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)
    return {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
            "torch.save": saved, "fuse": fpnops.fuse}


# every kind through deepcopy and torch.save; pickle and fuse(fused) share their mechanism
COPIES = [(k, h) for k in list(KINDS) + ["resnet34_reference"] for h in ("deepcopy", "torch.save")]
COPIES += [(k, h) for k in ("bottleneck", "sequential", "layergetter") for h in ("pickle", "fuse")]


@pytest.mark.parametrize("kind,how", COPIES)
def test_copies_after_forwards(kind, how):
    """deepcopy, pickle, torch.save and fuse(fused) after forwards (the cache then holds opaque
    oneDNN tensors): the copy starts with empty caches and computes the same."""
    fused, eager, x = make(kind)
    assert_same(fused, eager, x)
    copied = _round_trips()[how](fused)
    assert type(copied) is type(fused)
    assert _caches(copied) and _built(copied) == 0
    assert_same(copied, eager, x)
    assert_same(fused, eager, x)
    for a, b in zip(copied.parameters(), fused.parameters()):
        assert a is not b and torch.equal(a, b)


def test_torch_save_of_a_submodule_after_forward():
    fused, eager, x = make("resnet10")
    assert_same(fused, eager, x)
    buf = io.BytesIO()
    torch.save(fused.layer1, buf)
    buf.seek(0)
    layer1 = torch.load(buf, weights_only=False)
    y = torch.randn(1, 64, 9, 10)
    assert_same(layer1, eager.layer1, y)


def _hook_log(model, log):
    """Forward pre-hooks and hooks on every submodule, logging (name, kind, input/output sum)."""
    for name, m in model.named_modules():
        if name:
            m.register_forward_pre_hook(lambda m, a, n=name: log.append((n, "pre", a[0].sum().item())))
            m.register_forward_hook(lambda m, a, o, n=name: log.append((n, "out", o.sum().item())))


@pytest.mark.parametrize("kind", ["bottleneck", "basic", "sequential", "resnet10", "layergetter"])
def test_hooks_added_after_fusing_see_what_they_see_in_eager(kind):
    """Hooks registered after fuse() (and after a cached forward) are not bypassed: the call runs
    the original module's own forward, in its own order."""
    fused, eager, x = make(kind)
    assert_same(fused, eager, x)
    log_f, log_e = [], []
    _hook_log(fused, log_f)
    _hook_log(eager, log_e)
    assert_same(fused, eager, x)
    assert [e[:2] for e in log_f] == [e[:2] for e in log_e]
    for (n, k, a), (_, _, b) in zip(log_f, log_e):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (n, k, a, b)


def test_one_hook_on_a_bypassed_module_and_global_hooks():
    fused, eager, x = make("bottleneck")
    seen = []
    handle = fused.downsample[1].register_forward_hook(lambda m, a, o: seen.append(o.clone()))
    assert_same(fused, eager, x)
    assert len(seen) == 1
    with torch.no_grad():
        torch.testing.assert_close(seen[0], eager.downsample(x), rtol=0, atol=0)
    handle.remove()
    calls = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: calls.append(type(m).__name__))
    try:
        assert_same(fused, eager, x)
    finally:
        handle.remove()
    assert calls.count("Conv2d") == 2 * 4 and calls.count("BatchNorm2d") == 2 * 4  # fused and eager


def test_refresh_checks_its_argument_and_reaches_every_cache():
    with pytest.raises(TypeError, match="refresh: model must be an nn.Module, got dict"):
        fpnops.refresh({})
    fused, eager, x = make("layergetter")
    assert_same(fused, eager, x)
    assert len(_caches(fused)) > 2 and _built(fused) > 0
    fpnops.refresh(fused)
    assert _built(fused) == 0 and all(not c._packed for c in _caches(fused))


def test_sequential_from_module_and_fused_cache_is_a_module_attribute():
    seq = _seq()
    fused = FusedConvBNAct.from_module(seq)
    assert "_fpnops_cache" in fused.__dict__ and isinstance(fpnops.fuse(bottleneck()), FusedBottleneck)
    assert_same(fused, seq, torch.randn(1, 16, 7, 9))
