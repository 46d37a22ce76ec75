"""Bad input to the fused ResNet modules (forward under no_grad, where CPU float32 takes the
prepacked oneDNN path, and under autograd, where it takes the public op), to from_module and to
fpnops.refresh: a ValueError/TypeError/RuntimeError naming the module, the conv and the
argument; never a crash (stride 0 once killed the process with SIGFPE in oneDNN's reorder).
Run in a child interpreter (helpers.assert_bad_inputs), so that a crash fails its case."""
from helpers import assert_bad_inputs

SETUP = r"""
import torch, torch.nn as nn, fpnops
from torchvision.models.resnet import BasicBlock, Bottleneck
from fpnops.nn import FusedBasicBlock, FusedBottleneck, FusedConvBNAct

def bottleneck(dtype=torch.float32):
    ds = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
    return fpnops.fuse(Bottleneck(16, 8, downsample=ds).eval().to(dtype))

def basic(**conv1):
    b = BasicBlock(8, 8).eval()
    for k, v in conv1.items():
        setattr(b.conv1, k, v)
    return fpnops.fuse(b)

def seq(*mods):
    return fpnops.fuse(nn.Sequential(*mods).eval())

def run(model, x, grad):
    if grad:  # the autograd path (x requires grad): the public conv_bn_act
        return model(x.requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
    with torch.no_grad():  # CPU float32: the prepacked path
        return model(x)
"""

X16 = "torch.randn(1, 16, 9, 9)"
X8 = "torch.randn(1, 8, 9, 9)"

# (id, forward code with {grad}, exception, message regex): each runs with grad False and True
FORWARD = [
    ("stride 0 (was SIGFPE)", f"run(seq(nn.Conv2d(8, 8, 1, stride=0, bias=False), nn.BatchNorm2d(8)), {X8}, {{grad}})",
     "ValueError", r"FusedConvBNAct\.0: stride must be >= 1, got stride=\(0, 0\)"),
    ("stride 0 in a block", f"b = bottleneck(); b.conv2.stride = (0, 0); run(b, {X16}, {{grad}})",
     "ValueError", r"FusedBottleneck\.conv2: stride must be >= 1, got stride=\(0, 0\)"),
    ("wrong channel count", f"run(bottleneck(), {X8}, {{grad}})",
     "ValueError", r"FusedBottleneck\.conv1: x has 8 channels, conv1 expects 16"),
    ("wrong channel count, stem", "m = fpnops.fuse(__import__('torchvision').models.resnet18().eval()); "
     "run(m, torch.randn(1, 4, 32, 32), {grad})",
     "ValueError", r"FusedResNet\.conv1: x has 4 channels, conv1 expects 3"),
    ("3-D input", "run(bottleneck(), torch.randn(16, 9, 9), {grad})",
     "ValueError", r"FusedBottleneck: x must be 4-D \(N, C, H, W\), got 3-D with shape \(16, 9, 9\)"),
    ("3-D input, Sequential", "run(seq(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)), torch.randn(8, 9, 9), {grad})",
     "ValueError", r"FusedConvBNAct: x must be 4-D"),
    ("float64 model, float32 x", f"run(bottleneck(torch.float64), {X16}, {{grad}})",
     "TypeError", r"FusedBottleneck\.conv1: x is torch\.float32, conv1\.weight is torch\.float64"),
    ("float32 model, float64 x", f"run(bottleneck(), {X16}.double(), {{grad}})",
     "TypeError", r"FusedBottleneck\.conv1: x is torch\.float64, conv1\.weight is torch\.float32"),
    ("integer x", "run(bottleneck(), torch.ones(1, 16, 9, 9, dtype=torch.int64), {grad})",
     "TypeError", r"FusedBottleneck\.conv1: x is torch\.int64"),
    ("x not a tensor", "run(bottleneck(), [[1.0]], {grad})",
     "TypeError", r"FusedBottleneck: x must be a torch\.Tensor, got list"),
    ("smaller than the kernel", "run(seq(nn.Conv2d(8, 8, 5), nn.BatchNorm2d(8), nn.ReLU()), torch.randn(1, 8, 3, 3), {grad})",
     "ValueError", r"FusedConvBNAct\.0: .*x \(1, 8, 3, 3\) is smaller than the kernel \(5, 5\)"),
    ("smaller than the kernel, block", "run(basic(padding=(0, 0)), torch.randn(1, 8, 2, 2), {grad})",
     "ValueError", r"FusedBasicBlock\.conv1: .*smaller than the kernel \(3, 3\)"),
    ("negative padding", f"run(basic(padding=(-1, -1)), {X8}, {{grad}})",
     "ValueError", r"FusedBasicBlock\.conv1: padding must be >= 0, got padding=\(-1, -1\)"),
    ("groups changed", f"run(basic(groups=3), {X8}, {{grad}})",
     "ValueError", r"FusedBasicBlock\.conv1: x has 8 channels, conv1 expects 24"),
    ("residual shape", f"b = basic(stride=(2, 2)); run(b, {X8}, {{grad}})",
     "ValueError", r"FusedBasicBlock\.conv2: .*residual must have the output's shape \(1, 8, 5, 5\), "
                   r"got \(1, 8, 9, 9\)"),
]

CASES = [(f"{name} [{'autograd' if grad else 'no_grad'}]", code.format(grad=grad), exc, pattern)
         for name, code, exc, pattern in FORWARD for grad in (False, True)]

CASES += [
    ("from_module: not a block", "FusedBottleneck.from_module(nn.Linear(2, 2))",
     "TypeError", r"FusedBottleneck\.from_module: m must be torchvision's or fpnops\.reference's "
                  r"Bottleneck, got Linear \(it lacks \['conv1', 'bn1'"),
    ("from_module: other kind", "FusedBasicBlock.from_module(Bottleneck(16, 4))",
     "TypeError", r"FusedBasicBlock\.from_module: m must be .*BasicBlock, got Bottleneck"),
    ("from_module: None", "FusedBasicBlock.from_module(None)",
     "TypeError", r"FusedBasicBlock\.from_module: m must be .*, got NoneType"),
    ("from_module: reflect padding", "b = BasicBlock(8, 8); b.conv2.padding_mode = 'reflect'; "
     "FusedBasicBlock.from_module(b)",
     "TypeError", r"FusedBasicBlock\.from_module: conv2/bn2 of BasicBlock: padding=\(1, 1\), "
                  r"padding_mode='reflect' has no explicit symmetric zero padding"),
    ("from_module: GroupNorm", "b = BasicBlock(8, 8); b.bn1 = nn.GroupNorm(2, 8); FusedBasicBlock.from_module(b)",
     "TypeError", r"conv1/bn1 of BasicBlock: GroupNorm is not nn\.BatchNorm2d"),
    ("from_module: ReLU replaced", "b = BasicBlock(8, 8); b.relu = nn.GELU(); FusedBasicBlock.from_module(b)",
     "TypeError", r"FusedBasicBlock\.from_module: relu of BasicBlock must be an nn\.ReLU, got GELU"),
    ("from_module: backend", "FusedBottleneck.from_module(Bottleneck(16, 4), backend='cudnn')",
     "ValueError", r"FusedBottleneck: backend must be one of .*'cudnn'"),
    ("Sequential from_module: not a Sequential", "FusedConvBNAct.from_module(nn.Conv2d(2, 2, 1))",
     "TypeError", r"FusedConvBNAct\.from_module: m must be an nn\.Sequential .*got Conv2d"),
    ("Sequential from_module: backend", "FusedConvBNAct.from_module(nn.Sequential(), backend=3)",
     "ValueError", r"FusedConvBNAct: backend must be one of .*got 3"),
    ("refresh: None", "fpnops.refresh(None)",
     "TypeError", r"fpnops\.refresh: model must be an nn\.Module, got NoneType"),
    ("refresh: a tensor", "fpnops.refresh(torch.randn(2))",
     "TypeError", r"fpnops\.refresh: model must be an nn\.Module, got Tensor"),
]


def test_bad_inputs():
    assert_bad_inputs(CASES, setup=SETUP)


# --- the same error class as eager -----------------------------------------------------------
# Where eager raises (mostly RuntimeError), fpnops' checks raise an error that is eager's class
# too (fpnops/_errors.py: InputError is a ValueError and a RuntimeError, InputTypeError a
# TypeError and a RuntimeError), so `except RuntimeError` written against eager still catches
# it; the messages still name the module, the conv and the argument.

EAGER_SETUP = r"""
import torch, torch.nn as nn, torchvision, fpnops
from collections import OrderedDict
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FeaturePyramidNetwork

def bottleneck():
    ds = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
    return Bottleneck(16, 8, downsample=ds).eval()

def seq():
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()

def fpn():
    return FeaturePyramidNetwork([8, 16], 8).eval()

def levels(c0=8, c1=16, dims=4, dtype=torch.float32):
    shape = lambda c, s: (2, c, s, s)[4 - dims:] if dims <= 4 else (1, 2, c, s, s)
    return OrderedDict(a=torch.randn(shape(c0, 8), dtype=dtype), b=torch.randn(shape(c1, 4), dtype=dtype))

def call(m, x, grad):
    if grad:
        return m(x.requires_grad_() if isinstance(x, torch.Tensor) else x)
    with torch.no_grad():
        return m(x)
"""

# (id, model, input, regex the fused message must match)
AS_EAGER = [
    ("block: channels", "bottleneck()", "torch.randn(1, 8, 9, 9)", r"FusedBottleneck\.conv1: x has 8 channels"),
    ("block: 5-D", "bottleneck()", "torch.randn(1, 1, 16, 9, 9)", r"FusedBottleneck: x must be 4-D"),
    ("block: float64 x", "bottleneck()", "torch.randn(1, 16, 9, 9).double()",
     r"FusedBottleneck\.conv1: x is torch\.float64"),
    ("block: 3-D", "bottleneck()", "torch.randn(16, 9, 9)", r"FusedBottleneck: x must be 4-D"),
    ("Sequential: channels", "seq()", "torch.randn(1, 4, 9, 9)", r"FusedConvBNAct\.0: x has 4 channels"),
    ("Sequential: 5-D", "seq()", "torch.randn(1, 1, 8, 9, 9)", r"FusedConvBNAct: x must be 4-D"),
    ("Sequential: float64 x", "seq()", "torch.randn(1, 8, 9, 9).double()", r"FusedConvBNAct\.0: x is torch\.float64"),
    ("ResNet stem: channels", "torchvision.models.resnet18().eval()", "torch.randn(1, 4, 32, 32)",
     r"FusedResNet\.conv1: x has 4 channels"),
    ("ResNet: float64 x", "torchvision.models.resnet18().eval()", "torch.randn(1, 3, 32, 32).double()",
     r"FusedResNet\.conv1: x is torch\.float64"),
    ("FPN: channels", "fpn()", "levels(c1=12)", r"FusedFPN: x\['b'\] must have 16 channels"),
    ("FPN: batch sizes", "fpn()", "OrderedDict(a=torch.randn(2, 8, 8, 8), b=torch.randn(3, 16, 4, 4))",
     r"FusedFPN: the maps of x have batch sizes"),
    ("FPN: 5-D", "fpn()", "levels(dims=5)", r"FusedFPN: x\['a'\] must be 4-D"),
]


def _eager_error(model, x, grad):
    """The class eager raises for this input (the test fails where eager raises nothing)."""
    env = {}
    exec(EAGER_SETUP, env)
    try:
        exec(f"call({model}, {x}, {grad})", env)
    except Exception as e:  # noqa: BLE001 - the class is what we compare
        return type(e).__name__
    raise AssertionError(f"eager raised nothing for {model}({x})")


def test_errors_are_eager_class_too():
    cases = []
    for name, model, x, pattern in AS_EAGER:
        for grad in (False, True):
            expected = _eager_error(model, x, grad)
            assert expected in ("RuntimeError", "ValueError"), (name, expected)  # what eager raises here
            cases.append((f"{name} [{'autograd' if grad else 'no_grad'}] as eager's {expected}",
                          f"call(fpnops.fuse({model}), {x}, {grad})", expected, pattern))
    assert sum("RuntimeError" in c[0] for c in cases) >= 16
    assert_bad_inputs(cases, setup=EAGER_SETUP)


def test_error_classes_are_both():
    import fpnops
    from fpnops._errors import InputError, InputTypeError
    assert issubclass(InputError, ValueError) and issubclass(InputError, RuntimeError)
    assert issubclass(InputTypeError, TypeError) and issubclass(InputTypeError, RuntimeError)
    import torch
    for call in (lambda: fpnops.conv_bn_act(torch.randn(1, 3, 5, 5), torch.randn(4, 2, 1, 1)),
                 lambda: fpnops.upsample_add(torch.randn(1, 3, 2, 2), torch.randn(1, 4, 4, 4))):
        try:
            call()
        except RuntimeError as e:  # eager's F.conv2d / add raise RuntimeError here
            assert isinstance(e, ValueError)
        else:
            raise AssertionError("no error")
