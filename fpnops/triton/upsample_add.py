"""upsample_add in Triton: forward and the gather backward for grad_top.

out[n, c, oh, ow] = lateral[n, c, oh, ow] + top[n, c, src_h(oh), src_w(ow)]
with eager's nearest index rules (fpnops/ops/_nearest.py): the CUDA rules on CUDA tensors, the
CPU rules on CPU tensors (interpreter). launch_forward / launch_backward_top take the rules as an
argument, so that the tests can run the CUDA rules on CPU tensors.
"""
import functools
import os
import struct

import torch
import triton
import triton.language as tl
from torch.library import custom_op, triton_op

from fpnops.ops import _nearest
from fpnops.ops._nearest import output_memory_format
from fpnops.ops.upsample_add_checks import check_backward_inputs, check_inputs
from fpnops.triton._launch import Launch, launch, needs_int64, vector_elems

NUM_WARPS = 4
# Triton decides when a kernel is defined (now) whether it runs in its CPU interpreter.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# triton_op lets torch.compile see into the kernel; the op's function is then its fake kernel too,
# run on fake tensors: the launchers decide on sizes, strides and ints only, never on data. The
# interpreter cannot run on fake tensors, so there the ops are opaque custom ops whose fake
# kernels fpnops/ops/upsample_add.py registers.
_define_op = custom_op if INTERPRETING else triton_op


@triton.jit
def _nearest_src(dst, in_size, out_size, scale, scale_f64_bits, KIND: tl.constexpr):
    """src(dst) under rule KIND (the _nearest kinds: 0 NEAREST_IDX, 1 GENERIC_FLOAT,
    2 GENERIC_DOUBLE, 3 CUDA); scale is the float scale, scale_f64_bits the double one's bits."""
    if KIND == 2:  # double scale and product, rounded to float before the floor
        scale_f64 = scale_f64_bits.to(tl.int64).to(tl.float64, bitcast=True)
        x = (dst.to(tl.float64) * scale_f64).to(tl.float32, fp_downcast_rounding="rtne")
    else:
        x = dst.to(tl.float32) * scale
    src = tl.minimum(tl.floor(x).to(dst.dtype), in_size - 1)
    if KIND == 0:  # ATen's nearest_idx: out == 2 * in by a shift
        src = tl.where(out_size == 2 * in_size, dst >> 1, src)
    if KIND == 0 or KIND == 3:  # out == in: the identity
        src = tl.where(out_size == in_size, dst, src)
    return src


@triton.jit
def _cast_out(y, dtype: tl.constexpr, BF16_RNE: tl.constexpr):
    """Round to the output dtype, to nearest even (as ATen does). Triton's interpreter truncates
    float32 -> bfloat16, so there (BF16_RNE) the rounding is done on the bits."""
    if BF16_RNE:
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        r = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(y != y, y.to(tl.bfloat16), r)
    return y.to(dtype, fp_downcast_rounding="rtne")


@triton.jit
def _runs(BLOCK: tl.constexpr, GROUP: tl.constexpr, INDEX64: tl.constexpr):
    """The flat offsets of this program's first elements of its BLOCK // GROUP runs of GROUP
    consecutive output elements (one 16-byte vector each), int32 unless INDEX64."""
    pid = tl.program_id(0)
    if INDEX64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK // GROUP) * GROUP


@triton.jit
def _div(a, b):
    """a // b of non-negative int32 a and positive b, unsigned (cheaper than signed)."""
    if a.dtype == tl.int32:
        return (a.to(tl.uint32) // b.to(tl.uint32)).to(tl.int32)
    return a // b


@triton.jit
def _split(first, inner, GROUP: tl.constexpr, WRAP: tl.constexpr):
    """(row, index in the row) of flat offsets `first` into rows of `inner` elements. Without
    WRAP (inner % GROUP == 0) a run never leaves its row and starts at a multiple of GROUP."""
    row = _div(first, inner)
    i0 = first - row * inner
    if not WRAP:
        i0 = tl.multiple_of(i0, GROUP)
    return row, i0


@triton.jit
def _row_coords(row, S1, S0):
    """(n, mid, low) of rows numbered (n * S1 + mid) * S0 + low: (n, c, h) of an NCHW tensor's
    rows over w, (n, h, w) of a channels_last one's rows over c."""
    q = _div(row, S0)
    n = _div(q, S1)
    return n, q - n * S1, row - q * S0


@triton.jit
def _next_coords(n, mid, low, S1, S0):
    """The coordinates of the next row, by carries (no division)."""
    low = low + 1
    carry = low == S0
    low = tl.where(carry, 0, low)
    mid = mid + carry.to(mid.dtype)
    carry = mid == S1
    return n + carry.to(n.dtype), tl.where(carry, 0, mid), low


@triton.jit
def _forward_row(n, mid, low, TH, TW, H, W, ls_n, ls_c, ls_h, ls_w, ts_n, ts_c, ts_h, ts_w,
                 scale_h, scale_w, scale_h_f64_bits, scale_w_f64_bits, KIND: tl.constexpr,
                 CHANNELS_LAST: tl.constexpr):
    """Offsets of the start of an output row in top and lateral."""
    if CHANNELS_LAST:  # (n, h, w)
        ih = _nearest_src(mid, TH, H, scale_h, scale_h_f64_bits, KIND)
        iw = _nearest_src(low, TW, W, scale_w, scale_w_f64_bits, KIND)
        return n * ts_n + ih * ts_h + iw * ts_w, n * ls_n + mid * ls_h + low * ls_w
    else:  # (n, c, h)
        ih = _nearest_src(low, TH, H, scale_h, scale_h_f64_bits, KIND)
        return n * ts_n + mid * ts_c + ih * ts_h, n * ls_n + mid * ls_c + low * ls_h


# Triton specialises int arguments on == 1 and % 16 == 0: not the sizes (a new image size
# would compile anew), but numel (the masks' constancy: without it no 16-byte accesses) and the
# strides (== 1 and % 16: what makes a run contiguous and aligned) stay specialised.
@triton.jit(do_not_specialize=["C", "H", "W", "TH", "TW"])
def _upsample_add_kernel(out_ptr, lat_ptr, top_ptr, numel, C, H, W, TH, TW,
                         ls_n, ls_c, ls_h, ls_w, ts_n, ts_c, ts_h, ts_w, scale_h, scale_w,
                         scale_h_f64_bits, scale_w_f64_bits,
                         CHANNELS_LAST: tl.constexpr, KIND: tl.constexpr, FP64: tl.constexpr,
                         BF16_RNE: tl.constexpr, LAT_DENSE: tl.constexpr, GROUP: tl.constexpr,
                         WRAP: tl.constexpr, INDEX64: tl.constexpr, BLOCK: tl.constexpr):
    """The output (dense, NCHW or NHWC) in runs of GROUP elements along its innermost dim (w or
    c): index math once per run, not per element; with LAT_DENSE (the lateral has the output's
    strides) the lateral is read at the output's offsets, in 16-byte vectors."""
    first = _runs(BLOCK, GROUP, INDEX64)
    if CHANNELS_LAST:
        inner, s1, s0 = C, H, W
    else:
        inner, s1, s0 = W, C, H
    row, i0 = _split(first, inner, GROUP, WRAP)
    n, mid, low = _row_coords(row, s1, s0)
    top_row, lat_row = _forward_row(n, mid, low, TH, TW, H, W, ls_n, ls_c, ls_h, ls_w, ts_n,
                                    ts_c, ts_h, ts_w, scale_h, scale_w, scale_h_f64_bits,
                                    scale_w_f64_bits, KIND, CHANNELS_LAST)
    top_row = top_row[:, None]
    lat_row = lat_row[:, None]
    i = i0[:, None] + tl.arange(0, GROUP)[None, :]
    if WRAP:  # inner % GROUP != 0: the end of a run may lie in the next row
        nxt = i >= inner
        i = tl.where(nxt, i - inner, i)
        n, mid, low = _next_coords(n, mid, low, s1, s0)
        top_next, lat_next = _forward_row(n, mid, low, TH, TW, H, W, ls_n, ls_c, ls_h, ls_w,
                                          ts_n, ts_c, ts_h, ts_w, scale_h, scale_w,
                                          scale_h_f64_bits, scale_w_f64_bits, KIND, CHANNELS_LAST)
        top_row = tl.where(nxt, top_next[:, None], top_row)
        lat_row = tl.where(nxt, lat_next[:, None], lat_row)
    offs = first[:, None] + tl.arange(0, GROUP)[None, :]
    mask = offs < numel
    if CHANNELS_LAST:
        top_off = top_row + i * ts_c
        lat_off = lat_row + i * ls_c
    else:
        top_off = top_row + _nearest_src(i, TW, W, scale_w, scale_w_f64_bits, KIND) * ts_w
        lat_off = lat_row + i * ls_w
    if LAT_DENSE:
        lat_off = offs
    lat = tl.load(lat_ptr + lat_off, mask=mask)
    top = tl.load(top_ptr + top_off, mask=mask)
    if FP64:
        y = lat + top
    else:  # float32 opmath for float32/float16/bfloat16, rounded once on store
        y = lat.to(tl.float32) + top.to(tl.float32)
    tl.store(out_ptr + offs, _cast_out(y, out_ptr.dtype.element_ty, BF16_RNE), mask=mask)


@triton.jit
def _backward_row(n, mid, low, gs_n, gs_c, hstart_ptr, wstart_ptr, INDEX64: tl.constexpr,
                  CHANNELS_LAST: tl.constexpr):
    """For a row of grad_top ((n, c, ih) in NCHW, (n, ih, iw) in channels_last): the offset of
    its n (and c) in grad, its window of grad rows [h0, h1) and, in channels_last, of grad
    columns [w0, w1). The int32 starts tables are read in bounds (ih < TH, iw < TW)."""
    if CHANNELS_LAST:
        base = n * gs_n
        ih = mid
        w0 = tl.load(wstart_ptr + low)
        w1 = tl.load(wstart_ptr + low + 1)
    else:
        base = n * gs_n + mid * gs_c
        ih = low
        w0 = low * 0
        w1 = w0
    h0 = tl.load(hstart_ptr + ih)
    h1 = tl.load(hstart_ptr + ih + 1)
    if INDEX64:
        h0, h1, w0, w1 = h0.to(tl.int64), h1.to(tl.int64), w0.to(tl.int64), w1.to(tl.int64)
    return base, h0, h1, w0, w1


@triton.jit
def _add_grad_row(acc, grad_ptr, row_off, h_in, w0, w1, gs_w, mask, max_ww, cols, cols_mask,
                  GROUP: tl.constexpr, WIN_W: tl.constexpr, UNIFORM_W: tl.constexpr):
    """acc plus the window's columns of one grad row (at row_off), left to right."""
    rows = grad_ptr + row_off
    if UNIFORM_W:  # every window WIN_W (1 or 2) wide: the run's columns are contiguous
        g = tl.load(rows + cols * gs_w, mask=cols_mask & h_in, other=0.0).to(acc.dtype)
        if WIN_W == 2:
            left, right = tl.split(tl.reshape(g, [acc.shape[0], acc.shape[1], 2]))
            acc = acc + left
            acc = acc + right
        else:
            acc = acc + g
    elif WIN_W > 0:
        for dw in tl.static_range(WIN_W):
            inside = mask & h_in & (w0 + dw < w1)
            acc = acc + tl.load(rows + (w0 + dw) * gs_w, mask=inside, other=0.0).to(acc.dtype)
    else:
        for dw in range(0, max_ww):
            inside = mask & h_in & (w0 + dw < w1)
            acc = acc + tl.load(rows + (w0 + dw) * gs_w, mask=inside, other=0.0).to(acc.dtype)
    return acc


@triton.jit(do_not_specialize=["C", "TH", "TW", "max_wh", "max_ww"])
def _backward_top_kernel(gtop_ptr, grad_ptr, hstart_ptr, wstart_ptr, numel, C, TH, TW,
                         gs_n, gs_c, gs_h, gs_w, max_wh, max_ww,
                         CHANNELS_LAST: tl.constexpr, FP64: tl.constexpr, BF16_RNE: tl.constexpr,
                         GROUP: tl.constexpr, WRAP: tl.constexpr, INDEX64: tl.constexpr,
                         WIN_H: tl.constexpr, WIN_W: tl.constexpr, UNIFORM_W: tl.constexpr,
                         BLOCK: tl.constexpr):
    """grad_top (dense, NCHW or NHWC) in runs of GROUP elements along its innermost dim, as the
    forward. Each element sums its window of grad row-major (eager's order). WIN_H, WIN_W > 0:
    the largest window's rows, columns, unrolled; 0: loops to max_wh, max_ww. UNIFORM_W (NCHW,
    runs within rows): all windows WIN_W wide, so a run reads contiguous grad columns; grad's
    strides n, c, h then come in units of GROUP (16 bytes), so that the compiler sees that
    its rows are aligned to 16-byte vectors."""
    if UNIFORM_W:
        gs_n, gs_c, gs_h = gs_n * GROUP, gs_c * GROUP, gs_h * GROUP
    first = _runs(BLOCK, GROUP, INDEX64)
    if CHANNELS_LAST:
        inner, s1, s0 = C, TH, TW
    else:
        inner, s1, s0 = TW, C, TH
    row, i0 = _split(first, inner, GROUP, WRAP)
    n, mid, low = _row_coords(row, s1, s0)
    base, h0, h1, w0, w1 = _backward_row(n, mid, low, gs_n, gs_c, hstart_ptr, wstart_ptr,
                                         INDEX64, CHANNELS_LAST)
    base, h0, h1, w0, w1 = base[:, None], h0[:, None], h1[:, None], w0[:, None], w1[:, None]
    i = i0[:, None] + tl.arange(0, GROUP)[None, :]
    if WRAP:
        nxt = i >= inner
        i = tl.where(nxt, i - inner, i)
        n, mid, low = _next_coords(n, mid, low, s1, s0)
        nb, nh0, nh1, nw0, nw1 = _backward_row(n, mid, low, gs_n, gs_c, hstart_ptr, wstart_ptr,
                                               INDEX64, CHANNELS_LAST)
        base = tl.where(nxt, nb[:, None], base)
        h0 = tl.where(nxt, nh0[:, None], h0)
        h1 = tl.where(nxt, nh1[:, None], h1)
        w0 = tl.where(nxt, nw0[:, None], w0)
        w1 = tl.where(nxt, nw1[:, None], w1)
    if CHANNELS_LAST:
        base = base + i * gs_c
    elif not UNIFORM_W:  # the window's columns depend on the element's own iw = i
        w0 = tl.load(wstart_ptr + i)
        w1 = tl.load(wstart_ptr + i + 1)
        if INDEX64:
            w0, w1 = w0.to(tl.int64), w1.to(tl.int64)
    offs = first[:, None] + tl.arange(0, GROUP)[None, :]
    mask = offs < numel
    if UNIFORM_W:  # the run's WIN_W * GROUP grad columns; those of elements < numel
        span = tl.arange(0, GROUP * WIN_W)[None, :]
        base = base + i0[:, None] * WIN_W
        cols = span
        cols_mask = first[:, None] * WIN_W + span < numel * WIN_W
    else:  # unused (an arange of WIN_W = 0 would not compile)
        cols = i
        cols_mask = mask
    if FP64:
        acc = tl.zeros([BLOCK // GROUP, GROUP], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK // GROUP, GROUP], dtype=tl.float32)
    # Row-major over the window, the order eager's backward adds in.
    if WIN_H > 0:
        for dh in tl.static_range(WIN_H):
            acc = _add_grad_row(acc, grad_ptr, base + (h0 + dh) * gs_h, h0 + dh < h1, w0, w1,
                                gs_w, mask, max_ww, cols, cols_mask, GROUP, WIN_W, UNIFORM_W)
    else:
        for dh in range(0, max_wh):
            acc = _add_grad_row(acc, grad_ptr, base + (h0 + dh) * gs_h, h0 + dh < h1, w0, w1,
                                gs_w, mask, max_ww, cols, cols_mask, GROUP, WIN_W, UNIFORM_W)
    tl.store(gtop_ptr + offs, _cast_out(acc, gtop_ptr.dtype.element_ty, BF16_RNE), mask=mask)


# Windows up to this many rows (columns) are unrolled (a 2x upsample: 2, 3 with odd sizes);
# larger ones loop.
UNROLL_WINDOW = 4


def _bf16_rne(t):
    return t.dtype == torch.bfloat16 and INTERPRETING


def _rules_for(t):
    return "cuda" if t.device.type == "cuda" else "cpu"


def _scales(in_size, out_size, scale_factor, kind):
    """(float scale, bits of the double scale) for the kernel's scalar arguments (Triton passes
    Python floats as float32; only GENERIC_DOUBLE needs the double, passed by its bits)."""
    f32 = _nearest.nearest_scale_value(in_size, out_size, scale_factor)
    if kind != _nearest.GENERIC_DOUBLE:
        return f32, 0
    f64 = _nearest.nearest_scale_value(in_size, out_size, scale_factor, double=True)
    return f32, struct.unpack("<q", struct.pack("<d", f64))[0]


# The backward's window tables from ints only: the launcher decides on them without reading
# tensor data (under torch.compile it runs on fake tensors).
_window_starts = functools.lru_cache(maxsize=64)(_nearest.window_starts_ints)


def _table(in_size, out_size, scale_factor, rules, device):
    return torch.tensor(_window_starts(in_size, out_size, scale_factor, rules), dtype=torch.int32,
                        device=device)


_cached_table = functools.lru_cache(maxsize=64)(_table)


def _window_table(in_size, out_size, scale_factor, rules, like):
    """The int32 starts table on `like`'s device, copied there once per (sizes, scale, rules,
    device) (the kernels only read it); built afresh for fake tensors (and other subclasses):
    what tracing builds goes into its graph, and must not be kept."""
    build = _cached_table if type(like) is torch.Tensor else _table
    return build(in_size, out_size, scale_factor, rules, like.device)


def _runs_of(out, inner):
    """(GROUP, WRAP, BLOCK) for a dense output whose rows hold `inner` elements: runs of one
    16-byte vector where a row holds one, else single elements; 2 runs per thread of 4 warps."""
    group = vector_elems(out) if inner >= vector_elems(out) else 1
    return group, inner % group != 0, max(NUM_WARPS * 32 * group * 2, 1024)


def _same_strides(a, b):
    """Same element offsets (strides of size-1 dims do not matter)."""
    return all(x == y for s, x, y in zip(a.shape, a.stride(), b.stride()) if s > 1)


def forward_launch(out, top, lateral, scale_h, scale_w, rules, index64=None):
    """The launch of the forward kernel for `out` = upsample_add(top, lateral) under `rules`.
    index64: None (decided from the tensors' reach) or forced (the tests)."""
    (_, _, th, tw), (_, c, h, w) = top.shape, lateral.shape
    kind = _nearest.forward_kind(top, h, w, rules)
    sh, sh64 = _scales(th, h, scale_h, kind)
    sw, sw64 = _scales(tw, w, scale_w, kind)
    cl = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    group, wrap, block = _runs_of(out, c if cl else w)
    if index64 is None:
        index64 = needs_int64(block, out, lateral, top)
    return Launch(_upsample_add_kernel, (triton.cdiv(out.numel(), block),),
                  (out, lateral, top, out.numel(), c, h, w, th, tw, *lateral.stride(),
                   *top.stride(), sh, sw, sh64, sw64),
                  dict(CHANNELS_LAST=cl, KIND=kind, FP64=lateral.dtype == torch.float64,
                       BF16_RNE=_bf16_rne(lateral), LAT_DENSE=_same_strides(lateral, out),
                       GROUP=group, WRAP=wrap, INDEX64=bool(index64), BLOCK=block,
                       num_warps=NUM_WARPS))


def launch_forward(top, lateral, scale_h, scale_w, rules, *, index64=None, run=launch):
    """upsample_add with `rules` ("cpu" or "cuda"): the ops pass their tensors' device; the tests
    also run the CUDA rules on CPU tensors. `run` launches (the compile check compiles)."""
    out = torch.empty(lateral.shape, dtype=lateral.dtype, device=lateral.device,
                      memory_format=output_memory_format(lateral))
    if out.numel() == 0:
        return out
    run(forward_launch(out, top, lateral, scale_h, scale_w, rules, index64))
    return out


def backward_top_launch(gtop, grad, scale_h, scale_w, rules, index64=None):
    """The launch of the gather backward writing `gtop` (launch_backward_top handles the cases
    that need no kernel)."""
    n, c, h, w = grad.shape
    top_h, top_w = gtop.shape[2:]
    hs = _window_starts(top_h, h, scale_h, rules)
    ws = _window_starts(top_w, w, scale_w, rules)
    max_wh, max_ww = (max(b - a for a, b in zip(t, t[1:])) for t in (hs, ws))
    cl = gtop.is_contiguous(memory_format=torch.channels_last) and not gtop.is_contiguous()
    group, wrap, block = _runs_of(gtop, c if cl else top_w)
    win_h = max_wh if max_wh <= UNROLL_WINDOW else 0
    win_w = max_ww if max_ww <= UNROLL_WINDOW else 0
    # NCHW, windows all 1 or 2 wide, runs within rows and grad rows 16-byte aligned: each run
    # reads contiguous, aligned grad columns.
    uniform_w = (not cl and not wrap and group > 1 and win_w in (1, 2)
                 and ws == tuple(range(0, win_w * (top_w + 1), win_w)) and grad.stride(3) == 1
                 and all(st % group == 0 for st in grad.stride()[:3]))
    if index64 is None:
        index64 = needs_int64(block, gtop, grad)
    gs_n, gs_c, gs_h, gs_w = grad.stride()
    if uniform_w:
        gs_n, gs_c, gs_h = gs_n // group, gs_c // group, gs_h // group
    return Launch(_backward_top_kernel, (triton.cdiv(gtop.numel(), block),),
                  (gtop, grad, _window_table(top_h, h, scale_h, rules, grad),
                   _window_table(top_w, w, scale_w, rules, grad), gtop.numel(), c, top_h, top_w,
                   gs_n, gs_c, gs_h, gs_w, max_wh, max_ww),
                  dict(CHANNELS_LAST=cl, FP64=grad.dtype == torch.float64,
                       BF16_RNE=_bf16_rne(grad), GROUP=group, WRAP=wrap, INDEX64=bool(index64),
                       WIN_H=win_h, WIN_W=win_w, UNIFORM_W=uniform_w, BLOCK=block, num_warps=NUM_WARPS))


def launch_backward_top(grad, top_h, top_w, scale_h, scale_w, rules, *, index64=None,
                        run=launch):
    """The gradient with respect to top under `rules` ("cpu" or "cuda"), as launch_forward."""
    n, c, h, w = grad.shape
    fmt = output_memory_format(grad)
    gtop = torch.empty((n, c, top_h, top_w), dtype=grad.dtype, device=grad.device, memory_format=fmt)
    if gtop.numel() == 0:
        return gtop
    if h == 0 or w == 0:  # nothing read top
        return gtop.zero_()
    if rules == "cuda" and (top_h, top_w) == (h, w):  # eager's CUDA backward copies (-0.0 stays)
        return gtop.copy_(grad)
    run(backward_top_launch(gtop, grad, scale_h, scale_w, rules, index64))
    return gtop


@_define_op("fpnops::upsample_add_triton", mutates_args=())
def upsample_add_triton(top: torch.Tensor, lateral: torch.Tensor, scale_h: float | None = None,
                        scale_w: float | None = None) -> torch.Tensor:
    check_inputs(top, lateral, scale_h, scale_w)
    return launch_forward(top, lateral, scale_h, scale_w, _rules_for(lateral))


@_define_op("fpnops::upsample_add_backward_top_triton", mutates_args=())
def upsample_add_backward_top_triton(grad: torch.Tensor, top_h: int, top_w: int,
                                     scale_h: float | None = None,
                                     scale_w: float | None = None) -> torch.Tensor:
    check_backward_inputs(grad, top_h, top_w, scale_h, scale_w)
    return launch_backward_top(grad, top_h, top_w, scale_h, scale_w, _rules_for(grad))
