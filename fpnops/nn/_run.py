"""Modules run in order, as nn.Sequential runs them, with each conv -> BN (-> ReLU) that may run
fused as one fused conv (_chain.py): FusedConvBNAct's children, and the fused stems' models
(torchvision's ResNet and IntermediateLayerGetter) from the stem to layer4.

Between fused calls it hands on what it knows of the values: a bound on |x| (the next fused
call then need not read x for its NaN test) and whether x is fpnops' own intermediate, held by
no one else (the next block may sum its output into it). That only holds where nothing but the
modules' own forwards run in between: every module it does not call must pass _exact.inlinable.
"""
import torch
import torch.nn as nn

from fpnops.nn import _exact, _graph
from fpnops.nn._cache import _Pair
from fpnops.nn._chain import fused_chain

# The fused module classes whose _forward_bounded(x, bound, owned) -> (y, bound, owned) computes
# their forward (exact types: a subclass may have a forward of its own). resnet.py adds them.
BOUNDED = set()


def pair(cache, name, conv, bn):
    """The cache's _Pair for conv -> bn, or a fresh one where nothing is kept (traced)."""
    return _Pair(conv, bn) if cache is None else cache.pair(name, conv, bn)


def drop(cache):
    if cache is not None:
        cache.clear()


def _run_at(mods, i, keep, cache, live_ok=False):
    """(steps, length) of the conv -> BN (-> ReLU) run that may run fused at mods[i] now, or
    (None, 1). A run ends at a module whose output is asked for (keep). live_ok: a BN in
    training mode is no reason (TorchScript reads its mode at each call)."""
    name, conv = mods[i]
    if not isinstance(conv, nn.Conv2d) or name in keep or i + 1 >= len(mods):
        return None, 1
    bn_name, bn = mods[i + 1]
    p = pair(cache, name, conv, bn)
    if p.reason is not None or not (_exact.inlinable(conv) and _exact.inlinable(bn)):
        return None, 1
    if _exact.uses_batch_stats(bn) and not (live_ok and _exact.has_running_stats(bn)):
        drop(cache)  # a training-mode forward changes the running statistics
        return None, 1
    relu = (i + 2 < len(mods) and bn_name not in keep and _exact.is_plain_relu(mods[i + 2][1])
            and _exact.inlinable(mods[i + 2][1]))
    return [(name, p, relu)], 2 + relu


def run_folding(who, named_modules, x, cache, backend, on_output=None, keep=(), winograd_ok=True):
    """Run modules in order as nn.Sequential does, each Conv2d -> BatchNorm (-> ReLU) that may
    (see _run_at) as one fused conv on folded weights. on_output(name, x), if given, sees the
    output of every module (of a fused run: under the run's last name). `who` names the owner
    in errors; winograd_ok: its 3x3 convs may run as Winograd (fused blocks have their own)."""
    return run_bounded(who, named_modules, x, cache, backend, on_output, keep,
                       winograd_ok=winograd_ok)[0]


def run_bounded(who, named_modules, x, cache, backend, on_output=None, keep=(), bound=None,
                owned=False, winograd_ok=True):
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
        y = None if steps is None else fused_chain(who, x, steps, None, cache, backend, bound,
                                                   winograd_ok=winograd_ok)
        if y is not None:
            (x, bound), owned = y, True  # a new tensor
        elif n == 1 and not everywhere and cache is not None:
            x, bound, owned = _call_bounded(mods[i][1], x, bound, owned)
        else:
            for _, m in mods[i:i + n]:  # as nn.Sequential: also where the fused path cannot
                x = m(x)
            bound, owned = None, False
        i += n
        if on_output is not None:
            on_output(mods[i - 1][0], x)
            owned = owned and mods[i - 1][0] not in keep  # kept: the caller returns it
    return x, bound, owned


def graph_run(who, named_modules, x, backend, on_output=None, keep=(), winograd_ok=True):
    """run_folding where the call is recorded as a graph (_exact.in_graph): each run that may run
    fused one fpnops::fused_chain node (_graph.py), every other module called (a fused block
    records its own). The runs are decided when the graph is recorded (a BN in training mode
    then: the original modules)."""
    mods = list(named_modules)
    everywhere = _exact.global_hooks()
    i = 0
    while i < len(mods):
        steps, n = (None, 1) if everywhere else _run_at(mods, i, keep, None)
        if steps is not None:
            (name, p, relu), = steps
            x = _graph.call(x, [p.conv], [p.bn], [relu], _graph.NONE, winograd_ok, backend, who,
                            [name])
        else:
            for _, m in mods[i:i + n]:
                x = m(x)
        i += n
        if on_output is not None:
            on_output(mods[i - 1][0], x)
    return x


def _call_bounded(m, x, bound, owned):
    """(m(x), a bound on its |values| or None, whether it is fpnops' own intermediate) for a
    module whose forward is known to fpnops: a fused block or Sequential is run with `bound` on
    |x| (it then reads x only where that bound proves too loose) and, where x is `owned`, may
    sum its output into x; max pooling and ReLU keep the bound. Only where nothing but m's own
    forward can run (_exact.inlinable; a traced call never gets here: the fused forwards record
    their graphs under _exact.recorded): then no code in between can see or change x
    after the bound on it was made, inference tensors included. Anything else: m(x)."""
    kind = type(m)
    if not _exact.inlinable(m):
        return m(x), None, False
    if kind in BOUNDED:
        return m._forward_bounded(x, bound, owned)
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
