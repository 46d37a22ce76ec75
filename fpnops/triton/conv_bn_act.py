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
from torch._prims_common import suggest_memory_format
from torch.library import custom_op, triton_op, wrap_triton

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# As in upsample_add.py: opaque custom op under the interpreter (it cannot run on fake tensors).
_define_op = custom_op if INTERPRETING else triton_op


@triton.jit
def _conv1x1_kernel(x_ptr, w_ptr, b_ptr, r_ptr, out_ptr, M, CIN, COUT, HO, WO,
                    xs_n, xs_c, xs_h, xs_w, ws_o, ws_i, rs_n, rs_c, rs_h, rs_w,
                    os_n, os_c, os_h, os_w, STRIDE_H, STRIDE_W,
                    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
                    FP64: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    n = m // (HO * WO)
    oh = (m // WO) % HO
    ow = m % WO
    x_row = n * xs_n + (oh * STRIDE_H) * xs_h + (ow * STRIDE_W) * xs_w
    acc_ty = tl.float64 if FP64 else tl.float32
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=acc_ty)
    for k0 in range(0, CIN, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        a = tl.load(x_ptr + x_row[:, None] + k[None, :] * xs_c,
                    mask=(m[:, None] < M) & (k[None, :] < CIN), other=0.0)
        b = tl.load(w_ptr + co[None, :] * ws_o + k[:, None] * ws_i,
                    mask=(k[:, None] < CIN) & (co[None, :] < COUT), other=0.0)
        if UPCAST:  # the interpreter's dot mishandles bfloat16 operands
            a, b = a.to(tl.float32), b.to(tl.float32)
        if FP64:
            acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
        elif IEEE:  # float32: no tf32 rounding of the operands
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    mask = (m[:, None] < M) & (co[None, :] < COUT)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co < COUT, other=0.0).to(acc_ty)[None, :]
    if HAS_RES:
        r_off = (n * rs_n + oh * rs_h + ow * rs_w)[:, None] + co[None, :] * rs_c
        acc += tl.load(r_ptr + r_off, mask=mask, other=0.0).to(acc_ty)
    if RELU:  # not tl.maximum, which may drop NaN (fmax on GPUs)
        acc = tl.where(acc < 0, 0.0, acc)
    o_off = (n * os_n + oh * os_h + ow * os_w)[:, None] + co[None, :] * os_c
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


def check_args(x, weight, bias, stride, residual):
    """conv_bn_act's checks, for direct calls of the op: a 1x1 conv, no padding, no groups."""
    from fpnops.ops.conv_bn_act import check_inputs  # here: that module imports this one
    check_inputs(x, weight, bias, stride, 0, 1, 1, residual, who="conv1x1_bn_act_triton")
    if tuple(weight.shape[-2:]) != (1, 1):
        raise ValueError(f"conv1x1_bn_act_triton: weight must be 1x1, got {tuple(weight.shape)}")


@_define_op("fpnops::conv1x1_bn_act_triton", mutates_args=())
def conv1x1_bn_act_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: list[int], residual: torch.Tensor | None,
                          relu: bool) -> torch.Tensor:
    check_args(x, weight, bias, stride, residual)
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    bias = bias.contiguous() if bias is not None else None  # read as bias[co]
    ho, wo = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
    out = torch.empty((n, cout, ho, wo), dtype=x.dtype, device=x.device,
                      memory_format=suggest_memory_format(x))
    m = n * ho * wo
    if out.numel() == 0:
        return out
    fp64 = x.dtype == torch.float64
    # The interpreter runs tl.dot through numpy: small tiles keep the tests quick there.
    bm, bn, bk = (32, 32, 16) if INTERPRETING else (128, 64, 32)
    grid = (triton.cdiv(m, bm), triton.cdiv(cout, bn))
    res = residual if residual is not None else out
    wrap_triton(_conv1x1_kernel)[grid](
        x, weight, bias if bias is not None else weight, res, out, m, cin, cout, ho, wo,
        *x.stride(), weight.stride(0), weight.stride(1), *res.stride(), *out.stride(),
        stride[0], stride[1], HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        RELU=relu, FP64=fp64, IEEE=x.dtype == torch.float32,
        UPCAST=INTERPRETING and x.dtype == torch.bfloat16,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk if not fp64 else 8)
    return out
