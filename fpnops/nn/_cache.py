"""The folded-weight cache of the fused ResNet modules (FusedConvBNAct, FusedBasicBlock,
FusedBottleneck and the fused stems): the one implementation of the contract the README states
under "The folded-weight cache", and fpnops.refresh.

Per module, one _FoldedWeights holds a _Pair per conv -> BN (whether _exact lets a fused conv
stand in for it; rebuilt when either module is replaced or the conv's geometry or the BN's eps
changes), the pair's _Folded weights (rebuilt when any tensor they come from changes) and, for
CPU float32 inference, oneDNN's reorder of them per input shape.
"""
import threading
from collections import OrderedDict

import torch
import torch.nn as nn

from fpnops.nn import _exact
from fpnops.ops.fold import _bn_tensors, fold_conv_bn_if_it_fits

# Largest bound on |values| a fused block may reach and still take the oneDNN path whose ReLU
# post-op maps NaN to 0: far below float32's 3.4e38, so no value of the eager or the fused math
# overflows, and no NaN can be made, below it.
SAFE_BOUND = 1e30


def _attrs(conv, bn):
    """What a pair's verdict and geometry depend on besides the modules' identity."""
    if not isinstance(conv, nn.Conv2d):
        return None
    return (type(conv), type(bn), conv.stride, conv.padding, conv.dilation, conv.groups,
            conv.padding_mode, getattr(bn, "eps", None))


def sources(conv, bn):
    """Every tensor a fold reads, and num_batches_tracked: a training-mode forward of an
    nn.BatchNorm2d updates the running statistics in place without bumping their versions, but
    always bumps num_batches_tracked's. Read from the modules' dicts (this runs every call)."""
    c, p, b = conv._parameters, bn._parameters, bn._buffers
    try:
        return (c["weight"], c["bias"], p["weight"] if "weight" in p else b["weight"],
                p["bias"] if "bias" in p else b["bias"], b["running_mean"], b["running_var"],
                b.get("num_batches_tracked"))
    except KeyError:  # not registered as such (a parametrization, ...): the attributes
        return (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                b.get("num_batches_tracked"))


def _stamp(tensors):
    """Per tensor: its identity, version, address, shape and strides. An in-place change bumps
    the version; `.data = t`, set_(), vector_to_parameters and swap_tensors change the address,
    shape or strides. An address proves the same memory only while that memory cannot be freed
    and handed to another tensor: every cache entry holds the storages its stamp saw (_held).
    An inference tensor has no version (it can only be changed inside inference_mode, where
    fpnops.refresh covers it)."""
    try:
        return tuple([None if t is None else (id(t), t._version, t.data_ptr(), t.shape,
                                              t.stride()) for t in tensors])
    except RuntimeError:  # "Inference tensors do not track version counter"
        return tuple([None if t is None else (id(t), -1 if t.is_inference() else t._version,
                                              t.data_ptr(), t.shape, t.stride())
                      for t in tensors])


def _held(tensors):
    """The storages of `tensors`, for a cache entry to hold with its stamp (see _stamp)."""
    return tuple(None if t is None else t.untyped_storage() for t in tensors)


def _amax(t):
    return 0.0 if t is None or t.numel() == 0 else t.detach().abs().max().item()


def _l1(w):
    """max over output channels of sum |w[co]|: |conv(x, w)| <= _l1(w) * max|x|. One pass, in
    float32 at least (its rounding is nothing next to SAFE_BOUND's margin)."""
    if w.numel() == 0:
        return 0.0
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(w.detach(), 1, dim=(1, 2, 3), dtype=acc).max().item()


def _bound(conv, bn, weight, bias):
    """(gain, offset) such that every value bn(conv(x)) computes, folded (conv(x, weight) + bias)
    or as eager does it (conv, then (y - mean) * invstd * gamma + beta, or y * scale + shift), has
    |value| <= gain * max|x| + offset. NaN or inf where a statistic or weight is not finite."""
    gamma, beta, mean, var, eps = _bn_tensors(bn)
    invstd = torch.rsqrt(var.detach().double() + eps)  # per channel: small
    k = max(1.0, _amax(invstd)) * max(1.0, _amax(gamma))  # >= |scale|, |invstd|, 1
    gain = max(_l1(weight), _l1(conv.weight) * k)
    m = _amax(mean)
    offset = _amax(bias) + (_amax(conv.bias) + m) * k + _amax(beta) + m * k
    return gain, offset


class _Pair:
    """One conv -> BN of a fused module: `reason` (None where a fused conv may stand in for
    both, per _exact) and its conv arguments; `folded` caches its _Folded weights."""

    def __init__(self, conv, bn):
        self.conv, self.bn, self.attrs = conv, bn, _attrs(conv, bn)
        self.reason = _exact.why_not_conv(conv) or _exact.why_not_bn(bn)
        self.args = None if self.reason else (tuple(conv.stride), _exact.conv_padding(conv),
                                              tuple(conv.dilation), conv.groups)
        self.folded = None


class _Fold:
    """A pair's folded (weight, bias) and its NaN-test bound constants. Normal tensors: built
    outside inference mode, without autograd. weight and bias are None where the fold does not
    fit the conv's dtype (fold_conv_bn_if_it_fits): the pair then runs unfolded. It holds no
    source tensor (fpnops/nn/_graph.py keeps these through weak references)."""

    def __init__(self, conv, bn):
        self.gain = self.offset = None
        with torch.inference_mode(False), torch.no_grad():
            folded = fold_conv_bn_if_it_fits(conv, bn)
            self.weight, self.bias = folded if folded is not None else (None, None)
            # the NaN test runs on the CPU path only: no device syncs elsewhere
            if folded is not None and self.weight.device.type == "cpu":
                self.gain, self.offset = _bound(conv, bn, self.weight, self.bias)


class _Folded(_Fold):
    """A _Fold and the stamp of the tensors it came from."""

    def __init__(self, conv, bn, tensors):
        self.tensors = tensors  # held: their ids in the stamp stay theirs
        self.stamp = _stamp(tensors)  # taken before folding: a change meanwhile makes it stale
        self.storages = _held(tensors)
        super().__init__(conv, bn)


class _Plain:
    """A conv that runs without a BN to fold (the FPN's): its geometry and the stamp of its
    weight and bias, as _Folded's, so that its packed weight is rebuilt when either changes."""

    def __init__(self, conv):
        self.conv, self.attrs = conv, _attrs(conv, None)
        self.tensors = (conv.weight, conv.bias)  # held: their ids in the stamp stay theirs
        self.stamp = _stamp(self.tensors)
        self.storages = _held(self.tensors)
        self.args = (tuple(conv.stride), _exact.conv_padding(conv), tuple(conv.dilation), conv.groups)


class _FoldedWeights:
    """The cache of one fused module. Thread-safe: entries are immutable once built and swapped
    in whole; the packed-weight LRU is changed under a lock, never held while anything runs."""

    PACKED_SHAPES = 4  # input shapes kept per group of convs (detectors see a few image sizes)

    def __init__(self):
        self._lock = threading.Lock()
        self._pairs = {}  # conv name -> _Pair
        self._packed = {}  # group (first conv's name) -> OrderedDict(input shape -> (folds, packs))

    def __reduce__(self):  # deepcopy, pickle, torch.save: an empty cache, rebuilt on use
        return (type(self), ())

    def clear(self):
        with self._lock:
            self._pairs, self._packed = {}, {}

    def pair(self, name, conv, bn):
        """The _Pair for `name` while the same conv and BN, unchanged in geometry and eps.
        (Traced code uses no cache: the callers pass cache=None and make _Pairs afresh.)"""
        pairs = self._pairs
        p = pairs.get(name)
        if p is None or p.conv is not conv or p.bn is not bn or p.attrs != _attrs(conv, bn):
            p = pairs[name] = _Pair(conv, bn)
        return p

    def plain(self, name, conv):
        """The _Plain for `name` while the same conv, unchanged in geometry, weight and bias."""
        p = self._pairs.get(name)
        if (p is None or p.conv is not conv or p.attrs != _attrs(conv, None)
                or p.stamp != _stamp((conv.weight, conv.bias))):
            p = self._pairs[name] = _Plain(conv)
        return p

    @staticmethod
    def folded(pair, tensors):
        """The pair's _Folded for `tensors` (its current sources), rebuilt where stale."""
        f = pair.folded
        if f is None or f.stamp != _stamp(tensors):
            f = pair.folded = _Folded(pair.conv, pair.bn, tensors)
        return f

    def packed(self, group, shape, folds, build):
        """build() -> packed weights for `folds` at input `shape`, kept for PACKED_SHAPES shapes
        per group (least recently used dropped); built outside the lock."""
        folds = tuple(folds)
        with self._lock:
            lru = self._packed.get(group)
            hit = lru.get(shape) if lru is not None else None
            if hit is not None and all(a is b for a, b in zip(hit[0], folds)):
                lru.move_to_end(shape)
                return hit[1]
        with torch.inference_mode(False), torch.no_grad():
            packs = build()
        with self._lock:
            lru = self._packed.setdefault(group, OrderedDict())
            lru[shape] = (folds, packs)
            lru.move_to_end(shape)
            while len(lru) > self.PACKED_SHAPES:
                lru.popitem(last=False)
        return packs


class CacheOwner:
    """Mixed into every module that owns a _FoldedWeights (as `_fpnops_cache`): train()/eval(),
    .to()/.half()/.cuda() and load_state_dict drop it. `winograd`: whether its 3x3 convs may
    run as Winograd (CPU float32 inference); setting it drops the cache (packed weights are
    Winograd's or oneDNN's)."""

    __jit_unused_properties__ = ["winograd"]

    @property
    def winograd(self):
        return self.__dict__.get("_fpnops_winograd", True)  # True: made before the flag existed

    @winograd.setter
    def winograd(self, value):
        if not isinstance(value, bool):
            raise TypeError(f"{type(self).__name__}: winograd must be True or False, got {value!r}")
        self.__dict__["_fpnops_winograd"] = value
        self._fpnops_cache.clear()

    def train(self, mode=True):
        out = super().train(mode)
        self._fpnops_cache.clear()
        return out

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._fpnops_cache.clear()
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._fpnops_cache.clear()


def refresh(model):
    """Drop every folded-weight cache in `model` (fused ResNet blocks, Sequentials and stems).

    The caches see in-place changes, replaced tensors and modules, train()/eval(), .to() and
    load_state_dict by themselves; call this after changes PyTorch cannot see: in place through
    `.data` (`conv.weight.data.mul_(2)`, which has its own version counter) or, inside
    torch.inference_mode, to tensors that were created there (inference tensors have none).
    Returns `model`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fpnops.refresh: model must be an nn.Module, got {type(model).__name__}")
    for m in model.modules():
        cache = m.__dict__.get("_fpnops_cache")
        if isinstance(cache, _FoldedWeights):
            cache.clear()
    return model
