"""upsample_add in Triton: forward and the gather backward for grad_top.

out[n, c, oh, ow] = lateral[n, c, oh, ow] + top[n, c, src_h(oh), src_w(ow)]
src(d) = min(floor(float32(d) * scale), in - 1), scale = float32(in / out) or float32(1 / scale_factor)
"""
import os

import torch
import triton
import triton.language as tl
from torch.library import custom_op, triton_op, wrap_triton

from fpnops.ops._nearest import nearest_window_starts, output_memory_format, scale_of

BLOCK = 1024
# Triton decides when a kernel is defined (now) whether it runs in its CPU interpreter.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# triton_op lets torch.compile see into the kernel; the interpreter cannot run on fake tensors,
# so there the ops are opaque custom ops whose fake kernels fpnops/ops/upsample_add.py registers.
_define_op = custom_op if INTERPRETING else triton_op


@triton.jit
def _nearest_src(dst, in_size, out_size, scale, CPU_SHORTCUTS: tl.constexpr):
    src = tl.minimum(tl.floor(dst.to(tl.float32) * scale).to(tl.int64), in_size - 1)
    if CPU_SHORTCUTS:  # ATen's CPU kernel maps out == in and out == 2 * in by index arithmetic
        src = tl.where(out_size == in_size, dst, tl.where(out_size == 2 * in_size, dst // 2, src))
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
                         ls_n, ls_c, ls_h, ls_w, ts_n, ts_c, ts_h, ts_w, scale_h, scale_w, numel,
                         CHANNELS_LAST: tl.constexpr, CPU_SHORTCUTS: tl.constexpr,
                         FP64: tl.constexpr, BF16_RNE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    n, c, oh, ow = _unravel(offs, C, H, W, CHANNELS_LAST)
    ih = _nearest_src(oh, TH, H, scale_h, CPU_SHORTCUTS)
    iw = _nearest_src(ow, TW, W, scale_w, CPU_SHORTCUTS)
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


@_define_op("fpnops::upsample_add_triton", mutates_args=())
def upsample_add_triton(top: torch.Tensor, lateral: torch.Tensor, scale_h: float | None = None,
                        scale_w: float | None = None) -> torch.Tensor:
    fmt = output_memory_format(lateral)
    out = torch.empty(lateral.shape, dtype=lateral.dtype, device=lateral.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    (_, _, th, tw), (_, c, h, w) = top.shape, lateral.shape
    wrap_triton(_upsample_add_kernel)[_grid(out.numel())](
        out, lateral, top, c, h, w, th, tw, *lateral.stride(), *top.stride(),
        scale_of(th, h, scale_h), scale_of(tw, w, scale_w), out.numel(),
        CHANNELS_LAST=fmt == torch.channels_last, CPU_SHORTCUTS=lateral.device.type == "cpu",
        FP64=lateral.dtype == torch.float64, BF16_RNE=_bf16_rne(lateral), BLOCK=BLOCK)
    return out


@_define_op("fpnops::upsample_add_backward_top_triton", mutates_args=())
def upsample_add_backward_top_triton(grad: torch.Tensor, top_h: int, top_w: int,
                                     scale_h: float | None = None,
                                     scale_w: float | None = None) -> torch.Tensor:
    n, c, h, w = grad.shape
    fmt = output_memory_format(grad)
    gtop = torch.empty((n, c, top_h, top_w), dtype=grad.dtype, device=grad.device, memory_format=fmt)
    if gtop.numel() == 0:
        return gtop
    if h == 0 or w == 0:  # nothing read top
        return gtop.zero_()
    cpu = grad.device.type == "cpu"
    hs = nearest_window_starts(top_h, h, scale_h, cpu)
    ws = nearest_window_starts(top_w, w, scale_w, cpu)
    max_wh, max_ww = int((hs[1:] - hs[:-1]).max()), int((ws[1:] - ws[:-1]).max())
    wrap_triton(_backward_top_kernel)[_grid(gtop.numel())](
        gtop, grad, hs.to(grad.device), ws.to(grad.device), c, top_h, top_w, *grad.stride(),
        max_wh, max_ww, gtop.numel(), CHANNELS_LAST=fmt == torch.channels_last,
        FP64=grad.dtype == torch.float64, BF16_RNE=_bf16_rne(grad), BLOCK=BLOCK)
    return gtop
