"""The benchmark cases of `python -m fpnops bench`, by suite.

A case holds the eager PyTorch baseline ("eager"), torch.compile of that same baseline
("compile") and fpnops' versions of it ("native"/"triton" for the ops, "fpnops" for modules),
what each must produce (`expected`, and how close: `tol`, `eager_factor`), and the bytes a fused
memory-bound op must move at least (for GB/s). The inference cases (the ops, the FPN forward,
the backbones) run every impl under torch.inference_mode(), as inference runs; the FPN
forward+backward runs with autograd. Cases are built lazily: listing a suite costs nothing,
building a case allocates its tensors and models. The module cases (fpn, backbone) also time what a user
pays before the first call: fpnops.fuse() / FusedFPN.from_module() and the torch.compile() call
(`setup_ms`); the bench then times each impl's first call, compiling from a cold cache.
"""
import contextlib
import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import fpnops
from fpnops import _backend
from fpnops.bench.timing import wall_ms

SUITES = ("ops", "fpn", "backbone")
RESNET50_PYRAMID = ((256, 4), (512, 8), (1024, 16), (2048, 32))  # C2..C5: channels, stride


@dataclass
class Case:
    name: str
    params: dict
    impls: Dict[str, Callable]           # "eager" first; every impl returns a tensor or a dict/tuple
    expected: Callable                    # the output every impl is checked against
    tol: Dict[str, float]                 # max relative error per impl; 0.0: bit-identical
    nbytes: Optional[int] = None          # minimum memory traffic (memory-bound ops): GB/s
    compile_config: dict = field(default_factory=dict)  # inductor config while compiling
    # Module cases: ms to build an impl from the eager model ("fpnops": fuse / from_module,
    # "compile": the torch.compile() call); the bench then times first calls too, compiling from
    # a cold cache. None (the ops): no setup figures.
    setup_ms: Optional[Dict[str, float]] = None
    # Half dtypes against a float64 reference: an impl may also be off by this many times eager's
    # own error in the same run (its tol: max(tol, eager_factor x eager's)). None: tol as given.
    eager_factor: Optional[float] = None


@dataclass
class Settings:
    device: str
    dtype: torch.dtype
    batch: int
    size: tuple
    layout: str
    quick: bool
    compile_mode: Optional[str]          # None: no torch.compile baseline

    @property
    def memory_format(self):
        return torch.channels_last if self.layout == "channels_last" else torch.contiguous_format

    def randn(self, *shape):
        t = torch.randn(*shape, device=self.device, dtype=self.dtype)
        return t.contiguous(memory_format=self.memory_format) if t.dim() == 4 else t

    def compiled(self, fn):
        mode = None if self.compile_mode == "default" else self.compile_mode
        return torch.compile(fn, mode=mode)

    def loose_tol(self):
        """What a correct float computation that rounds differently (folded BN, another conv
        algorithm, another summation order) may differ by, relative to a float64 reference.
        float32 is IEEE float32 on every device (ieee_float32); half dtypes: the floor of
        eager_factor's rule."""
        return 1e-4 if self.dtype in (torch.float32, torch.float64) else 2e-2

    def eager_factor(self):
        """Case.eager_factor for a float64 reference: None for float32 (1e-4 holds), 2 for half
        dtypes, whose error grows with depth (eager bfloat16 ResNet50 alone is ~1e-2 off)."""
        return None if self.dtype in (torch.float32, torch.float64) else 2.0


@contextlib.contextmanager
def ieee_float32(device):
    """float32 convolutions and matmuls in IEEE float32 while the bench runs (restored after);
    yields what float32 means in this run. On CUDA, cuDNN runs float32 convs in TF32 by default
    (torch.backends.cudnn.allow_tf32 is True; the per-op API of torch >= 2.9 says the same,
    torch.backends.cudnn.conv.fp32_precision == "tf32"), which eager, compile and fpnops' native
    conv (at::convolution) follow and fpnops' Triton 1x1 conv does not (tl.dot in "ieee"): a
    correct TF32 conv is ~1e-3 off, and the float32 rows would compare unlike things. CPU
    float32 is IEEE already: nothing changes."""
    if device != "cuda":
        yield "IEEE"
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # The legacy switches set the per-op flags too and keep both views alike; inductor reads
    # both. Their getter refuses a process that set the per-op flags itself: then those.
    switches = [(cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]
    try:
        saved = [getattr(obj, name) for obj, name, _ in switches]
    except RuntimeError:
        switches = [(obj, "fp32_precision", "ieee") for obj in (cudnn.conv, cudnn.rnn, matmul)]
        saved = [getattr(obj, name) for obj, name, _ in switches]
    try:
        for obj, name, off in switches:
            setattr(obj, name, off)
        yield "IEEE (TF32 off)"
    finally:
        for (obj, name, _), value in zip(switches, saved):
            setattr(obj, name, value)


def level_size(size, stride):
    return tuple(math.ceil(s / stride) for s in size)


def randomize_bn(model, seed=0):
    """BatchNorm statistics and affine parameters away from (0, 1, 1, 0), so folding matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_var", None) is not None:
                for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0),
                                  (m.weight, 0.5, 1.5), (m.bias, -0.5, 0.5)):
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model


def _fused_op_backends(device):
    names = ["native"] if _backend.native_runs_on(device) else []
    if device == "cuda" and _backend.triton_runs_on("cuda"):
        names.append("triton")  # on CPU Triton only interprets: far too slow to time
    return names


def _with_baselines(s, eager, others):
    impls = {"eager": eager}
    if s.compile_mode:
        impls["compile"] = s.compiled(eager)
    impls.update(others)
    return impls


def _inference(impls):
    """Each impl called under torch.inference_mode(), as inference runs (torch.compile traces
    it so too): no autograd bookkeeping is timed."""
    def under(fn):
        def run():
            with torch.inference_mode():
                return fn()
        return run
    return {k: under(fn) for k, fn in impls.items()}


# --- ops: upsample_add and conv_bn_act on the shapes a ResNet50-FPN gives them -----------------

def _upsample_add_case(s, level):
    from fpnops.ops.upsample_add import upsample_add_reference
    stride = 2 ** level
    h, w = level_size(s.size, stride)
    th, tw = level_size(s.size, 2 * stride)
    lat, top = s.randn(s.batch, 256, h, w), s.randn(s.batch, 256, th, tw)
    impls = _inference(_with_baselines(s, lambda: upsample_add_reference(top, lat), {
        b: (lambda b=b: fpnops.upsample_add(top, lat, backend=b)) for b in _fused_op_backends(s.device)}))
    tol = {k: 0.0 for k in impls}  # nearest upsample + one rounded add: exact everywhere
    return Case(f"upsample_add P{level} {s.batch}x256x{h}x{w}", {"op": "upsample_add", "level": level,
                "lateral_shape": list(lat.shape), "top_shape": list(top.shape)},
                impls, lambda: upsample_add_reference(top, lat), tol,
                nbytes=(2 * lat.numel() + top.numel()) * lat.element_size())


# (in, out, kernel, residual): the three convs of a ResNet50 layer1 bottleneck, at stride 4
BOTTLENECK_CONVS = {"1x1 256->64": (256, 64, 1, False), "3x3 64->64": (64, 64, 3, False),
                    "1x1 64->256 +res": (64, 256, 1, True)}


def _conv_bn_act_case(s, which):
    cin, cout, k, with_res = BOTTLENECK_CONVS[which]
    h, w = level_size(s.size, 4)
    conv, bn = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)
    eager_mod = randomize_bn(nn.Sequential(conv, bn)).eval()
    ref64 = copy.deepcopy(eager_mod).to(s.device, torch.float64)
    eager_mod = eager_mod.to(s.device, s.dtype, memory_format=s.memory_format)
    x = s.randn(s.batch, cin, h, w)
    res = s.randn(s.batch, cout, h, w) if with_res else None
    # cached by the fused modules; detached, as those are: the op must not run its autograd path
    weight, bias = (t.detach() for t in fpnops.fold_conv_bn(eager_mod[0], eager_mod[1]))

    def eager():  # what the fusion replaces: conv, BN, (add,) ReLU as separate kernels
        y = eager_mod(x)
        return F.relu(y + res if res is not None else y)

    def expected():
        y = ref64(x.double())
        return F.relu(y + res.double() if res is not None else y)

    fused = {b: (lambda b=b: fpnops.conv_bn_act(x, weight, bias, padding=k // 2, residual=res, backend=b))
             for b in _fused_op_backends(s.device) if b != "triton" or k == 1}
    impls = _inference(_with_baselines(s, eager, fused))
    return Case(f"conv_bn_act {which} {s.batch}x{cin}x{h}x{w}",
                {"op": "conv_bn_act", "conv": which, "input_shape": list(x.shape)},
                impls, expected, {k_: s.loose_tol() for k_ in impls}, eager_factor=s.eager_factor())


def _setup(s, eager, convert, to_compile):
    """(convert(eager), torch.compile of to_compile or None, {impl: ms that step took}) for a
    module case; torch.compile() itself only wraps: it compiles at the first call."""
    fused, ms = wall_ms(lambda: convert(eager), s.device)
    setup, compiled = {"fpnops": ms}, None
    if s.compile_mode:
        compiled, setup["compile"] = wall_ms(lambda: s.compiled(to_compile), s.device)
    return fused, compiled, setup


# --- fpn: the FPN neck (torchvision's, as detectors use it) -------------------------------------

def _fpn_case(s, mode):
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    train = mode == "fwd+bwd"
    tv = FeaturePyramidNetwork([c for c, _ in RESNET50_PYRAMID], 256, extra_blocks=LastLevelMaxPool())
    tv = tv.to(device=s.device, dtype=s.dtype, memory_format=s.memory_format).train(train)
    fused, compiled, setup_ms = _setup(s, tv, fpnops.FusedFPN.from_module, tv)
    feats = OrderedDict((str(i), s.randn(s.batch, c, *level_size(s.size, st)).requires_grad_(train))
                        for i, (c, st) in enumerate(RESNET50_PYRAMID))

    def step(model):
        if not train:
            with torch.inference_mode():
                return model(feats)
        out = model(feats)
        sum(v.float().sum() for v in out.values()).backward()
        return {k: v.detach() for k, v in out.items()}

    models = {"eager": tv, **({"compile": compiled} if s.compile_mode else {}), "fpnops": fused}
    impls = {k: (lambda m=m: step(m)) for k, m in models.items()}

    def expected():
        with torch.no_grad():
            return tv(feats)

    tol = {k: s.loose_tol() for k in impls}
    tol["fpnops"] = 0.0  # FusedFPN is bit-identical to torchvision's FPN
    c2 = level_size(s.size, 4)
    return Case(f"FPN neck {mode} {s.batch}x256x{c2[0]}x{c2[1]} (P2)", {"mode": mode}, impls, expected, tol,
                setup_ms=setup_ms)


# --- backbone: ResNet50 and ResNet50-FPN inference ----------------------------------------------

class _ResNet50Body(nn.Module):
    """torchvision ResNet50 up to C5 (no pooling / fc), as a detector uses it."""

    def __init__(self):
        super().__init__()
        import torchvision
        from torchvision.models._utils import IntermediateLayerGetter
        self.body = IntermediateLayerGetter(torchvision.models.resnet50(), {"layer4": "c5"})

    def forward(self, x):
        return self.body(x)["c5"]


def _resnet50_fpn():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    return resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)


BACKBONES = {"resnet50": _ResNet50Body, "resnet50_fpn": _resnet50_fpn}


def _backbone_case(s, name):
    torch.manual_seed(0)
    model = randomize_bn(BACKBONES[name]()).eval()
    ref64 = copy.deepcopy(model).to(s.device, torch.float64)
    eager = model.to(device=s.device, dtype=s.dtype, memory_format=s.memory_format)
    # compile gets its own copy: freezing may fold the weights of the module it compiles.
    fused, compiled, setup_ms = _setup(s, eager, fpnops.fuse, copy.deepcopy(eager) if s.compile_mode else None)
    x = s.randn(s.batch, 3, *s.size)
    models = {"eager": eager}
    if s.compile_mode:
        models["compile"] = compiled
    models["fpnops"] = fused

    def run(m):
        with torch.inference_mode():
            return m(x)

    def expected():
        with torch.no_grad():
            return ref64(x.double())

    impls = {k: (lambda m=m: run(m)) for k, m in models.items()}
    return Case(f"{name} {s.batch}x3x{s.size[0]}x{s.size[1]}", {"model": name}, impls, expected,
                {k: s.loose_tol() for k in impls}, eager_factor=s.eager_factor(),
                compile_config={"freezing": True}, setup_ms=setup_ms)


def cases(suite, s):
    """[(case label, builder)] for one suite under settings s; builder() -> Case."""
    if suite == "ops":
        levels = (2, 3) if s.quick else (2, 3, 4)
        convs = ("1x1 64->256 +res",) if s.quick else tuple(BOTTLENECK_CONVS)
        return ([(f"upsample_add P{lv}", lambda lv=lv: _upsample_add_case(s, lv)) for lv in levels] +
                [(f"conv_bn_act {c}", lambda c=c: _conv_bn_act_case(s, c)) for c in convs])
    if suite == "fpn":
        modes = ("fwd",) if s.quick else ("fwd", "fwd+bwd")
        return [(f"FPN neck {m}", lambda m=m: _fpn_case(s, m)) for m in modes]
    if suite == "backbone":
        names = ("resnet50_fpn",) if s.quick else tuple(BACKBONES)
        return [(n, lambda n=n: _backbone_case(s, n)) for n in names]
    raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
