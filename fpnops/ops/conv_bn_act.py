"""fpnops.conv_bn_act: relu(conv2d(x, weight, bias) + residual) on already-folded weights, with
the bias, residual add and ReLU in the convolution's epilogue (one pass over the output).

Ops: fpnops::conv_bn_act (native: csrc/cpu/conv_bn_act.cpp, csrc/cuda/conv_bn_act.cu) and
fpnops::conv1x1_bn_act_triton (fpnops/triton/conv_bn_act.py, 1x1 convs only). This file holds
the Python face, the shared checks, the fake kernels and the autograd formulas.
"""
import torch
import torch.nn.functional as F

from fpnops import _backend
from torch._prims_common import suggest_memory_format

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pair(name, v):
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
        raise TypeError(f"conv_bn_act: {name} must be an int or a pair of ints, got {v!r}")
    return pair


def output_shape(x, weight, stride, padding, dilation):
    n, _, h, w = x.shape
    kh, kw = weight.shape[-2:]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, weight.shape[0], oh, ow)


def check_inputs(x, weight, bias, stride, padding, dilation, groups, residual, who="conv_bn_act"):
    """The checks every backend shares; errors name the argument, the expected and what came.
    `who` opens every message (the fused modules pass their own name and the conv's)."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{who}: {name} must be 4-D, got {t.dim()}-D with shape {tuple(t.shape)}")
    if x.dtype not in _FLOATING:
        raise TypeError(f"{who}: expected a floating dtype, got x {x.dtype}")
    if any(s < 1 for s in stride) or any(p < 0 for p in padding) or any(d < 1 for d in dilation):
        raise ValueError(f"{who}: need stride >= 1, padding >= 0, dilation >= 1, got "
                         f"stride={stride}, padding={padding}, dilation={dilation}")
    if not isinstance(groups, int) or groups < 1 or x.shape[1] != weight.shape[1] * groups \
            or weight.shape[0] % groups:
        raise ValueError(f"{who}: x has {x.shape[1]} channels, weight {tuple(weight.shape)} "
                         f"with groups={groups} expects {weight.shape[1] * groups if isinstance(groups, int) else '?'}"
                         f" (and out channels divisible by groups)")
    others = [("weight", weight)] + ([("bias", bias)] if bias is not None else []) + \
             ([("residual", residual)] if residual is not None else [])
    for name, t in others:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{who}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.dtype != x.dtype:
            raise TypeError(f"{who}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{who}: {name} must be on x's device {x.device}, got {t.device}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{who}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    out = output_shape(x, weight, stride, padding, dilation)
    if out[2] < 1 or out[3] < 1:
        raise ValueError(f"{who}: x {tuple(x.shape)} is smaller than the kernel "
                         f"{tuple(weight.shape[-2:])} (padding={padding}, dilation={dilation})")
    if residual is not None and tuple(residual.shape) != out:
        raise ValueError(f"{who}: residual must have the output's shape {out}, got "
                         f"{tuple(residual.shape)}")


def conv_bn_act_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                          residual=None, relu=True):
    """The plain PyTorch composite."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def _triton_applies(weight, stride, groups):
    return weight.shape[-2:] == (1, 1) and groups == 1


def conv_bn_act(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                residual=None, relu=True, backend="auto"):
    """`relu(conv2d(x, weight, bias, stride, padding, dilation, groups) + residual)`, fused.

    Args:
        x: (N, Cin, H, W) input, NCHW or channels_last.
        weight, bias: the conv's (already BatchNorm-folded, see fold_conv_bn) parameters.
        stride, padding, dilation, groups: as F.conv2d.
        residual: optional tensor of the output's shape added before the ReLU.
        relu: apply the ReLU (False: conv + bias (+ residual) only).
        backend: "auto" (native where compiled for the device, else triton on CUDA for 1x1
            convs, else "torch"), "native", "triton" (1x1 convs; others fall back to native or
            torch) or "torch".

    Returns:
        (N, Cout, Ho, Wo) tensor in x's memory format. Differentiable with respect to x,
        weight, bias and residual.
    """
    stride, padding, dilation = (_pair(n, v) for n, v in
                                 (("stride", stride), ("padding", padding), ("dilation", dilation)))
    check_inputs(x, weight, bias, stride, padding, dilation, groups, residual)
    backend = _backend.resolve("conv_bn_act", backend, x.device)
    if backend == "triton" and not _triton_applies(weight, stride, groups):
        backend = "native" if _backend.native_runs_on(x.device.type) else "torch"
    if backend == "torch":
        return conv_bn_act_reference(x, weight, bias, stride, padding, dilation, groups, residual, relu)
    if backend == "triton":
        return torch.ops.fpnops.conv1x1_bn_act_triton(x, weight, bias, stride, residual, relu)
    return torch.ops.fpnops.conv_bn_act(x, weight, bias, stride, padding, dilation, groups,
                                        residual, relu)


# --- fake kernels and autograd -----------------------------------------------------------------

def _empty_output(x, weight, stride, padding, dilation):
    return torch.empty(output_shape(x, weight, stride, padding, dilation), dtype=x.dtype,
                       device=x.device, memory_format=suggest_memory_format(x))


@torch.library.register_fake("fpnops::conv_bn_act")
def _conv_bn_act_fake(x, weight, bias, stride, padding, dilation, groups, residual, relu):
    return _empty_output(x, weight, stride, padding, dilation)


def _register_autograd(op, unpack, pack_grads):
    """relu(conv(x, w, b) + r): d pre = grad * (out > 0); d r = d pre; d x, d w, d b from
    aten.convolution_backward of d pre."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups, residual, relu = unpack(inputs)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.relu, ctx.has_bias, ctx.has_residual = relu, bias is not None, residual is not None
        saved_out = output if relu else None
        ctx.save_for_backward(x, weight, saved_out)

    def backward(ctx, grad):
        x, weight, out = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        g = grad * (out > 0) if ctx.relu else grad
        needs = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.convolution_backward(
            g, x, weight, [weight.shape[0]] if ctx.has_bias else None, stride, padding, dilation,
            False, [0, 0], groups, [needs[0], needs[1], needs[2] and ctx.has_bias])
        gr = g if ctx.has_residual else None
        return pack_grads(gx, gw, gb, gr)

    torch.library.register_autograd(op, backward, setup_context=setup_context)


_register_autograd("fpnops::conv_bn_act", lambda inputs: inputs,
                   lambda gx, gw, gb, gr: (gx, gw, gb, None, None, None, None, gr, None))

if _backend.TRITON_IMPORTABLE:
    from fpnops.triton import conv_bn_act as _triton_kernels  # defines fpnops::conv1x1_bn_act_triton

    def _triton_unpack(inputs):  # as the native op's inputs: a 1x1 conv, no padding
        x, weight, bias, stride, residual, relu = inputs
        return x, weight, bias, stride, [0, 0], [1, 1], 1, residual, relu

    _register_autograd("fpnops::conv1x1_bn_act_triton", _triton_unpack,
                       lambda gx, gw, gb, gr: (gx, gw, gb, None, gr, None))

    if _triton_kernels.INTERPRETING:
        @torch.library.register_fake("fpnops::conv1x1_bn_act_triton")
        def _conv1x1_fake(x, weight, bias, stride, residual, relu):
            return _empty_output(x, weight, stride, [0, 0], [1, 1])
