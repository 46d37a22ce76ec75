"""Fused conv-BatchNorm-ReLU modules for ResNets: FusedConvBNAct, FusedBasicBlock,
FusedBottleneck.

They hold the original submodules under the original names (state_dict keys and checkpoints
are unchanged) and, where BatchNorm uses running statistics (eval mode, or torchvision's
FrozenBatchNorm2d), run each conv-BN(-ReLU) as one fused conv on folded weights: the bias, the
residual add and the final ReLU in the conv's epilogue. Otherwise they run the original module's
own forward, so that nothing it would do is skipped: a live nn.BatchNorm2d in training mode,
hooks on any module the fused path bypasses (or global module hooks), a conv or norm _exact does
not accept, and (CPU float32 inference) an input that could carry NaN or inf into oneDNN's ReLU.

Folded weights are cached (fpnops/nn/_cache.py, the contract in the README); when autograd needs
the weights' gradients (fine-tuning with frozen BN) they are folded afresh every call.
"""
import torch
import torch.nn as nn

from fpnops import _backend
from fpnops.nn import _exact
from fpnops.nn._cache import SAFE_BOUND, CacheOwner, _FoldedWeights, _Pair, refresh, sources  # noqa: F401
from fpnops.ops.conv_bn_act import check_inputs, conv_bn_act, output_shape
from fpnops.ops import winograd
from fpnops.ops.fold import fold_conv_bn
from fpnops.reference import resnet as _reference

_BN = nn.modules.batchnorm._BatchNorm


def is_bn(m):
    return isinstance(m, _BN) or type(m).__name__ == "FrozenBatchNorm2d"


def uses_batch_stats(bn):
    """True where BatchNorm normalises with batch statistics (or, missing one running statistic,
    raises in eager): it cannot be folded then."""
    return isinstance(bn, _BN) and (bn.training or bn.running_mean is None or bn.running_var is None)


# --- one fused chain: conv -> BN (-> ReLU) ... , the last one adding a residual -----------------

def _check_x(who, name, x, conv):
    """Checks every fused call makes before anything runs (the rest, per input shape, when
    weights are packed, or in conv_bn_act)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{who}: x must be 4-D (N, C, H, W), got {x.dim()}-D with shape {tuple(x.shape)}")
    w = conv.weight
    if x.shape[1] != w.shape[1] * conv.groups:
        raise ValueError(f"{who}.{name}: x has {x.shape[1]} channels, {name} expects "
                         f"{w.shape[1] * conv.groups}")
    if x.device != w.device:
        raise ValueError(f"{who}.{name}: x is on {x.device}, {name}.weight on {w.device}")
    if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{who}.{name}: x is {x.dtype}, {name}.weight is {w.dtype}")


def _packed_applies(x, backend, folds):
    """CPU float32 inference runs in channels_last on weights oneDNN reordered once per input
    shape (what Inductor's freezing does): ~1.1-1.2x over reordering activations and weights at
    every conv. Not under autograd, autocast, or a backend other than native; only where x and
    every folded weight are float32 on the CPU."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and backend in ("auto", "native")
            and x.layout == torch.strided and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")
            and not (x.requires_grad and torch.is_grad_enabled())
            and all(f.weight.dtype == torch.float32 and f.weight.device.type == "cpu" for f in folds))


def _stand_in(shape, like):
    """A tensor with `shape` and `like`'s dtype and device, for the checks only (no memory)."""
    return torch.empty_strided(shape, (0,) * len(shape), dtype=like.dtype, device=like.device)


def _pack(who, shape, steps, folds, residual):
    """Check every conv of the chain for input `shape` (errors name `who`.conv), then reorder
    each folded weight for its input shape. steps as _fused_chain's; returns the packed weights
    in steps order, then the residual conv's."""
    x = _stand_in(shape, folds[0].weight)
    res, packs = None, []
    if isinstance(residual, tuple):  # a folded downsample conv -> BN on x
        rname, rpair = residual
        res = _checked(f"{who}.{rname}", x, rpair, folds[-1], None)
        packs_res = [_reorder(rpair, folds[-1], shape)]
    else:
        res, packs_res = (x if isinstance(residual, str) else None), []
    for i, (name, pair, _) in enumerate(steps):
        last = i == len(steps) - 1
        y = _checked(f"{who}.{name}", x, pair, folds[i], res if last else None)
        packs.append(_reorder(pair, folds[i], tuple(x.shape)))
        x = y
    return tuple(packs + packs_res)


def _checked(who, x, pair, folded, residual):
    stride, padding, dilation, groups = pair.args
    check_inputs(x, folded.weight, folded.bias, stride, padding, dilation, groups, residual, who=who)
    return _stand_in(output_shape(x, folded.weight, stride, padding, dilation), x)


def _reorder(pair, folded, shape):
    """The weight as the conv at input `shape` runs it: Winograd's transform where
    conv3x3_winograd applies (fpnops/ops/winograd.py), else oneDNN's reorder."""
    if winograd.applies(shape, folded.weight, pair.args):
        return winograd.winograd_weight(folded.weight)
    stride, padding, dilation, groups = pair.args
    return torch.ops.mkldnn._reorder_convolution_weight(
        folded.weight, list(padding), list(stride), list(dilation), groups, list(shape))


def _run_packed(x, packed, bias, args, residual, relu):
    """One conv of the packed chain on its packed weight (see _reorder)."""
    if not packed.is_mkldnn:
        return torch.ops.fpnops.conv3x3_winograd(x, packed, bias, residual, relu)
    return torch.ops.fpnops.conv_bn_act_cpu_prepacked(x, packed, bias, *args, residual, relu)


def _op(who, x, weight, bias, args, residual, relu, backend):
    """The public conv_bn_act (NaN-safe, autocast-aware), its errors naming `who`."""
    stride, padding, dilation, groups = args
    try:
        return conv_bn_act(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, residual=residual, relu=relu, backend=backend)
    except (ValueError, TypeError, RuntimeError) as e:
        if type(e) not in (ValueError, TypeError, RuntimeError):
            raise
        msg = str(e).removeprefix("conv_bn_act: ")  # the module and conv name say it better
        raise type(e)(f"{who}: {msg}") from e


def _pair(cache, name, conv, bn):
    return _Pair(conv, bn) if cache is None else cache.pair(name, conv, bn)


def _drop(cache):
    if cache is not None:
        cache.clear()


def _fused_chain(who, x, steps, residual, cache, backend, bound=None, owned=False):
    """relu?(bn(conv(...)) ...) over steps [(conv name, _Pair, relu)], each one fused conv, the
    last adding `residual`: None, "x" (x itself), a tensor, or (name, _Pair) of a conv -> BN on x
    (a folded downsample).
    Returns (y, bound on |y|), the bound None where the path taken needs none (only the CPU
    float32 inference path does: see _packed_chain; `bound` is x's there, None: measure it), or
    None where that path cannot prove that no NaN reaches a ReLU (the caller then runs the
    original math). cache None: traced, nothing kept. owned: x is fpnops' own intermediate,
    which no one else holds (see _run_bounded): that path may write y into it."""
    name0, pair0, _ = steps[0]
    _check_x(who, name0, x, pair0.conv)
    pairs = [p for _, p, _ in steps] + ([residual[1]] if isinstance(residual, tuple) else [])
    tensors = [sources(p.conv, p.bn) for p in pairs]
    if cache is None or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for ts in tensors for t in ts)):
        # traced (Inductor folds and packs itself) or differentiable: folded afresh, not cached
        folds = [fold_conv_bn(p.conv, p.bn) for p in pairs]
    else:
        folds = [cache.folded(p, ts) for p, ts in zip(pairs, tensors)]
        if not isinstance(residual, torch.Tensor) and _packed_applies(x, backend, folds):
            return _packed_chain(who, x, steps, residual, folds, cache, bound, owned)
        folds = [(f.weight, f.bias) for f in folds]
    res = x if isinstance(residual, str) else residual
    if isinstance(residual, tuple):
        rname, rpair = residual
        res = _op(f"{who}.{rname}", x, *folds[-1], rpair.args, None, False, backend)
    for i, (name, pair, relu) in enumerate(steps):
        last = i == len(steps) - 1
        x = _op(f"{who}.{name}", x, *folds[i], pair.args, res if last else None, relu, backend)
    return x, None


def _chain_bound(bound, residual, folds, n):
    """A bound on |values| of every step of a chain of n convs on an input bounded by `bound`,
    and on its output; None where one reaches SAFE_BOUND (or bound is NaN or inf)."""
    res_bound = bound
    if isinstance(residual, tuple):
        res_bound = bound * folds[-1].gain + folds[-1].offset
    elif residual is None:
        res_bound = 0.0
    for i in range(n):
        bound = bound * folds[i].gain + folds[i].offset
        if not (bound < SAFE_BOUND and res_bound < SAFE_BOUND):
            return None
    out = bound + res_bound
    return out if out < SAFE_BOUND else None


def _packed_chain(who, x, steps, residual, folds, cache, bound=None, owned=False):
    # The NaN test: oneDNN's ReLU post-op maps NaN to 0. A bound on every value each conv can
    # compute (its constants from the cache) proves none overflows, so no NaN is made; an
    # input bound that is not finite, or one that grows too large, runs the original math.
    # `bound`: one on |x| the caller knows (the output bound of the fused call that made x,
    # nothing run in between): no read of x; where it proves too loose, x is read after all.
    out_bound = None if bound is None else _chain_bound(bound, residual, folds, len(steps))
    if out_bound is None:
        out_bound = _chain_bound(torch.ops.fpnops.max_abs(x), residual, folds, len(steps))
        if out_bound is None:
            return None
    shape = tuple(x.shape)
    packs = cache.packed(steps[0][0], shape, folds, lambda: _pack(who, shape, steps, folds, residual))
    res = x if isinstance(residual, str) else None
    into = None  # the residual the last conv sums into in place (oneDNN's sum post-op)
    if owned and res is not None and res.is_contiguous(memory_format=torch.channels_last):
        into = res
    y = x
    for i, (_, pair, relu) in enumerate(steps[:-1]):
        y = _run_packed(y, packs[i], folds[i].bias, pair.args, None, relu)
    if isinstance(residual, tuple):  # the downsample now: conv1 read x while it was cached
        res = into = _run_packed(x, packs[-1], folds[-1].bias, residual[1].args, None, False)
    last = len(steps) - 1
    _, pair, relu = steps[last]
    if into is not None and packs[last].is_mkldnn:
        return _sum_into(into, y, packs[last], folds[last].bias, pair.args, relu), out_bound
    return _run_packed(y, packs[last], folds[last].bias, pair.args, res, relu), out_bound


def _sum_into(into, x, packed, bias, args, relu):
    """relu?(conv(x) + into), written into `into` (dense channels_last, the conv's output shape):
    the same bits as conv_bn_act_cpu_prepacked's residual add, without reading the residual
    from one buffer and writing another: at large feature maps (ResNet50's 1x1 convs at stride
    4) the convolution is memory-bound, and this is most of what Inductor's frozen graph does
    better. x and the arguments were checked when the chain was packed (_pack)."""
    stride, padding, dilation, groups = args
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        into, x.contiguous(memory_format=torch.channels_last), packed, bias, list(padding),
        list(stride), list(dilation), groups, "add", None, "relu" if relu else None, [], None)


# --- Sequentials and stems: runs of conv -> BN (-> ReLU) among other modules --------------------

def _run_at(mods, i, keep, cache):
    """(steps, length) of the conv -> BN (-> ReLU) run that may run fused at mods[i] now, or
    (None, 1). A run ends at a module whose output is asked for (keep)."""
    name, conv = mods[i]
    if not isinstance(conv, nn.Conv2d) or name in keep or i + 1 >= len(mods):
        return None, 1
    bn_name, bn = mods[i + 1]
    pair = _pair(cache, name, conv, bn)
    if pair.reason is not None or _exact.has_hooks(conv) or _exact.has_hooks(bn):
        return None, 1
    if uses_batch_stats(bn):
        _drop(cache)  # a training-mode forward changes the running statistics
        return None, 1
    relu = (i + 2 < len(mods) and bn_name not in keep and _exact.is_plain_relu(mods[i + 2][1])
            and not _exact.has_hooks(mods[i + 2][1]))
    return [(name, pair, relu)], 2 + relu


def run_folding(who, named_modules, x, cache, backend, on_output=None, keep=()):
    """Run modules in order as nn.Sequential does, each Conv2d -> BatchNorm (-> ReLU) that may
    (see _run_at) as one fused conv on folded weights. on_output(name, x), if given, sees the
    output of every module (of a fused run: under the run's last name). `who` names the owner
    in errors."""
    return _run_bounded(who, named_modules, x, cache, backend, on_output, keep)[0]


def _run_bounded(who, named_modules, x, cache, backend, on_output=None, keep=(), bound=None,
                 owned=False):
    """run_folding, handing on from one fused call to the next what it knows of x (see
    _call_bounded): (x, bound on |x| or None, owned). `bound`: one on the input's, or None;
    owned: the input is fpnops' own intermediate, held by no one else (a fused call may write
    its output into it). on_output may keep only the outputs named in `keep`."""
    mods = list(named_modules)
    if torch.compiler.is_compiling():
        cache = None  # traced: Inductor folds and packs itself; no state kept
    everywhere = _exact.global_hooks()  # hooks for every module: bypass none
    i = 0
    while i < len(mods):
        steps, n = (None, 1) if everywhere else _run_at(mods, i, keep, cache)
        y = None if steps is None else _fused_chain(who, x, steps, None, cache, backend, bound)
        if y is not None:
            (x, bound), owned = y, True  # a new tensor
        elif n == 1 and not everywhere and cache is not None:
            x, bound, owned = _call_bounded(mods[i][1], x, bound, owned)
        else:
            for _, m in mods[i:i + n]:  # as nn.Sequential: also where the NaN test failed
                x = m(x)
            bound, owned = None, False
        i += n
        if on_output is not None:
            on_output(mods[i - 1][0], x)
            owned = owned and mods[i - 1][0] not in keep  # kept: the caller returns it
    return x, bound, owned


def _call_bounded(m, x, bound, owned):
    """(m(x), a bound on its |values| or None, whether it is fpnops' own intermediate) for a
    module whose forward is known to fpnops: a fused block or Sequential is run with `bound` on
    |x| (it then reads x only where that bound proves too loose) and, where x is `owned`, may
    sum its output into x; max pooling and ReLU keep the bound. Only where nothing but m's own
    forward can run (no hooks on m, not traced, not compiled by m.compile()): then no code in
    between can see or change x after the bound on it was made, inference tensors included.
    Anything else: m(x) as usual."""
    kind = type(m)
    if _exact.has_hooks(m) or m._compiled_call_impl is not None or torch.jit.is_tracing():
        return m(x), None, False
    if kind in (FusedBottleneck, FusedBasicBlock):
        y, bound = m._forward_bounded(x, bound, owned)
        return y, bound, bound is not None  # a bound: the fused path made y
    if kind is FusedConvBNAct:
        return _run_bounded(kind.__name__, m._modules.items(), x, m._fpnops_cache, m.backend,
                            bound=bound, owned=owned)
    if kind is nn.Sequential:  # a ResNet layer: its fused blocks (a conv in it is not fused)
        for child in m._modules.values():
            x, bound, owned = _call_bounded(child, x, bound, owned)
        return x, bound, owned
    y = m(x)
    if kind is nn.MaxPool2d and not m.return_indices:
        return y, bound, True  # a new tensor, each value one of x's
    if kind is nn.ReLU:
        return y, bound, owned and y is x  # in place, or a new tensor someone may hold
    return y, None, False


class FusedConvBNAct(CacheOwner, nn.Sequential):
    """A Sequential whose runs of Conv2d -> BatchNorm (-> ReLU) run as one fused conv.

    Same children, same names as the Sequential it replaces (torchvision's
    Conv2dNormActivation, a ResNet stem `Sequential(conv, bn, relu, maxpool)`, a downsample
    `Sequential(conv, bn)`); anything else in it runs as is. Its original math is
    nn.Sequential.forward.
    """

    def __init__(self, *modules, backend="auto"):
        super().__init__(*modules)
        self.backend = _backend.check("FusedConvBNAct", backend)
        self._fpnops_cache = _FoldedWeights()

    @classmethod
    def from_module(cls, m, *, backend="auto"):
        if not isinstance(m, nn.Sequential):
            raise TypeError(f"FusedConvBNAct.from_module: m must be an nn.Sequential of conv, BN "
                            f"(and ReLU), got {type(m).__name__}")
        fused = cls(backend=backend)
        for name, child in m.named_children():
            fused.add_module(name, child)
        return fused.train(m.training)

    def forward(self, x):
        return run_folding(type(self).__name__, self._modules.items(), x, self._fpnops_cache,
                           self.backend)

    def extra_repr(self):
        return f"backend={self.backend!r}"


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
    def from_module(cls, m, *, backend="auto"):
        """A fused block with `m`'s children (the same modules) and attributes. Raises TypeError
        where `m` is not a torchvision or reference block of this kind (or a subclass keeping its
        forward), or where a conv, BN or the ReLU is one a fused conv cannot stand in for."""
        who = f"{cls.__name__}.from_module"
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
        for k, v in vars(m).items():  # plain attributes (stride, ...), not nn.Module's own
            if not k.startswith("_") and k != "training" and k not in fused._modules:
                setattr(fused, k, v)
        if "downsample" not in fused._modules and not hasattr(fused, "downsample"):
            fused.downsample = None
        fused._source = source
        fused.backend = _backend.check(cls.__name__, backend)
        fused._fpnops_cache = _FoldedWeights()
        return fused.train(m.training)

    def forward(self, x):
        return self._forward_bounded(x, None)[0]

    def _forward_bounded(self, x, bound, owned=False):
        """(forward(x), a bound on |its values| or None); `bound`: one on |x|, or None; owned:
        x is fpnops' own intermediate, which the output may be written into."""
        cache = None if torch.compiler.is_compiling() else self._fpnops_cache  # traced: none
        steps, residual = self._plan(x, cache)
        if steps is not None:
            y = _fused_chain(type(self).__name__, x, steps, residual, cache, self.backend, bound,
                             owned)
            if y is not None:
                return y
        return self._source.forward(self, x), None

    def _plan(self, x, cache):
        """(steps, residual) for _fused_chain, or (None, None) where this call must run the
        source's forward: global hooks, hooks on a module the fused path skips, a module _exact
        rejects, or batch statistics (then the cache is dropped: they change)."""
        if _exact.global_hooks():
            return None, None
        mods = self._modules
        steps, bns = [], []
        for c, b in self._convs:
            conv, bn = mods.get(c), mods.get(b)
            pair = _pair(cache, c, conv, bn)
            if pair.reason is not None or _exact.has_hooks(conv) or _exact.has_hooks(bn):
                return None, None
            steps.append((c, pair, True))  # the last: relu(bn(conv) + identity)
            bns.append(bn)
        relu = mods.get("relu")
        if not _exact.is_plain_relu(relu) or _exact.has_hooks(relu):
            return None, None
        residual = "x"
        ds = mods.get("downsample")
        if ds is not None:
            residual = self._downsample(cache, ds, bns)
        if any(uses_batch_stats(bn) for bn in bns):
            _drop(cache)
            return None, None
        if residual is None:
            residual = ds(x)  # a downsample not folded here: its own forward (and hooks)
        return steps, residual

    @staticmethod
    def _downsample(cache, ds, bns):
        """("downsample.0", pair) where the downsample is a plain Sequential(conv, BN) this block
        folds (its BN appended to bns), else None (it runs as a module)."""
        if type(ds) not in (nn.Sequential, FusedConvBNAct) or len(ds._modules) != 2 \
                or _exact.has_hooks(ds):
            return None
        (cn, conv), (_, bn) = ds._modules.items()
        pair = _pair(cache, f"downsample.{cn}", conv, bn)
        if pair.reason is not None or _exact.has_hooks(conv) or _exact.has_hooks(bn):
            return None
        bns.append(bn)
        return (f"downsample.{cn}", pair)

    def extra_repr(self):
        return f"backend={self.backend!r}"


class FusedBottleneck(_FusedBlock):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, torchvision's or the reference one), each conv-BN(-ReLU)
    one fused conv; the residual add and final ReLU in conv3's epilogue; the downsample conv+BN
    folded too."""

    _convs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    _kind = "Bottleneck"
    _source = _reference.Bottleneck
    expansion = 4


class FusedBasicBlock(_FusedBlock):
    """ResNet basic block (two 3x3 convs); the residual add and final ReLU in conv2's epilogue."""

    _convs = (("conv1", "bn1"), ("conv2", "bn2"))
    _kind = "BasicBlock"
    _source = _reference.BasicBlock
    expansion = 1
