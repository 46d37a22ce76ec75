"""Fused conv-BatchNorm-ReLU modules for ResNets: FusedConvBNAct, FusedBasicBlock,
FusedBottleneck.

They hold the original submodules under the original names (state_dict keys and checkpoints
are unchanged) and, where BatchNorm uses running statistics (eval mode, or torchvision's
FrozenBatchNorm2d), run each conv-BN(-ReLU) as one fused conv on folded weights (_chain.py):
the bias, the residual add and the final ReLU in the conv's epilogue. A child the fused path
may not stand in for (_exact.inlinable: hooks, a forward set on the instance, compiled) is
called through its own forward at eager's position; where the fused path cannot compute a
call at all (a live nn.BatchNorm2d in training mode, a conv or norm _exact does not accept, a
fold that does not fit the dtype, or, CPU float32 inference, an input that could carry NaN or
inf into oneDNN's ReLU), the original module's own forward runs.

Folded weights are cached (fpnops/nn/_cache.py, the contract in the README); when autograd needs
the weights' gradients (fine-tuning with frozen BN) they are folded afresh every call.
"""
import torch
import torch.nn as nn

from fpnops import _backend
from fpnops.nn import _exact, _run
from fpnops.nn._cache import CacheOwner, _FoldedWeights
from fpnops.nn._chain import fused_chain
from fpnops.nn._subclass import fused_class
from fpnops.reference import resnet as _reference


class FusedConvBNAct(CacheOwner, nn.Sequential):
    """A Sequential whose runs of Conv2d -> BatchNorm (-> ReLU) run as one fused conv.

    Same children, same names as the Sequential it replaces (torchvision's
    Conv2dNormActivation, a ResNet stem `Sequential(conv, bn, relu, maxpool)`, a downsample
    `Sequential(conv, bn)`); anything else in it runs as is. Its original math is
    nn.Sequential.forward. winograd: its 3x3 convs may run as Winograd (CPU float32 inference).
    """

    def __init__(self, *modules, backend="auto", winograd=True):
        super().__init__(*modules)
        self.backend = _backend.check("FusedConvBNAct", backend)
        self._fpnops_cache = _FoldedWeights()
        self.winograd = winograd

    @classmethod
    def from_module(cls, m, *, backend="auto", winograd=True):
        """A FusedConvBNAct with m's children (the same modules) and plain attributes. A
        Sequential subclass (torchvision's Conv2dNormActivation) gets an instance of a subclass
        of its own class mixing this one in (fpnops/nn/_subclass.py): isinstance holds, and
        torchvision's FX feature extraction, which keys on the classes of torchvision.ops,
        names its nodes as it does the original's."""
        if not isinstance(m, nn.Sequential):
            raise TypeError(f"FusedConvBNAct.from_module: m must be an nn.Sequential of conv, BN "
                            f"(and ReLU), got {type(m).__name__}")
        _exact.check_no_own_forward("FusedConvBNAct.from_module", m)
        base = getattr(type(m), "_fpnops_base", type(m))
        if base is cls:
            base = nn.Sequential
        if not isinstance(m, cls) and _exact.overrides(m, nn.Sequential):
            raise TypeError(f"FusedConvBNAct.from_module: {type(m).__name__} overrides "
                            f"nn.Sequential's forward, which FusedConvBNAct would not compute")
        kind = cls if base is nn.Sequential else fused_class(base, cls)
        fused = kind.__new__(kind)
        nn.Sequential.__init__(fused)
        fused.backend = _backend.check("FusedConvBNAct", backend)
        fused._fpnops_cache = _FoldedWeights()
        fused.winograd = winograd
        for name, child in m.named_children():
            fused.add_module(name, child)
        _copy_attributes(m, fused)  # Conv2dNormActivation's out_channels, ...
        fused.training = m.training  # its own flag only: the children keep theirs (as in eager)
        return fused

    def forward(self, x):
        if torch.jit.is_scripting():  # TorchScript compiles the original math (README)
            for m in self:
                x = m(x)
            return x
        if _exact.recorded(x):
            return nn.Sequential.forward(self, x)
        return self._forward_bounded(x, None)[0]

    @torch.jit.unused
    def _forward_bounded(self, x, bound, owned=False):
        return _run.run_bounded(type(self).__name__, self._modules.items(), x, self._fpnops_cache,
                                self.backend, bound=bound, owned=owned, winograd_ok=self.winograd)

    def extra_repr(self):
        return f"backend={self.backend!r}" + ("" if self.winograd else ", winograd=False")


def _copy_attributes(m, fused):
    """m's plain public attributes (stride, out_channels, ...; not nn.Module's own) on `fused`."""
    for k, v in vars(m).items():
        if not k.startswith("_") and k != "training" and k not in fused._modules:
            setattr(fused, k, v)


# --- residual blocks -----------------------------------------------------------------------------

def _block_classes(kind):
    """The block classes whose forward a Fused<kind> reproduces: torchvision's and the reference."""
    found = [getattr(_reference, kind)]
    try:
        from torchvision.models import resnet as tv
        found.append(getattr(tv, kind))
    except ImportError:  # torchvision is optional
        pass
    return tuple(found)


_CALL = "call"  # _plan's residual where the downsample runs as a module


class _FusedBlock(CacheOwner, nn.Module):
    """Shared by the block kinds: adopt the source block's children, fold, dispatch.

    The fused path: relu(bn(conv(x))) through `_convs`, the last adding the identity (x, or the
    downsample of x) before its ReLU. The original math is the source class's own forward
    (`_source`), called on this module.
    """

    _convs = ()  # (conv, bn) attribute name pairs, in order
    _kind = ""  # "Bottleneck" / "BasicBlock"
    _source = None  # the source block class (class default: the reference one)

    @classmethod
    def from_module(cls, m, *, backend="auto", winograd=True):
        """A fused block with `m`'s children (the same modules) and attributes. Raises TypeError
        where `m` is not a torchvision or reference block of this kind (or a subclass keeping its
        forward), or where a conv, BN or the ReLU is one a fused conv cannot stand in for.
        winograd: its 3x3 convs may run as Winograd (CPU float32 inference)."""
        who = f"{cls.__name__}.from_module"
        _exact.check_no_own_forward(who, m)
        if isinstance(m, cls):
            source = m._source
        elif isinstance(m, nn.Module) and any(isinstance(m, k) and not _exact.overrides(m, k)
                                              for k in _block_classes(cls._kind)):
            source = type(m)  # its forward is the known block's
        else:
            missing = [n for pair in cls._convs for n in pair if not hasattr(m, n)]
            lacks = f" (it lacks {missing})" if missing else ""
            raise TypeError(f"{who}: m must be torchvision's or fpnops.reference's {cls._kind}, "
                            f"got {type(m).__name__}{lacks}")
        for conv, bn in cls._convs:
            why = _exact.why_not_conv(getattr(m, conv, None)) or _exact.why_not_bn(getattr(m, bn, None))
            if why:
                raise TypeError(f"{who}: {conv}/{bn} of {type(m).__name__}: {why}")
        relu = getattr(m, "relu", None)
        if not _exact.is_plain_relu(relu):
            raise TypeError(f"{who}: relu of {type(m).__name__} must be an nn.ReLU, got "
                            f"{type(relu).__name__}")
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for name, child in m.named_children():
            fused.add_module(name, child)
        _copy_attributes(m, fused)
        if "downsample" not in fused._modules and not hasattr(fused, "downsample"):
            fused.downsample = None
        fused._source = source
        fused.backend = _backend.check(cls.__name__, backend)
        fused._fpnops_cache = _FoldedWeights()
        fused.winograd = winograd
        fused.training = m.training  # its own flag only: the children keep theirs (as in eager)
        return fused

    def forward(self, x):
        if torch.jit.is_scripting():  # TorchScript compiles the original math (README)
            return self._scripted(x)
        if _exact.recorded(x):
            return self._source.forward(self, x)
        return self._forward_bounded(x, None)[0]

    def _scripted(self, x):
        raise NotImplementedError  # each block kind: its source's forward, in TorchScript

    @torch.jit.unused
    def _forward_bounded(self, x, bound, owned=False):
        """(forward(x), a bound on |its values| or None, whether the output is fpnops' own
        fresh tensor); `bound`: one on |x|, or None; owned: x is fpnops' own intermediate,
        which the output may be written into."""
        cache = None if torch.compiler.is_compiling() else self._fpnops_cache  # traced: none
        steps, residual = self._plan(cache)
        if steps is not None:
            who = type(self).__name__
            if residual is _CALL:
                # eager's order: conv1 ... bn3, then the downsample's own forward, then the add
                (name, pair, _) = steps[-1]
                y = fused_chain(who, x, steps[:-1] + [(name, pair, False)], None, cache,
                                self.backend, bound, winograd_ok=self.winograd)
                if y is not None:
                    return torch.relu_(y[0].add_(self.downsample(x))), None, True
            else:
                y = fused_chain(who, x, steps, residual, cache, self.backend, bound, owned,
                                self.winograd)
                if y is not None:
                    return y[0], y[1], y[1] is not None  # a bound: the packed path made y
        return self._source.forward(self, x), None, False

    @torch.jit.unused
    def _plan(self, cache):
        """(steps, residual) for fused_chain (residual _CALL: the downsample runs as a module,
        after the convs), or (None, None) where this call must run the source's forward: a
        conv, BN or the ReLU the fused path may not stand in for (_exact), or batch statistics
        (then the cache is dropped: they change)."""
        if _exact.global_hooks():
            return None, None
        mods = self._modules
        steps, bns = [], []
        for c, b in self._convs:
            conv, bn = mods.get(c), mods.get(b)
            pair = _run.pair(cache, c, conv, bn)
            if pair.reason is not None or not (_exact.inlinable(conv) and _exact.inlinable(bn)):
                return None, None
            steps.append((c, pair, True))  # the last: relu(bn(conv) + identity)
            bns.append(bn)
        relu = mods.get("relu")
        if not _exact.is_plain_relu(relu) or not _exact.inlinable(relu):
            return None, None
        residual = "x"
        ds = mods.get("downsample")
        if ds is not None:
            residual = self._downsample(cache, ds, bns)
        if any(_exact.uses_batch_stats(bn) for bn in bns):
            _run.drop(cache)
            return None, None
        return steps, residual

    @staticmethod
    def _downsample(cache, ds, bns):
        """("downsample.0", pair) where the downsample is a plain Sequential(conv, BN) this block
        folds (its BN appended to bns), else _CALL (it runs as a module)."""
        if type(ds) not in (nn.Sequential, FusedConvBNAct) or len(ds._modules) != 2 \
                or not _exact.inlinable(ds):
            return _CALL
        (cn, conv), (_, bn) = ds._modules.items()
        pair = _run.pair(cache, f"downsample.{cn}", conv, bn)
        if pair.reason is not None or not (_exact.inlinable(conv) and _exact.inlinable(bn)):
            return _CALL
        bns.append(bn)
        return (f"downsample.{cn}", pair)

    def extra_repr(self):
        return f"backend={self.backend!r}" + ("" if self.winograd else ", winograd=False")


class FusedBottleneck(_FusedBlock):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, torchvision's or the reference one), each conv-BN(-ReLU)
    one fused conv; the residual add and final ReLU in conv3's epilogue; the downsample conv+BN
    folded too."""

    _convs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    _kind = "Bottleneck"
    _source = _reference.Bottleneck
    expansion = 4

    def _scripted(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class FusedBasicBlock(_FusedBlock):
    """ResNet basic block (two 3x3 convs); the residual add and final ReLU in conv2's epilogue."""

    _convs = (("conv1", "bn1"), ("conv2", "bn2"))
    _kind = "BasicBlock"
    _source = _reference.BasicBlock
    expansion = 1

    def _scripted(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


_run.BOUNDED.update((FusedConvBNAct, FusedBottleneck, FusedBasicBlock))
