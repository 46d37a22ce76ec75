"""1x1 convolution with BatchNorm folded in, as a GEMM with its epilogue, in Triton.

out[m, co] = relu(sum_ci x[m, ci] * w[co, ci] + bias[co] + residual[m, co]),  m = (n, oh, ow)
x[m, ci] reads pixel (n, oh * stride_h, ow * stride_w): any layout works through the strides;
channels_last (ci contiguous) is the fast one. Accumulation in float32 (float64 for float64).
No padding and no groups: fpnops.conv_bn_act routes those to another backend. ReLU as eager's
(x < 0 ? 0 : x): NaN and +inf pass, -inf gives 0, -0.0 stays -0.0.
"""
import os

import torch
import triton
import triton.language as tl
from torch.library import custom_op, triton_op

from fpnops._errors import InputError
from fpnops.ops.conv_bn_act_checks import check_inputs, output_memory_format
from fpnops.triton._launch import Launch, device_guard, launch, needs_int64

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# As in upsample_add.py: opaque custom op under the interpreter (it cannot run on fake tensors).
_define_op = custom_op if INTERPRETING else triton_op


# Triton specialises int arguments on == 1 and % 16 == 0. Not here: the output's sizes and the
# conv stride, read only by the general path's index math. M, CIN, COUT and the strides stay
# specialised: the masks' constancy and the rows' alignment that 16-byte accesses need.
@triton.jit(do_not_specialize=["HO", "WO", "STRIDE_H", "STRIDE_W"])
def _conv1x1_kernel(x_ptr, w_ptr, b_ptr, r_ptr, out_ptr, M, CIN, COUT, HO, WO,
                    xs_n, xs_c, xs_h, xs_w, ws_o, ws_i, rs_n, rs_c, rs_h, rs_w,
                    os_n, os_c, os_h, os_w, STRIDE_H, STRIDE_W,
                    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
                    FP64: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                    DENSE: tl.constexpr, INDEX64: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """DENSE (x, out and the residual dense in one layout, stride 1; no division, and the
    compiler sees 16-byte aligned runs): 1 channels_last, pixel m at m * channels; 2 NCHW,
    program_id(2) the image, m its pixel (M pixels an image), channel planes apart. 0: any
    strides. Offsets in int32 unless INDEX64."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if INDEX64:
        pid_m, pid_n = pid_m.to(tl.int64), pid_n.to(tl.int64)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if DENSE == 1:
        x_row, xs_c = m * CIN, 1
        o_row, os_c = m * COUT, 1
        r_row, rs_c = m * COUT, 1
    elif DENSE == 2:
        img = tl.program_id(2)
        if INDEX64:
            img = img.to(tl.int64)
        x_row = img * xs_n + m
        o_row = img * os_n + m
        r_row = img * rs_n + m
    else:
        n = m // (HO * WO)
        oh = (m // WO) % HO
        ow = m % WO
        x_row = n * xs_n + (oh * STRIDE_H) * xs_h + (ow * STRIDE_W) * xs_w
        o_row = n * os_n + oh * os_h + ow * os_w
        r_row = n * rs_n + oh * rs_h + ow * rs_w
    if FP64:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, CIN, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + x_row[:, None] + k[None, :] * xs_c,
                    mask=(m[:, None] < M) & (k[None, :] < CIN), other=0.0)
        b = tl.load(w_ptr + co[None, :] * ws_o + k[:, None] * ws_i,
                    mask=(k[:, None] < CIN) & (co[None, :] < COUT), other=0.0)
        if UPCAST:  # the interpreter's dot mishandles bfloat16 operands
            a, b = a.to(tl.float32), b.to(tl.float32)
        if FP64:  # out_dtype said: Triton 3.6's dot assumes float32 and rejects a float64 acc
            acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
        elif IEEE:  # float32: no tf32 rounding of the operands
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    mask = (m[:, None] < M) & (co[None, :] < COUT)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co < COUT, other=0.0).to(acc.dtype)[None, :]
    if HAS_RES:
        acc += tl.load(r_ptr + r_row[:, None] + co[None, :] * rs_c, mask=mask, other=0.0).to(acc.dtype)
    if RELU:  # not tl.maximum, which may drop NaN (fmax on GPUs)
        acc = tl.where(acc < 0, 0.0, acc)
    tl.store(out_ptr + o_row[:, None] + co[None, :] * os_c, acc.to(out_ptr.dtype.element_ty),
             mask=mask)


# Tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by target and operand dtype:
# "sm90" (wgmma: 2 warpgroups, 64-deep K steps), every other CUDA arch as sm_80 (mma.sync).
# float32 (IEEE, no tensor cores) and float64 are FMA/DMMA GEMMs with smaller tiles that fit
# the registers. A Cout of at most 64 (ResNet's first 1x1 convs) gets 64-wide N tiles.
TILES = {
    ("sm90", "half"): (128, 128, 64, 8, 3),
    ("sm80", "half"): (128, 128, 32, 8, 4),  # 4 warps: ~240 registers, spills on stride 2
    ("sm90", "float32"): (64, 64, 32, 4, 3),
    ("sm80", "float32"): (64, 64, 32, 4, 3),
    ("sm90", "float64"): (64, 64, 16, 4, 3),
    ("sm80", "float64"): (64, 64, 16, 4, 3),
}
INTERPRETER_TILES = (32, 32, 16, 4, 1)  # the interpreter runs tl.dot through numpy: small tiles


def tiles(dtype, cout, arch):
    """The tile config for operands of `dtype`, `cout` output channels, compute capability
    `arch` (e.g. 90) or None under the interpreter."""
    if arch is None:
        return INTERPRETER_TILES
    kind = {torch.float32: "float32", torch.float64: "float64"}.get(dtype, "half")
    bm, bn, bk, warps, stages = TILES[("sm90" if arch == 90 else "sm80", kind)]
    return bm, 64 if cout <= 64 else bn, bk, warps, stages


def _target_arch(x):
    """The compute capability Triton compiles for on x's device (its active driver's target
    for the current device, made x's)."""
    if INTERPRETING:
        return None
    from triton.runtime import driver
    with device_guard((x,)):
        return driver.active.get_current_target().arch


def check_args(x, weight, bias, stride, residual):
    """conv_bn_act's checks, for direct calls of the op: a 1x1 conv, no padding, no groups."""
    check_inputs(x, weight, bias, stride, 0, 1, 1, residual, who="conv1x1_bn_act_triton")
    if tuple(weight.shape[-2:]) != (1, 1):
        raise InputError(f"conv1x1_bn_act_triton: weight must be 1x1, got {tuple(weight.shape)}")


def conv1x1_launch(x, weight, bias, stride, residual, relu, out, index64=None):
    """The launch writing `out` = relu(conv1x1(x, weight, bias) + residual)."""
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    m = out.shape[0] * out.shape[2] * out.shape[3]
    bm, bn, bk, warps, stages = tiles(x.dtype, cout, _target_arch(x))
    res = residual if residual is not None else out
    grid = (triton.cdiv(m, bm), triton.cdiv(cout, bn))
    dense = 0
    if tuple(stride) == (1, 1):
        for mode, fmt in ((1, torch.channels_last), (2, torch.contiguous_format)):
            if all(t.is_contiguous(memory_format=fmt) for t in (x, out, res)):
                dense = mode
                break
    if dense == 2:  # one image per program_id(2)
        if n > 65535:  # the grid's third dim
            dense = 0
        else:
            m = h * w
            grid = (triton.cdiv(m, bm), triton.cdiv(cout, bn), n)
    if index64 is None:
        index64 = needs_int64(max(bm, bn), x, weight, res, out)
    return Launch(_conv1x1_kernel, grid,
                  (x, weight, bias if bias is not None else weight, res, out, m, cin, cout,
                   out.shape[2], out.shape[3], *x.stride(), weight.stride(0), weight.stride(1),
                   *res.stride(), *out.stride(), stride[0], stride[1]),
                  dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, RELU=relu,
                       FP64=x.dtype == torch.float64,
                       IEEE=x.dtype in (torch.float32, torch.float64),
                       UPCAST=INTERPRETING and x.dtype == torch.bfloat16, DENSE=dense,
                       INDEX64=bool(index64), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                       num_warps=warps, num_stages=stages))


def launch_conv1x1(x, weight, bias, stride, residual, relu, *, index64=None, run=launch):
    """The op's work after its checks; `run` launches (the compile check compiles)."""
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    bias = bias.contiguous() if bias is not None else None  # read as bias[co]
    ho, wo = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
    out = torch.empty((n, cout, ho, wo), dtype=x.dtype, device=x.device,
                      memory_format=output_memory_format(x, weight, stride, (0, 0), (1, 1)))
    if out.numel() == 0:
        return out
    run(conv1x1_launch(x, weight, bias, stride, residual, relu, out, index64))
    return out


@_define_op("fpnops::conv1x1_bn_act_triton", mutates_args=())
def conv1x1_bn_act_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: list[int], residual: torch.Tensor | None,
                          relu: bool) -> torch.Tensor:
    check_args(x, weight, bias, stride, residual)
    return launch_conv1x1(x, weight, bias, stride, residual, relu)
