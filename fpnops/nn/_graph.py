"""fpnops::fused_chain: one fused chain (_chain.py) as a registered op on the modules' own
tensors. A fused module's forward calls it where its call is recorded as a graph of ops
(TorchScript, FX symbolic tracing, torch.jit.trace), so that the graph computes what the fused
module computes, bit for bit, and not the original math: a scripted, traced or FX-transformed
fused model gives the fused model's numbers (torchvision's own tests compare them at 1e-4 and at
float32's default tolerance, which the two maths, each rounding otherwise, do not meet in deep
ResNets). The graph holds one node per fused chain, with the convs' and BNs' tensors as its
inputs (parameters and buffers: state_dict, `.data` writes and fine-tuning reach it). Saved
TorchScript names the op: load it where fpnops is imported, as torchvision's own ops.

The op runs _chain's fused paths itself (the packed one for CPU float32 inference, the
differentiable one under autograd, conv_bn_act elsewhere), on stand-in modules holding the
tensors it was given, and the original math through those where the fused path cannot run. A
graph has no module to keep folded weights in: the op keeps them (kept) by the tensors'
addresses, versions, shapes and strides, through weak references, so that an in-place change or
a `.data` write is a new entry (as the fused modules' own stamps, _cache.py) and the entries go
with the model. Differentiable (CompositeImplicitAutograd: autograd sees the ops it runs).
"""
import threading
import weakref
from typing import List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from fpnops.nn import _exact
from fpnops.nn._cache import _Fold, _FoldedWeights
from fpnops.nn._chain import _check_x, folded_chain, fresh_chain
from fpnops.nn._exact import conv_padding

_lib = torch.library.Library("fpnops", "FRAGMENT")
_lib.define(
    "fused_chain(Tensor x, Tensor[] tensors, int[] present, float[] eps, int[] frozen, "
    "int[] geometry, int[] relus, int residual, bool winograd, str backend, str who, "
    "str names) -> Tensor")
# tensors: per pair, those present of (conv weight, conv bias, BN weight, BN bias, running mean,
# running var) (a list of optional tensors cannot carry an FX Proxy); present: 6 flags per pair.
# Flags are ints and names one string, the convs' names (for errors) joined by commas:
# torch.jit.trace cannot record a list of bools or of strings.

# residual: what the chain's last conv adds before its ReLU
NONE, IDENTITY, DOWNSAMPLE = 0, 1, 2  # DOWNSAMPLE: the last pair is a conv -> BN on x


def _key(t):
    try:
        version = t._version
    except RuntimeError:  # an inference tensor: no version (changed only inside inference_mode)
        version = -1
    return (t.data_ptr(), version, t.shape, t.stride(), t.dtype, t.device)


def _conv(w, b, args):
    """An nn.Conv2d holding w and b (no copies): what _exact and _cache read of one."""
    stride, padding, dilation, groups = args
    conv = nn.Conv2d.__new__(nn.Conv2d)
    nn.Module.__init__(conv)
    conv._parameters.update(weight=w, bias=b)
    conv.in_channels, conv.out_channels = w.shape[1] * groups, w.shape[0]
    conv.kernel_size, conv.stride, conv.padding = tuple(w.shape[2:]), stride, padding
    conv.dilation, conv.groups, conv.padding_mode = dilation, groups, "zeros"
    conv.transposed, conv.output_padding = False, (0, 0)
    return conv.eval()


def _bn(gamma, beta, mean, var, eps, frozen):
    """An eval nn.BatchNorm2d (or torchvision's FrozenBatchNorm2d) holding the tensors."""
    kind = _exact._frozen_bn_class() if frozen else nn.BatchNorm2d
    bn = kind.__new__(kind)
    nn.Module.__init__(bn)
    if frozen:
        bn._buffers.update(weight=gamma, bias=beta, running_mean=mean, running_var=var)
    else:
        bn._parameters.update(weight=gamma, bias=beta)
        bn._buffers.update(running_mean=mean, running_var=var, num_batches_tracked=None)
        bn.num_features, bn.momentum, bn.affine = mean.numel(), 0.0, gamma is not None
        bn.track_running_stats = True
    bn.eps = eps
    return bn.eval()


class _Plan:
    """What fused_chain keeps per chain and state of its tensors: the folds (None where one does
    not fit the dtype) and a cache for the weights packed per input shape."""

    def __init__(self, modules):
        folds = [_Fold(c, b) for c, b in modules]
        self.folds = None if any(f.weight is None for f in folds) else folds
        self.cache = _FoldedWeights()


class _Args:
    """A pair's conv arguments, as _chain's steps read them (pair.args)."""

    def __init__(self, args):
        self.args = args


_entries = {}
_lock = threading.Lock()


def kept(tensors, extra, build):
    """build()'s value for `tensors` in their present state (addresses, versions, shapes,
    strides) and the hashable `extra`, kept while every one of those tensors lives: the one
    cache of the ops graphs call (fused_chain's _Plan, fpn_conv's Winograd weight). Held by
    weak references (a TorchScript module's parameters keep their Python objects: PyTorch
    preserves them), so it goes with the model; the value must not hold the tensors. A tensor
    at the same address that is not the same object (the old one freed) does not hit."""
    key = (tuple(_key(t) for t in tensors), extra)
    with _lock:
        hit = _entries.get(key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)):
        return hit[1]
    value = build()

    def drop(_, key=key):
        with _lock:
            _entries.pop(key, None)
    refs = tuple(weakref.ref(t, drop) for t in tensors)
    with _lock:
        _entries[key] = (refs, value)
    return value


def clear():
    """Drop every kept value."""
    with _lock:
        _entries.clear()


def _original(x, modules, relus, residual):
    """The modules' own forwards (the stand-ins'), in the source block's order."""
    n = len(relus)
    res = None
    if residual == IDENTITY:
        res = x
    elif residual == DOWNSAMPLE:
        conv, bn = modules[n]
        res = bn(conv(x))
    y = x
    for i in range(n):
        conv, bn = modules[i]
        y = bn(conv(y))
        if i == n - 1 and res is not None:
            y = y + res
        if relus[i]:
            y = torch.relu(y)
    return y


@torch.library.impl(_lib, "fused_chain", "CompositeImplicitAutograd")
def _fused_chain(x, tensors, present, eps, frozen, geometry, relus, residual, winograd, backend,
                 who, names):
    names, relus = names.split(","), [bool(r) for r in relus]
    it = iter(tensors)
    slots = [next(it) if p else None for p in present]
    pairs = []  # per pair: (conv args, its six slots)
    for i in range(len(names)):
        g = geometry[7 * i:7 * i + 7]
        pairs.append(((tuple(g[0:2]), tuple(g[2:4]), tuple(g[4:6]), g[6]), slots[6 * i:6 * i + 6]))

    def modules():  # the stand-ins: only where something reads modules (not a kept plan's hit)
        return [(_conv(w, b, args), _bn(gamma, beta, mean, var, eps[i], bool(frozen[i])))
                for i, (args, (w, b, gamma, beta, mean, var)) in enumerate(pairs)]

    (args0, (w0, *_)) = pairs[0]
    _check_x(who, names[0], x, _conv(w0, None, args0))
    steps = [(names[i], _Args(pairs[i][0]), relus[i]) for i in range(len(relus))]
    res = {NONE: None, IDENTITY: "x"}.get(residual, (names[-1], _Args(pairs[-1][0])))
    mods = None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):  # folded afresh
        mods = modules()
        y = fresh_chain(who, x, steps, res, mods, backend, winograd)
    else:
        plan = kept(tensors, ("fused_chain", tuple(present), tuple(eps), tuple(frozen),
                              tuple(geometry), tuple(names)), lambda: _Plan(modules()))
        y = None if plan.folds is None else folded_chain(who, x, steps, res, plan.folds,
                                                         plan.cache, backend, winograd_ok=winograd)
    if y is None:
        return _original(x, mods or modules(), relus, residual)
    return y[0]


def conv_geometry(conv):
    """A conv's (stride, padding, dilation, groups) as the 7 ints the graph ops take."""
    return [*conv.stride, *conv_padding(conv), *conv.dilation, conv.groups]


def _frozen(bn):
    return int(not isinstance(bn, nn.modules.batchnorm._BatchNorm))


def call(x: Tensor, convs: List, bns: List, relus: List[bool], residual: int, winograd: bool,
         backend: str, who: str, names: Optional[List[str]] = None) -> Tensor:
    """fpnops::fused_chain on the modules' tensors (Python callers: FX, jit.trace). convs, bns:
    the chain's pairs in order, the downsample's last where residual is DOWNSAMPLE; names: the
    convs' (errors name them), conv0, conv1, ... if None."""
    slots: List[Optional[Tensor]] = []
    for c, b in zip(convs, bns):
        slots += [c.weight, c.bias, b.weight, b.bias, b.running_mean, b.running_var]
    names = names or [f"conv{i}" for i in range(len(convs))]
    geometry = [g for c in convs for g in conv_geometry(c)]
    return script_call(x, slots, [float(b.eps) for b in bns], [_frozen(b) for b in bns], geometry,
                       [int(r) for r in relus], residual, winograd, backend, who, names)


def script_call(x: Tensor, slots: List[Optional[Tensor]], eps: List[float], frozen: List[int],
                geometry: List[int], relus: List[int], residual: int, winograd: bool, backend: str,
                who: str, names: List[str]) -> Tensor:
    """fpnops::fused_chain on slots: 6 per pair (conv weight, conv bias, BN weight, BN bias,
    running mean, running var), None where absent. TorchScript compiles it."""
    tensors: List[Tensor] = []
    present: List[int] = []
    for t in slots:
        if t is None:
            present.append(0)
        else:
            tensors.append(t)
            present.append(1)
    return torch.ops.fpnops.fused_chain(x, tensors, present, eps, frozen, geometry, relus,
                                        residual, winograd, backend, who, ",".join(names))


def script_plan(m, pairs, relus, residual, names):
    """What a fused module's TorchScript forward needs of its fused path, fixed when it is
    scripted (torch.jit.script calls __prepare_scriptable__): pairs [(conv, bn)] in op order,
    relus per step, names the convs' names, residual (NONE, IDENTITY, DOWNSAMPLE, or CALL: the
    downsample runs as a module after the chain). Sets m._fpnops_script (the residual), the
    geometry, frozen and relu lists, the winograd flag and the names errors give; the BNs'
    training flags are read at each call."""
    m._fpnops_script = residual
    m._fpnops_geometry = [g for c, _ in pairs for g in conv_geometry(c)]
    m._fpnops_frozen = [_frozen(b) for _, b in pairs]
    m._fpnops_relus = [int(r) for r in relus]
    m._fpnops_winograd = bool(m.winograd)  # a property, which TorchScript does not compile
    m._fpnops_who = type(m).__name__
    m._fpnops_names = list(names)


CALL = 3  # script_plan's residual: the downsample runs as a module, after the chain


def any_live(training: List[bool], frozen: List[int]) -> bool:
    """Whether a BN that is not frozen is in training mode (batch statistics: no fold)."""
    for t, f in zip(training, frozen):
        if t and f == 0:
            return True
    return False
