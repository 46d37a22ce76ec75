"""conv_bn_act's argument checks, shared by the Python face, the fake kernels, the Triton
launcher and the fused modules; csrc/conv_bn_act.h holds their C++ twins for the compiled
kernels. Every error names the argument, what was expected and what came, and is both the
Python class (ValueError / TypeError) and RuntimeError, as eager's (fpnops/_errors.py)."""
import operator
from collections.abc import Mapping, Set

import torch

from fpnops._errors import InputError, InputTypeError

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _int(v):
    """v as an int: an int or integer-like with __index__ (numpy ints, 0-d integer tensors), not
    a bool; else TypeError."""
    if isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
        raise TypeError("a bool is not an int")  # caught: the callers say more
    return operator.index(v)


def _pair(name, v, who="conv_bn_act"):
    """(a, b) of plain ints from an int-like or a pair of them; TypeError/ValueError naming
    `name` and what came (floats, bools, strings, other lengths)."""
    def bad(exc, why):
        return exc(f"{who}: {name} must be an int or a pair of ints, got {v!r} ({why})")

    if isinstance(v, (tuple, list)):  # the common case first, without exceptions (tracing)
        items = tuple(v)
    else:
        try:
            i = _int(v)
            return (i, i)
        except TypeError:
            pass
        if isinstance(v, (str, bytes, Mapping, Set)):
            raise bad(InputTypeError, type(v).__name__)
        try:
            items = tuple(v)  # numpy arrays, 1-D tensors
        except TypeError:
            raise bad(InputTypeError, type(v).__name__) from None
    if len(items) != 2:
        raise bad(InputError, f"{len(items)} values")
    try:
        return tuple(_int(i) for i in items)
    except TypeError:
        raise bad(InputTypeError, "elements " + ", ".join(type(i).__name__ for i in items)) from None


def output_shape(x, weight, stride, padding, dilation):
    n, _, h, w = x.shape
    kh, kw = weight.shape[-2:]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, weight.shape[0], oh, ow)


def _check_tensor(who, name, t, optional):
    """A strided (dense, not nested) tensor, or None where `optional`."""
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{who}: {name} must be a torch.Tensor{' or None' if optional else ''}, "
                        f"got {type(t).__name__}")
    if t.is_nested or t.layout != torch.strided:
        raise InputTypeError(f"{who}: {name} must be a strided (dense) tensor, got "
                        f"{'a nested tensor' if t.is_nested else t.layout}")


def _check_like_x(who, name, t, x):
    if t.dtype != x.dtype:
        raise InputTypeError(f"{who}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise InputError(f"{who}: {name} must be on x's device {x.device}, got {t.device}")


def check_inputs(x, weight, bias, stride, padding, dilation, groups, residual, who="conv_bn_act"):
    """The checks every backend shares; errors name the argument, the expected and what came.
    `who` opens every message (the fused modules pass their own name and the conv's).
    stride/padding/dilation: ints or pairs of ints; groups: an int. Returns them as
    (stride, padding, dilation, groups), pairs and an int."""
    _check_tensor(who, "x", x, False)
    _check_tensor(who, "weight", weight, False)
    for name, t in (("x", x), ("weight", weight)):
        if t.dim() != 4:
            raise InputError(f"{who}: {name} must be 4-D, got {t.dim()}-D with shape {tuple(t.shape)}")
    if x.dtype not in _FLOATING:
        raise InputTypeError(f"{who}: expected a floating dtype, got x {x.dtype}")
    stride, padding, dilation = (_pair(n, v, who) for n, v in
                                 (("stride", stride), ("padding", padding), ("dilation", dilation)))
    try:
        groups = _int(groups)
    except TypeError:
        raise InputTypeError(f"{who}: groups must be an int, got {groups!r}") from None
    for name, v, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if min(v) < low:
            raise InputError(f"{who}: {name} must be >= {low}, got {name}={v}")
    if groups < 1:
        raise InputError(f"{who}: groups must be >= 1, got groups={groups}")
    _check_like_x(who, "weight", weight, x)
    cout, cin_g, kh, kw = weight.shape
    if cout < 1:
        raise InputError(f"{who}: weight must have at least 1 output channel, got shape "
                         f"{tuple(weight.shape)}")
    if cout % groups:
        raise InputError(f"{who}: weight has {cout} output channels, not divisible by "
                         f"groups={groups}")
    if x.shape[1] != cin_g * groups:
        raise InputError(f"{who}: x has {x.shape[1]} channels, weight {tuple(weight.shape)} "
                         f"with groups={groups} expects {cin_g * groups}")
    if kh < 1 or kw < 1:
        raise InputError(f"{who}: weight must have a kernel of at least 1x1, got shape "
                         f"{tuple(weight.shape)}")
    if bias is not None:
        _check_tensor(who, "bias", bias, True)
        _check_like_x(who, "bias", bias, x)
        if tuple(bias.shape) != (cout,):
            raise InputError(f"{who}: bias must have shape ({cout},), got {tuple(bias.shape)}")
    out = output_shape(x, weight, stride, padding, dilation)
    if out[2] < 1 or out[3] < 1:
        raise InputError(f"{who}: x {tuple(x.shape)} is smaller than the kernel "
                         f"{(kh, kw)} (padding={padding}, dilation={dilation})")
    if residual is not None:
        _check_tensor(who, "residual", residual, True)
        _check_like_x(who, "residual", residual, x)
        if tuple(residual.shape) != out:
            raise InputError(f"{who}: residual must have the output's shape {out}, got "
                             f"{tuple(residual.shape)}")
    return stride, padding, dilation, groups


def output_memory_format(x, weight, stride, padding, dilation, groups=1):
    """The layout of eager's convolution output, which the kernels return: on CUDA cuDNN's rule
    (csrc/conv_bn_act.h conv_output_format_cuda), elsewhere the backend ATen selects and its rule
    (conv_output_format_cpu). Both read metadata only, so fake tensors get the real layout."""
    if x.device.type == "cuda":
        if not torch.backends.cudnn.enabled:
            return torch.contiguous_format
        backend = torch._C._ConvBackend.Cudnn
    else:
        backend = torch._C._select_conv_backend(x, weight, None, list(stride), list(padding), list(dilation),
                                                False, [0, 0], groups, None)
    return torch._C._conv_determine_backend_memory_format(x, weight, backend)
