"""fpnops.upsample_add: the FPN top-down step, lateral + nearest-upsampled top, in one pass.

Ops: fpnops::upsample_add (native: csrc/cpu, csrc/cuda), fpnops::upsample_add_triton
(fpnops/triton/upsample_add.py) and their grad_top ops. This file holds the Python face, the
argument checks every backend shares, the fake kernels and the autograd formulas.
"""
import math
import numbers

import torch
import torch.nn.functional as F

from fpnops import _backend
from fpnops.ops._nearest import output_memory_format

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _split_scale(scale_factor):
    """(scale_h, scale_w) from None, a number or a pair, validated."""
    if scale_factor is None:
        return None, None
    pair = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
    if len(pair) != 2 or not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in pair):
        raise TypeError(f"upsample_add: scale_factor must be a number or a pair of numbers, "
                        f"got {scale_factor!r}")
    if not all(math.isfinite(s) and s > 0 for s in pair):
        raise ValueError(f"upsample_add: scale_factor must be positive and finite, got {scale_factor!r}")
    return float(pair[0]), float(pair[1])


def check_inputs(top, lateral, scale_h, scale_w):
    """The argument checks every backend shares; errors name the argument and what came."""
    for name, t in (("top", top), ("lateral", lateral)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"upsample_add: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"upsample_add: {name} must be 4-D (N, C, H, W), got {t.dim()}-D "
                             f"with shape {tuple(t.shape)}")
    if top.dtype != lateral.dtype:
        raise TypeError(f"upsample_add: top and lateral must have the same dtype, got top "
                        f"{top.dtype} and lateral {lateral.dtype}")
    if lateral.dtype not in _FLOATING:
        raise TypeError(f"upsample_add: expected a floating dtype (float16, bfloat16, float32, "
                        f"float64), got {lateral.dtype}")
    if top.device != lateral.device:
        raise ValueError(f"upsample_add: top and lateral must be on the same device, got top on "
                         f"{top.device} and lateral on {lateral.device}")
    if top.shape[:2] != lateral.shape[:2]:
        raise ValueError(f"upsample_add: top and lateral must have the same N and C, got top "
                         f"{tuple(top.shape)} and lateral {tuple(lateral.shape)}")
    for name, s, i, o in (("scale_h", scale_h, top.shape[2], lateral.shape[2]),
                          ("scale_w", scale_w, top.shape[3], lateral.shape[3])):
        if s is not None and math.floor(i * s) != o:
            raise ValueError(f"upsample_add: scale_factor {name}={s} turns top size {i} into "
                             f"{math.floor(i * s)}, but lateral has size {o} "
                             f"(top {tuple(top.shape)}, lateral {tuple(lateral.shape)})")
    if lateral.numel() > 0 and (top.shape[2] == 0 or top.shape[3] == 0):
        raise ValueError(f"upsample_add: top has an empty spatial size {tuple(top.shape)} but "
                         f"lateral {tuple(lateral.shape)} needs values from it")


def upsample_add_reference(top, lateral, scale_factor=None):
    """The plain PyTorch composite that every backend must equal bit for bit."""
    if scale_factor is not None:
        return lateral + F.interpolate(top, scale_factor=scale_factor, mode="nearest")
    return lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")


def upsample_add(top, lateral, *, scale_factor=None, backend="auto"):
    """`lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")`, fused.

    Args:
        top: (N, C, h, w) coarser map, any float dtype, any layout (contiguous, channels_last,
            strided views).
        lateral: (N, C, H, W) finer map of the same dtype and device. Any sizes: H, W need not
            be multiples of h, w (nor larger).
        scale_factor: optional number or (sh, sw): upsample as
            `F.interpolate(top, scale_factor=scale_factor, mode="nearest")` (index scale
            1/scale_factor), whose size must equal the lateral's.
        backend: "auto" (native kernel where compiled for the device, else Triton on CUDA,
            else "torch"), "native", "triton" or "torch" (the plain composite).

    Returns:
        (N, C, H, W) tensor in the lateral's memory format, bit-identical to eager PyTorch on
        the same device. Differentiable with respect to both inputs.
    """
    scale_h, scale_w = _split_scale(scale_factor)
    check_inputs(top, lateral, scale_h, scale_w)
    backend = _backend.resolve("upsample_add", backend, lateral.device)
    if backend == "torch":
        if lateral.numel() == 0:  # eager's interpolate refuses empty sizes; the answer is empty
            return lateral.clone(memory_format=output_memory_format(lateral))
        return upsample_add_reference(top, lateral, scale_factor)
    if backend == "triton":
        return torch.ops.fpnops.upsample_add_triton(top, lateral, scale_h, scale_w)
    return torch.ops.fpnops.upsample_add(top, lateral, scale_h, scale_w)


# --- fake kernels (shapes, dtype and strides only) and autograd --------------------------------

@torch.library.register_fake("fpnops::upsample_add")
def _upsample_add_fake(top, lateral, scale_h=None, scale_w=None):
    torch._check(top.shape[:2] == lateral.shape[:2],
                 lambda: f"upsample_add: N and C differ: top {top.shape}, lateral {lateral.shape}")
    torch._check(top.dtype == lateral.dtype, lambda: "upsample_add: top and lateral dtypes differ")
    return torch.empty(lateral.shape, dtype=lateral.dtype, device=lateral.device,
                       memory_format=output_memory_format(lateral))


@torch.library.register_fake("fpnops::upsample_add_backward_top")
def _backward_top_fake(grad, top_h, top_w, scale_h=None, scale_w=None):
    return torch.empty((grad.shape[0], grad.shape[1], top_h, top_w), dtype=grad.dtype,
                       device=grad.device, memory_format=output_memory_format(grad))


def _setup_context(ctx, inputs, output):
    top, _, scale_h, scale_w = inputs
    ctx.top_hw = (top.shape[2], top.shape[3])
    ctx.scales = (scale_h, scale_w)


def _register_autograd(forward_op, backward_top_op):
    """d lateral = grad; d top = sum of grad over each top cell's window (backward_top_op);
    d grad of backward_top = the nearest upsample of its incoming gradient (double backward)."""

    backward_top = getattr(torch.ops.fpnops, backward_top_op.split("::")[1])

    def backward(ctx, grad):
        gtop = backward_top(grad, *ctx.top_hw, *ctx.scales) if ctx.needs_input_grad[0] else None
        return gtop, (grad if ctx.needs_input_grad[1] else None), None, None

    def setup_backward_context(ctx, inputs, output):
        grad, _, _, scale_h, scale_w = inputs
        ctx.out_hw = tuple(grad.shape[2:])
        ctx.scales = (scale_h, scale_w)

    def backward_of_backward(ctx, gg):
        if ctx.scales[0] is None:
            up = F.interpolate(gg, size=ctx.out_hw, mode="nearest")
        else:
            up = F.interpolate(gg, scale_factor=ctx.scales, mode="nearest")
        return up, None, None, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=_setup_context)
    torch.library.register_autograd(backward_top_op, backward_of_backward,
                                    setup_context=setup_backward_context)


_register_autograd("fpnops::upsample_add", "fpnops::upsample_add_backward_top")

if _backend.TRITON_IMPORTABLE:
    from fpnops.triton import upsample_add as _triton_kernels  # defines fpnops::*_triton

    if _triton_kernels.INTERPRETING:
        torch.library.register_fake("fpnops::upsample_add_triton")(_upsample_add_fake)
        torch.library.register_fake("fpnops::upsample_add_backward_top_triton")(_backward_top_fake)

    _register_autograd("fpnops::upsample_add_triton", "fpnops::upsample_add_backward_top_triton")
