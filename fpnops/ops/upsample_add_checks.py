"""upsample_add's argument checks, shared by the Python face, the fake (meta) kernels and the
Triton launchers; csrc/upsample_add.h holds their C++ twins for the compiled kernels. Every
error names the argument, what was expected and what came, and is both the Python class
(ValueError / TypeError) and RuntimeError, as eager's (fpnops/_errors.py)."""
import math
import numbers

import torch

from fpnops._errors import InputError, InputTypeError

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# floor(in * scale) must be a size; a product past this is not one (and would overflow int64).
_SIZE_LIMIT = 2.0 ** 62


def _show(x):
    text = repr(x)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def split_scale(scale_factor):
    """(scale_h, scale_w) as Python floats from None, a number or a pair, validated."""
    if scale_factor is None:
        return None, None
    pair = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
    if len(pair) != 2 or not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in pair):
        raise InputTypeError(f"upsample_add: scale_factor must be a number or a pair of numbers, "
                        f"got {_show(scale_factor)}")
    try:
        pair = tuple(float(s) for s in pair)
    except OverflowError:  # an int too large for a float (10**400)
        pair = (math.inf, math.inf)
    if not all(math.isfinite(s) and s > 0 for s in pair):
        raise InputError(f"upsample_add: scale_factor must be positive and finite, got "
                         f"{_show(scale_factor)}")
    return pair


def check_dense(who, name, t):
    """`t` must be a torch.Tensor with the strided layout (not sparse, mkldnn or nested)."""
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested:
        raise InputTypeError(f"{who}: {name} must be a dense (strided) tensor, got a nested tensor")
    if t.layout != torch.strided:
        raise InputTypeError(f"{who}: {name} must be a dense (strided) tensor, got layout {t.layout}")


def check_scale(who, name, scale, in_size, out_name, out_size, context=""):
    """`scale` (if given) must turn the top size into the output size as F.interpolate does:
    floor(in_size * scale)."""
    if scale is None:
        return
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"{who}: {name} must be a positive finite number, got {scale}")
    prod = in_size * scale
    expect = math.floor(prod) if prod < _SIZE_LIMIT else prod
    if expect != out_size:
        raise InputError(f"{who}: scale_factor {name}={scale} turns top size {in_size} into "
                         f"{expect}, but {out_name} has size {out_size}{context}")


def check_inputs(top, lateral, scale_h, scale_w):
    """The checks every upsample_add backend (and its fake kernel) shares."""
    for name, t in (("top", top), ("lateral", lateral)):
        check_dense("upsample_add", name, t)
        if t.dim() != 4:
            raise InputError(f"upsample_add: {name} must be 4-D (N, C, H, W), got {t.dim()}-D "
                             f"with shape {tuple(t.shape)}")
    if top.dtype != lateral.dtype:
        raise InputTypeError(f"upsample_add: top and lateral must have the same dtype, got top "
                        f"{top.dtype} and lateral {lateral.dtype}")
    if lateral.dtype not in FLOATING:
        raise InputTypeError(f"upsample_add: top and lateral must have a floating dtype (float16, "
                        f"bfloat16, float32, float64), got {lateral.dtype}")
    if top.device != lateral.device:
        raise InputError(f"upsample_add: top and lateral must be on the same device, got top on "
                         f"{top.device} and lateral on {lateral.device}")
    if top.shape[:2] != lateral.shape[:2]:
        raise InputError(f"upsample_add: top and lateral must have the same N and C, got top "
                         f"{tuple(top.shape)} and lateral {tuple(lateral.shape)}")
    shapes = f" (top {tuple(top.shape)}, lateral {tuple(lateral.shape)})"
    check_scale("upsample_add", "scale_h", scale_h, top.shape[2], "lateral", lateral.shape[2], shapes)
    check_scale("upsample_add", "scale_w", scale_w, top.shape[3], "lateral", lateral.shape[3], shapes)
    if lateral.numel() > 0 and (top.shape[2] == 0 or top.shape[3] == 0):
        raise InputError(f"upsample_add: top has an empty spatial size {tuple(top.shape)} but "
                         f"lateral {tuple(lateral.shape)} needs values from it")


def check_backward_inputs(grad, top_h, top_w, scale_h, scale_w):
    """The checks of upsample_add_backward_top (the gradient with respect to top)."""
    who = "upsample_add_backward_top"
    check_dense(who, "grad", grad)
    if grad.dim() != 4:
        raise InputError(f"{who}: grad must be 4-D (N, C, H, W), got {grad.dim()}-D with shape "
                         f"{tuple(grad.shape)}")
    if grad.dtype not in FLOATING:
        raise InputTypeError(f"{who}: grad must have a floating dtype (float16, bfloat16, float32, "
                        f"float64), got {grad.dtype}")
    if top_h < 0 or top_w < 0:
        raise InputError(f"{who}: top_h and top_w must be >= 0, got {top_h} and {top_w}")
    check_scale(who, "scale_h", scale_h, top_h, "grad", grad.shape[2])
    check_scale(who, "scale_w", scale_w, top_w, "grad", grad.shape[3])
