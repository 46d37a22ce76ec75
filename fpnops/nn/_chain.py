"""One fused chain of a ResNet module: conv -> BN (-> ReLU) ..., each one fused conv on folded
weights, the last adding a residual before its ReLU (a block's identity or downsample).

Two paths: the public conv_bn_act on folded weights (any device, dtype, autograd, autocast), and
for CPU float32 inference the packed path: weights reordered once per input shape (oneDNN's, or
Winograd's transform for the wider 3x3 convs), the bias, residual and ReLU as oneDNN post-ops,
where a bound on every value proves that no NaN reaches oneDNN's ReLU (it maps NaN to 0).
"""
import torch

from fpnops._errors import InputError, InputTypeError
from fpnops.nn._cache import SAFE_BOUND, _bound, sources
from fpnops.ops import winograd
from fpnops.ops.conv_bn_act import conv_bn_act, with_conv_gradients
from fpnops.ops.conv_bn_act_checks import check_inputs, output_shape
from fpnops.ops.fold import fold_conv_bn_if_it_fits


def _check_x(who, name, x, conv):
    """Checks every fused call makes before anything runs (the rest, per input shape, when
    weights are packed, or in conv_bn_act)."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{who}: x must be 4-D (N, C, H, W), got {x.dim()}-D with shape "
                         f"{tuple(x.shape)}")
    w = conv.weight
    if x.shape[1] != w.shape[1] * conv.groups:
        raise InputError(f"{who}.{name}: x has {x.shape[1]} channels, {name} expects "
                         f"{w.shape[1] * conv.groups}")
    if x.device != w.device:
        raise InputError(f"{who}.{name}: x is on {x.device}, {name}.weight on {w.device}")
    if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
        raise InputTypeError(f"{who}.{name}: x is {x.dtype}, {name}.weight is {w.dtype}")


def _onednn_f32(x, backend, weights):
    """CPU float32 without autocast on the native backend, where oneDNN runs: the arithmetic of
    the packed path (below), whether autograd records the call or not."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and backend in ("auto", "native")
            and x.layout == torch.strided and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")
            and all(w.dtype == torch.float32 and w.device.type == "cpu" for w in weights))


def _packed_applies(x, backend, folds):
    """CPU float32 inference runs in channels_last on weights oneDNN reordered once per input
    shape (what Inductor's freezing does): ~1.1-1.2x over reordering activations and weights at
    every conv. Not under autograd (_differentiable_chain computes the same bits there), autocast,
    or a backend other than native; only where x and every folded weight are float32 on the CPU."""
    return (not (x.requires_grad and torch.is_grad_enabled())
            and _onednn_f32(x, backend, [f.weight for f in folds]))


def _stand_in(shape, like):
    """A tensor with `shape` and `like`'s dtype and device, for the checks only (no memory)."""
    return torch.empty_strided(shape, (0,) * len(shape), dtype=like.dtype, device=like.device)


def _pack(who, shape, steps, folds, residual, winograd_ok):
    """Check every conv of the chain for input `shape` (errors name `who`.conv), then reorder
    each folded weight for its input shape. steps as fused_chain's; returns the packed weights
    in steps order, then the residual conv's."""
    x = _stand_in(shape, folds[0].weight)
    res, packs = None, []
    if isinstance(residual, tuple):  # a folded downsample conv -> BN on x
        rname, rpair = residual
        res = _checked(f"{who}.{rname}", x, rpair, folds[-1], None)
        packs_res = [_reorder(rpair, folds[-1], shape, winograd_ok)]
    else:
        res, packs_res = (x if residual == "x" else None), []
    for i, (name, pair, _) in enumerate(steps):
        last = i == len(steps) - 1
        y = _checked(f"{who}.{name}", x, pair, folds[i], res if last else None)
        packs.append(_reorder(pair, folds[i], tuple(x.shape), winograd_ok))
        x = y
    return tuple(packs + packs_res)


def _checked(who, x, pair, folded, residual):
    stride, padding, dilation, groups = pair.args
    check_inputs(x, folded.weight, folded.bias, stride, padding, dilation, groups, residual, who=who)
    return _stand_in(output_shape(x, folded.weight, stride, padding, dilation), x)


def _reorder(pair, folded, shape, winograd_ok):
    """The weight as the conv at input `shape` runs it: Winograd's transform where
    conv3x3_winograd applies (fpnops/ops/winograd.py) and is allowed, else oneDNN's reorder."""
    if winograd_ok and winograd.applies(shape, folded.weight, pair.args):
        return winograd.winograd_weight(folded.weight)
    stride, padding, dilation, groups = pair.args
    return torch.ops.mkldnn._reorder_convolution_weight(
        folded.weight, list(padding), list(stride), list(dilation), groups, list(shape))


def _run_packed(x, packed, bias, args, residual, relu):
    """One conv of the packed chain on its packed weight (see _reorder)."""
    if not packed.is_mkldnn:
        return torch.ops.fpnops.conv3x3_winograd(x, packed, bias, residual, relu)
    return torch.ops.fpnops.conv_bn_act_cpu_prepacked(x, packed, bias, *args, residual, relu)


_INPUT_ERRORS = (ValueError, TypeError, RuntimeError, InputError, InputTypeError)


def _op(who, x, weight, bias, args, residual, relu, backend):
    """The public conv_bn_act (NaN-safe, autocast-aware), its errors naming `who`."""
    stride, padding, dilation, groups = args
    try:
        return conv_bn_act(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, residual=residual, relu=relu, backend=backend)
    except _INPUT_ERRORS as e:
        if type(e) not in _INPUT_ERRORS:
            raise
        msg = str(e).removeprefix("conv_bn_act: ")  # the module and conv name say it better
        raise type(e)(f"{who}: {msg}") from e


def fused_chain(who, x, steps, residual, cache, backend, bound=None, owned=False,
                winograd_ok=True):
    """relu?(bn(conv(...)) ...) over steps [(conv name, _Pair, relu)], each one fused conv, the
    last adding `residual`: None, "x" (x itself), or (name, _Pair) of a conv -> BN on x (a
    folded downsample).
    Returns (y, bound on |y|), the bound None where the path taken needs none (only the CPU
    float32 inference path does: see _packed_chain; `bound` is x's there, None: measure it), or
    None where the fused path cannot compute it: a fold that does not fit the conv's dtype, or
    no proof that no NaN reaches a ReLU (the caller then runs the original math). cache None:
    traced, nothing kept. owned: x is fpnops' own intermediate, which no one else holds (see
    _run.py): that path may write y into it. winograd_ok: 3x3 convs may run as Winograd."""
    name0, pair0, _ = steps[0]
    _check_x(who, name0, x, pair0.conv)
    pairs = [p for _, p, _ in steps] + ([residual[1]] if isinstance(residual, tuple) else [])
    tensors = [sources(p.conv, p.bn) for p in pairs]
    if cache is None or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for ts in tensors for t in ts)):
        # traced (Inductor folds and packs itself) or differentiable: folded afresh, not cached
        return fresh_chain(who, x, steps, residual, [(p.conv, p.bn) for p in pairs], backend,
                           winograd_ok, traced=cache is None)
    cached = [cache.folded(p, ts) for p, ts in zip(pairs, tensors)]
    if any(f.weight is None for f in cached):
        return None
    return folded_chain(who, x, steps, residual, cached, cache, backend, bound, owned, winograd_ok)


def fresh_chain(who, x, steps, residual, modules, backend, winograd_ok=True, traced=False):
    """fused_chain on weights folded at this call from modules [(conv, bn)] (steps order, then
    the residual's): under autograd, or traced (no test on values can run there)."""
    folds = [fold_conv_bn_if_it_fits(c, b, traced=traced) for c, b in modules]
    if any(f is None for f in folds):
        return None
    consts = None
    if not traced and x.device.type == "cpu":  # the NaN test: CPU, not traced
        consts = [_bound(c, b, w, bias) for (c, b), (w, bias) in zip(modules, folds)]
    return unpacked_chain(who, x, steps, residual, folds, consts, backend, winograd_ok)


def folded_chain(who, x, steps, residual, folds, cache, backend, bound=None, owned=False,
                 winograd_ok=True):
    """fused_chain on kept folds (_cache._Fold, every one fitting): the packed path where it
    applies (its packed weights kept in `cache`), else unpacked_chain."""
    if _packed_applies(x, backend, folds):
        return _packed_chain(who, x, steps, residual, folds, cache, bound, owned, winograd_ok)
    consts = None if folds[0].gain is None else [(f.gain, f.offset) for f in folds]
    return unpacked_chain(who, x, steps, residual, [(f.weight, f.bias) for f in folds], consts,
                          backend, winograd_ok)


def unpacked_chain(who, x, steps, residual, folds, consts, backend, winograd_ok=True):
    """fused_chain on (weight, bias) folds, nothing packed. CPU float32 (autocast off, native):
    _differentiable_chain, the packed path's bits, or None (no NaN proof); elsewhere, or consts
    None (traced: no test on values can run), the public conv_bn_act conv by conv. steps and
    residual's pairs need only .args."""
    if consts is not None and _onednn_f32(x, backend, [w for w, _ in folds]):
        return _differentiable_chain(who, x, steps, residual, folds, consts, winograd_ok)
    return _each_conv(who, x, steps, residual, folds,
                      lambda *a: _op(*a, backend)), None


def _each_conv(who, x, steps, residual, folds, conv):
    """The chain conv by conv: conv(who.name, x, weight, bias, args, residual, relu) per step,
    the residual conv's first (on x), the last step adding the residual."""
    res = x if residual == "x" else None
    if isinstance(residual, tuple):
        rname, rpair = residual
        res = conv(f"{who}.{rname}", x, *folds[-1], rpair.args, None, False)
    for i, (name, pair, relu) in enumerate(steps):
        last = i == len(steps) - 1
        x = conv(f"{who}.{name}", x, *folds[i], pair.args, res if last else None, relu)
    return x


def _chain_bound(bound, residual, consts, n):
    """A bound on |values| of every step of a chain of n convs on an input bounded by `bound`,
    and on its output; None where one reaches SAFE_BOUND (or bound is NaN or inf). consts: each
    fold's (gain, offset) (_cache._bound), in steps order, then the residual conv's."""
    res_bound = bound
    if isinstance(residual, tuple):
        res_bound = bound * consts[-1][0] + consts[-1][1]
    elif residual is None:
        res_bound = 0.0
    for i in range(n):
        bound = bound * consts[i][0] + consts[i][1]
        if not (bound < SAFE_BOUND and res_bound < SAFE_BOUND):
            return None
    out = bound + res_bound
    return out if out < SAFE_BOUND else None


def _packed_chain(who, x, steps, residual, folds, cache, bound, owned, winograd_ok):
    # The NaN test: oneDNN's ReLU post-op maps NaN to 0. A bound on every value each conv can
    # compute (its constants from the cache) proves none overflows, so no NaN is made; an
    # input bound that is not finite, or one that grows too large, runs the original math.
    # `bound`: one on |x| the caller knows (the output bound of the fused call that made x,
    # nothing run in between): no read of x; where it proves too loose, x is read after all.
    consts = [(f.gain, f.offset) for f in folds]
    out_bound = None if bound is None else _chain_bound(bound, residual, consts, len(steps))
    if out_bound is None:
        out_bound = _chain_bound(torch.ops.fpnops.max_abs(x), residual, consts, len(steps))
        if out_bound is None:
            return None
    shape = tuple(x.shape)
    packs = cache.packed(steps[0][0], shape, folds,
                         lambda: _pack(who, shape, steps, folds, residual, winograd_ok))
    res = x if residual == "x" else None
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


def _differentiable_chain(who, x, steps, residual, folds, consts, winograd_ok):
    """_packed_chain's arithmetic where autograd records the call (fine-tuning with frozen BN,
    an input that requires grad): the same NaN test, channels_last, Winograd where the packed
    path takes it, the same kernels on weights reordered (or transformed) at this call, with the
    convs' gradients: the same bits as _packed_chain, so a fused model's numbers do not depend
    on grad mode, as eager's do not. folds: (weight, bias) pairs; consts: their (gain, offset)."""
    out_bound = _chain_bound(torch.ops.fpnops.max_abs(x.detach()), residual, consts, len(steps))
    if out_bound is None:
        return None  # no proof that no NaN reaches oneDNN's ReLU: the original math
    x = x.contiguous(memory_format=torch.channels_last)
    y = _each_conv(who, x, steps, residual, folds, lambda *a: _step(*a, winograd_ok))
    return y, None  # no bound handed on: the next call must not write into x (autograd holds it)


def _step(who, x, weight, bias, args, residual, relu, winograd_ok):
    """One conv of _differentiable_chain: what _reorder and _run_packed run, the weight
    transformed or reordered at this call, with the conv's gradients."""
    stride, padding, dilation, groups = args
    check_inputs(x, weight, bias, stride, padding, dilation, groups, residual, who=who)
    if winograd_ok and winograd.applies(tuple(x.shape), weight, args):
        return winograd.conv3x3_winograd_differentiable(x, weight, bias, residual, relu)

    def run():
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            weight.detach(), list(padding), list(stride), list(dilation), groups, list(x.shape))
        return torch.ops.fpnops.conv_bn_act_cpu_prepacked(x, packed, bias, *args, residual, relu)
    return with_conv_gradients(run, x, weight, bias, residual, relu, args)


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
