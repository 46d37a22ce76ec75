"""fpnops.upsample_add: the FPN top-down step, lateral + nearest-upsampled top, in one pass.

Ops: fpnops::upsample_add (native: csrc/cpu, csrc/cuda), fpnops::upsample_add_triton
(fpnops/triton/upsample_add.py) and their grad_top ops. This file holds the Python face (backend
choice), the fake kernels, the refusals of non-strided tensors and the autograd formulas; the
argument checks every backend shares are in upsample_add_checks.py, the index rules in
_nearest.py.
"""
import torch
import torch.nn.functional as F

from fpnops import _backend
from fpnops.ops._nearest import output_memory_format, output_strides
from fpnops.ops.upsample_add_checks import (check_backward_inputs, check_dense, check_inputs,
                                            split_scale)

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
        the same device (forward and backward, NaN payloads included). Differentiable with
        respect to both inputs.
    """
    scale_h, scale_w = split_scale(scale_factor)
    check_inputs(top, lateral, scale_h, scale_w)
    backend = _backend.resolve("upsample_add", backend, lateral.device)
    if backend == "torch":
        fmt = output_memory_format(lateral)
        if lateral.numel() == 0:  # eager's interpolate refuses empty sizes; the answer is empty
            return lateral.clone(memory_format=fmt)
        out = upsample_add_reference(top, lateral, scale_factor)
        # Eager's add keeps the order of a strided view's strides (and picks its own strides for
        # size-1 dims); every backend returns the lateral's memory format. Same values.
        if out.stride() != output_strides(out.shape, fmt):
            out = out.clone(memory_format=fmt)
        return out
    if backend == "triton":
        return torch.ops.fpnops.upsample_add_triton(top, lateral, scale_h, scale_w)
    return torch.ops.fpnops.upsample_add(top, lateral, scale_h, scale_w)


# --- fake kernels (shapes, dtype and strides only) and autograd --------------------------------

# The fake kernels are also the ops' Meta kernels: a CPU top with a meta lateral dispatches to
# Meta, so they check what the real kernels check (devices included).
@torch.library.register_fake("fpnops::upsample_add")
def _upsample_add_fake(top, lateral, scale_h=None, scale_w=None):
    check_inputs(top, lateral, scale_h, scale_w)
    return torch.empty(lateral.shape, dtype=lateral.dtype, device=lateral.device,
                       memory_format=output_memory_format(lateral))


@torch.library.register_fake("fpnops::upsample_add_backward_top")
def _backward_top_fake(grad, top_h, top_w, scale_h=None, scale_w=None):
    check_backward_inputs(grad, top_h, top_w, scale_h, scale_w)
    return torch.empty((grad.shape[0], grad.shape[1], top_h, top_w), dtype=grad.dtype,
                       device=grad.device, memory_format=output_memory_format(grad))


# Sparse, mkldnn and nested tensors reach an op through their own dispatch keys, where no kernel
# would answer but the dispatcher's "could not run" error: these name the argument instead.
_NON_STRIDED_KEYS = ("SparseCPU", "SparseCUDA", "SparseMeta", "SparseCsrCPU", "SparseCsrCUDA",
                     "SparseCsrMeta", "MkldnnCPU", "NestedTensorCPU", "NestedTensorCUDA",
                     "NestedTensorMeta")
_refusals = torch.library.Library("fpnops", "IMPL")


def _refuse_non_strided(op, tensor_args):
    def refuse(*args, **kwargs):
        for name, arg in zip(tensor_args, args):
            check_dense(op, name, arg)
        raise TypeError(f"{op}: expects dense (strided) tensors")  # not reached

    for key in _NON_STRIDED_KEYS:
        _refusals.impl(op, refuse, key)
    try:  # jagged nested tensors are a Python subclass: they ask __torch_dispatch__
        from torch.nested._internal.nested_tensor import NestedTensor
        torch.library.register_torch_dispatch(f"fpnops::{op}", NestedTensor,
                                              lambda mode, func, types, args, kwargs: refuse(*args))
    except (ImportError, AttributeError):
        pass


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
_refuse_non_strided("upsample_add", ("top", "lateral"))
_refuse_non_strided("upsample_add_backward_top", ("grad",))

if _backend.TRITON_IMPORTABLE:
    from fpnops.triton import upsample_add as _triton_kernels  # defines fpnops::*_triton

    if _triton_kernels.INTERPRETING:
        torch.library.register_fake("fpnops::upsample_add_triton")(_upsample_add_fake)
        torch.library.register_fake("fpnops::upsample_add_backward_top_triton")(_backward_top_fake)

    _register_autograd("fpnops::upsample_add_triton", "fpnops::upsample_add_backward_top_triton")
    _refuse_non_strided("upsample_add_triton", ("top", "lateral"))
    _refuse_non_strided("upsample_add_backward_top_triton", ("grad",))
