"""Fused conv-BatchNorm-ReLU modules for ResNets: FusedConvBNAct, FusedBasicBlock,
FusedBottleneck.

They hold the original submodules under the original names (state_dict keys and checkpoints
are unchanged) and, where BatchNorm uses running statistics (eval mode, or torchvision's
FrozenBatchNorm2d), run each conv-BN(-ReLU) as one fpnops.conv_bn_act on folded weights: the
bias, the residual add and the final ReLU in the conv's epilogue. A live nn.BatchNorm2d in
training mode (batch statistics, running-stat updates) runs the original, unfused math.

Folded weights are cached and refreshed when any parameter or buffer they come from changes
(tensor version counters); when autograd needs them (fine-tuning with frozen BN) they are
folded afresh every call so gradients reach the conv weights.
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from fpnops import _backend
from fpnops.ops.conv_bn_act import conv_bn_act
from fpnops.ops.fold import fold_conv_bn

_BN = nn.modules.batchnorm._BatchNorm


def is_bn(m):
    return isinstance(m, _BN) or type(m).__name__ == "FrozenBatchNorm2d"


def uses_batch_stats(bn):
    """True where BatchNorm normalises with batch statistics: it cannot be folded then."""
    return isinstance(bn, _BN) and (bn.training or bn.running_mean is None)


class _FoldedWeights:
    """Folds (conv, bn) pairs and runs them; caches the folded weights while the source tensors
    are unchanged, and (CPU float32 inference) oneDNN's reorder of them per input shape."""

    PACKED_SHAPES = 4  # input shapes kept per conv (detectors see a few image sizes)

    def __init__(self):
        self._cache = {}  # name -> (key of the sources, (weight, bias), {input shape: packed})

    @staticmethod
    def _sources(conv, bn):
        return [t for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                            bn.running_var) if t is not None]

    def _entry(self, name, conv, bn, sources):
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, fold_conv_bn(conv, bn), OrderedDict())
            self._cache[name] = hit
        return hit

    def get(self, name, conv, bn):
        sources = self._sources(conv, bn)
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and
                                             any(t.requires_grad for t in sources)):
            return fold_conv_bn(conv, bn)  # traced, or differentiable: never cached
        return self._entry(name, conv, bn, sources)[1]

    def conv_bn_act(self, name, conv, bn, x, backend, residual=None, relu=True):
        """relu(bn(conv(x)) + residual) as one fused conv."""
        args = _conv_args(conv)
        sources = self._sources(conv, bn)
        if _prepacked_applies(x, residual, backend, sources):
            _, (weight, bias), packed = self._entry(name, conv, bn, sources)
            shape = tuple(x.shape)
            if shape in packed:
                packed.move_to_end(shape)
            else:
                packed[shape] = torch.ops.mkldnn._reorder_convolution_weight(
                    weight, list(args["padding"]), list(args["stride"]), list(args["dilation"]),
                    args["groups"], list(shape))
                if len(packed) > self.PACKED_SHAPES:
                    packed.popitem(last=False)
            return torch.ops.fpnops.conv_bn_act_cpu_prepacked(
                x, packed[shape], bias, args["stride"], args["padding"], args["dilation"],
                args["groups"], residual, relu)
        weight, bias = self.get(name, conv, bn)
        return conv_bn_act(x, weight, bias, **args, residual=residual, relu=relu, backend=backend)


def _prepacked_applies(x, residual, backend, sources):
    """CPU float32 inference runs in channels_last on weights oneDNN reordered once per input
    shape (what Inductor's freezing does): ~1.1-1.2x over reordering activations and weights at
    every conv. Not under autograd, autocast, tracing, or a backend other than native."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False  # traced: Inductor packs weights itself (with freezing)
    return (x.device.type == "cpu" and x.dtype == torch.float32 and backend in ("auto", "native")
            and x.layout == torch.strided and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                     for t in (x, residual, *sources))))


def _conv_args(conv):
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"fused conv-BN: conv padding {conv.padding!r} / padding_mode "
                         f"{conv.padding_mode!r} is not supported (zeros, explicit ints only)")
    return {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
            "groups": conv.groups}


def run_folding(named_modules, x, folded, backend, on_output=None):
    """Run modules in order, each Conv2d -> BatchNorm (-> ReLU) run as one conv_bn_act on folded
    weights (while the BN uses running statistics). on_output(name, x), if given, sees the
    output of every module (of a fused run: under the run's last name)."""
    mods = list(named_modules)
    i = 0
    while i < len(mods):
        name, m = mods[i]
        bn = mods[i + 1][1] if i + 1 < len(mods) else None
        if isinstance(m, nn.Conv2d) and bn is not None and is_bn(bn) and not uses_batch_stats(bn):
            relu = i + 2 < len(mods) and isinstance(mods[i + 2][1], nn.ReLU)
            x = folded.conv_bn_act(name, m, bn, x, backend, relu=relu)
            i += 2 + relu
        else:
            x = m(x)
            i += 1
        if on_output is not None:
            on_output(mods[i - 1][0], x)
    return x


class FusedConvBNAct(nn.Sequential):
    """A Sequential whose runs of Conv2d -> BatchNorm (-> ReLU) run as one conv_bn_act.

    Same children, same names as the Sequential it replaces (torchvision's
    Conv2dNormActivation, a ResNet stem `Sequential(conv, bn, relu, maxpool)`, a downsample
    `Sequential(conv, bn)`); anything else in it runs as is.
    """

    def __init__(self, *modules, backend="auto"):
        super().__init__(*modules)
        self.backend = _backend.check("FusedConvBNAct", backend)
        self._folded = _FoldedWeights()

    @classmethod
    def from_module(cls, m, *, backend="auto"):
        if not isinstance(m, nn.Sequential):
            raise TypeError(f"FusedConvBNAct.from_module: expected an nn.Sequential of conv, BN "
                            f"(and ReLU), got {type(m).__name__}")
        fused = cls(backend=backend)
        for name, child in m.named_children():
            fused.add_module(name, child)
        return fused.train(m.training)

    def forward(self, x):
        return run_folding(self._modules.items(), x, self._folded, self.backend)

    def extra_repr(self):
        return f"backend={self.backend!r}"


class _FusedBlock(nn.Module):
    """Shared by the block kinds: adopt the source block's children, fold, dispatch."""

    _convs = ()  # (conv, bn) attribute name pairs, in order

    @classmethod
    def from_module(cls, m, *, backend="auto"):
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for name, child in m.named_children():
            fused.add_module(name, child)
        missing = [n for pair in cls._convs for n in pair if not isinstance(getattr(fused, n, None), nn.Module)]
        if missing:
            raise TypeError(f"{cls.__name__}.from_module: {type(m).__name__} lacks {missing}")
        for conv, bn in cls._convs:
            if not isinstance(getattr(fused, conv), nn.Conv2d) or not is_bn(getattr(fused, bn)):
                raise TypeError(f"{cls.__name__}.from_module: {conv}/{bn} of {type(m).__name__} must "
                                f"be Conv2d and BatchNorm2d/FrozenBatchNorm2d")
        if getattr(fused, "downsample", None) is None:
            fused.downsample = None
        fused.stride = getattr(m, "stride", fused.conv1.stride[0])
        fused.backend = _backend.check(cls.__name__, backend)
        fused._folded = _FoldedWeights()
        return fused.train(m.training)

    def _unfused(self):
        bns = [getattr(self, bn) for _, bn in self._convs]
        if isinstance(self.downsample, nn.Sequential):
            bns += [m for m in self.downsample if is_bn(m)]
        return any(uses_batch_stats(bn) for bn in bns)

    def _cba(self, x, conv, bn, relu=True, residual=None):
        return self._folded.conv_bn_act(conv, getattr(self, conv), getattr(self, bn), x, self.backend,
                                        residual=residual, relu=relu)

    def _identity(self, x):
        ds = self.downsample
        if ds is None:
            return x
        if isinstance(ds, nn.Sequential):  # conv -> BN: folded like any other run
            named = ((f"downsample.{n}", m) for n, m in ds.named_children())
            return run_folding(named, x, self._folded, self.backend)
        return ds(x)

    def extra_repr(self):
        return f"backend={self.backend!r}"


class FusedBottleneck(_FusedBlock):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, torchvision's or the reference one), each conv-BN(-ReLU)
    one conv_bn_act; the residual add and final ReLU in conv3's epilogue; the downsample conv+BN
    folded too."""

    _convs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def forward(self, x):
        if self._unfused():
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)
        out = self._cba(x, "conv1", "bn1")
        out = self._cba(out, "conv2", "bn2")
        return self._cba(out, "conv3", "bn3", residual=self._identity(x))


class FusedBasicBlock(_FusedBlock):
    """ResNet basic block (two 3x3 convs); the residual add and final ReLU in conv2's epilogue."""

    _convs = (("conv1", "bn1"), ("conv2", "bn2"))

    def forward(self, x):
        if self._unfused():
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)
        out = self._cba(x, "conv1", "bn1")
        return self._cba(out, "conv2", "bn2", residual=self._identity(x))
