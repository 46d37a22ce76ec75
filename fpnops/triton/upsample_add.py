"""upsample_add in Triton: forward and the gather backward for grad_top.

out[n, c, oh, ow] = lateral[n, c, oh, ow] + top[n, c, src_h(oh), src_w(ow)]
with eager's nearest index rules (fpnops/ops/_nearest.py): the CUDA rules on CUDA tensors, the
CPU rules on CPU tensors (interpreter). launch_forward / launch_backward_top take the rules as an
argument, so that the tests can run the CUDA rules on CPU tensors.
"""
import os
import struct

import torch
import triton
import triton.language as tl
from torch.library import custom_op, triton_op, wrap_triton

from fpnops.ops import _nearest
from fpnops.ops._nearest import output_memory_format
from fpnops.ops.upsample_add_checks import check_backward_inputs, check_inputs

BLOCK = 1024
# Triton decides when a kernel is defined (now) whether it runs in its CPU interpreter.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# triton_op lets torch.compile see into the kernel; the interpreter cannot run on fake tensors,
# so there the ops are opaque custom ops whose fake kernels fpnops/ops/upsample_add.py registers.
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
    src = tl.minimum(tl.floor(x).to(tl.int64), in_size - 1)
    if KIND == 0:  # ATen's nearest_idx: out == 2 * in by a shift
        src = tl.where(out_size == 2 * in_size, dst // 2, src)
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
def _unravel(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(n, c, h, w) of linear offsets into a dense NCHW or NHWC tensor."""
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
        n = offs // (W * H * C)
    return n, c, h, w


@triton.jit
def _upsample_add_kernel(out_ptr, lat_ptr, top_ptr, C, H, W, TH, TW,
                         ls_n, ls_c, ls_h, ls_w, ts_n, ts_c, ts_h, ts_w, scale_h, scale_w,
                         scale_h_f64_bits, scale_w_f64_bits, numel,
                         CHANNELS_LAST: tl.constexpr, KIND: tl.constexpr,
                         FP64: tl.constexpr, BF16_RNE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    n, c, oh, ow = _unravel(offs, C, H, W, CHANNELS_LAST)
    ih = _nearest_src(oh, TH, H, scale_h, scale_h_f64_bits, KIND)
    iw = _nearest_src(ow, TW, W, scale_w, scale_w_f64_bits, KIND)
    lat = tl.load(lat_ptr + n * ls_n + c * ls_c + oh * ls_h + ow * ls_w, mask=mask)
    top = tl.load(top_ptr + n * ts_n + c * ts_c + ih * ts_h + iw * ts_w, mask=mask)
    if FP64:
        y = lat + top
    else:  # float32 opmath for float32/float16/bfloat16, rounded once on store
        y = lat.to(tl.float32) + top.to(tl.float32)
    tl.store(out_ptr + offs, _cast_out(y, out_ptr.dtype.element_ty, BF16_RNE), mask=mask)


@triton.jit
def _backward_top_kernel(gtop_ptr, grad_ptr, hstart_ptr, wstart_ptr, C, TH, TW,
                         gs_n, gs_c, gs_h, gs_w, max_wh, max_ww, numel,
                         CHANNELS_LAST: tl.constexpr, FP64: tl.constexpr, BF16_RNE: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    n, c, ih, iw = _unravel(offs, C, TH, TW, CHANNELS_LAST)
    h0 = tl.load(hstart_ptr + ih, mask=mask, other=0)
    h1 = tl.load(hstart_ptr + ih + 1, mask=mask, other=0)
    w0 = tl.load(wstart_ptr + iw, mask=mask, other=0)
    w1 = tl.load(wstart_ptr + iw + 1, mask=mask, other=0)
    base = grad_ptr + n * gs_n + c * gs_c
    if FP64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    # Row-major over the window, the order eager's backward adds in.
    for dh in range(0, max_wh):
        for dw in range(0, max_ww):
            inside = mask & (h0 + dh < h1) & (w0 + dw < w1)
            g = tl.load(base + (h0 + dh) * gs_h + (w0 + dw) * gs_w, mask=inside, other=0.0)
            acc += g.to(acc.dtype)
    tl.store(gtop_ptr + offs, _cast_out(acc, gtop_ptr.dtype.element_ty, BF16_RNE), mask=mask)


def _bf16_rne(t):
    return t.dtype == torch.bfloat16 and INTERPRETING


def _grid(numel):
    return (triton.cdiv(numel, BLOCK),)


def _rules_for(t):
    return "cuda" if t.device.type == "cuda" else "cpu"


def _scales(in_size, out_size, scale_factor, kind):
    """(float scale, bits of the double scale) for the kernel's scalar arguments (Triton passes
    Python floats as float32; only GENERIC_DOUBLE needs the double, passed by its bits)."""
    f32 = float(_nearest.nearest_scale(in_size, out_size, scale_factor))
    if kind != _nearest.GENERIC_DOUBLE:
        return f32, 0
    f64 = float(_nearest.nearest_scale(in_size, out_size, scale_factor, torch.float64))
    return f32, struct.unpack("<q", struct.pack("<d", f64))[0]


def launch_forward(top, lateral, scale_h, scale_w, rules):
    """upsample_add with `rules` ("cpu" or "cuda"): the ops pass their tensors' device; the tests
    also run the CUDA rules on CPU tensors."""
    fmt = output_memory_format(lateral)
    out = torch.empty(lateral.shape, dtype=lateral.dtype, device=lateral.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    (_, _, th, tw), (_, c, h, w) = top.shape, lateral.shape
    kind = _nearest.forward_kind(top, h, w, rules)
    sh, sh64 = _scales(th, h, scale_h, kind)
    sw, sw64 = _scales(tw, w, scale_w, kind)
    wrap_triton(_upsample_add_kernel)[_grid(out.numel())](
        out, lateral, top, c, h, w, th, tw, *lateral.stride(), *top.stride(), sh, sw, sh64, sw64,
        out.numel(), CHANNELS_LAST=fmt == torch.channels_last, KIND=kind,
        FP64=lateral.dtype == torch.float64, BF16_RNE=_bf16_rne(lateral), BLOCK=BLOCK)
    return out


def launch_backward_top(grad, top_h, top_w, scale_h, scale_w, rules):
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
    hs = _nearest.window_starts(top_h, h, scale_h, rules)
    ws = _nearest.window_starts(top_w, w, scale_w, rules)
    max_wh, max_ww = int((hs[1:] - hs[:-1]).max()), int((ws[1:] - ws[:-1]).max())
    wrap_triton(_backward_top_kernel)[_grid(gtop.numel())](
        gtop, grad, hs.to(grad.device), ws.to(grad.device), c, top_h, top_w, *grad.stride(),
        max_wh, max_ww, gtop.numel(), CHANNELS_LAST=fmt == torch.channels_last,
        FP64=grad.dtype == torch.float64, BF16_RNE=_bf16_rne(grad), BLOCK=BLOCK)
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
