"""PyTorch's legacy "nearest" index rules in Python: the twin of csrc/nearest_index.h (which
says where in ATen each rule comes from), used by the Triton launchers and the tests; and the
output layout rule shared by every upsample_add backend.

Forward rules (src[i]: the top index output index i reads), one kind per call for both dims:
  NEAREST_IDX     CPU channels-last kernel: out == in -> i; out == 2 * in -> i >> 1;
                  else min(floor(float(i) * s), in - 1)
  GENERIC_FLOAT   CPU generic kernel, float opmath: min(floor(float(i) * s), in - 1)
  GENERIC_DOUBLE  CPU generic kernel, float64: s and the product in double, rounded to float,
                  floored
  CUDA            out == in -> i; else min(floor(float(i) * s), in - 1)
with s = 1 / scale_factor if one is given, else in / out, in float (double for GENERIC_DOUBLE).
Backward windows (top cell i sums the gradient over outputs [starts[i], starts[i + 1])):
  CPU: the outputs NEAREST_IDX maps to i; CUDA: starts[i] = min(ceil(float(i) * sb), out),
  sb = float(scale_factor) or float(out) / float(in).
The functions here compute on CPU tensors (the tests' model); the *_value / *_ints twins compute
the same numbers in Python floats and ints, for the Triton launchers, whose decisions must not
read tensor data (under torch.compile they run on fake tensors).
"""
import bisect
import math
import struct

import torch
from torch._prims_common import (make_channels_last_strides_for, make_contiguous_strides_for,
                                  suggest_memory_format)

# The values of the C++ NearestKind, in its order (the Triton kernels take them as constexprs).
NEAREST_IDX, GENERIC_FLOAT, GENERIC_DOUBLE, CUDA = 0, 1, 2, 3
RULES = ("cpu", "cuda")  # the device whose eager kernels a backend must match


def nearest_scale(in_size, out_size, scale_factor, dtype=torch.float32):
    """ATen's compute_scales_value in `dtype`: 1 / scale_factor if one (> 0) is given, else
    in / out (a division in `dtype`). A 0-d tensor."""
    if scale_factor is not None and scale_factor > 0:
        return torch.tensor(1.0 / scale_factor, dtype=dtype)
    return torch.tensor(in_size, dtype=dtype) / torch.tensor(out_size, dtype=dtype)


def _f32(x):
    """x rounded to float32 (to nearest even), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def nearest_scale_value(in_size, out_size, scale_factor, double=False):
    """nearest_scale as a Python float, in float32 (float64 if `double`). A float32 division
    rounded from the double one is the float32 division: double rounding is exact for a
    quotient when 53 >= 2 * 24 + 2 bits."""
    if scale_factor is not None and scale_factor > 0:
        s = 1.0 / scale_factor
        return s if double else _f32(s)
    if double:
        return float(in_size) / float(out_size)
    return _f32(_f32(in_size) / _f32(out_size))


def cpu_forward_kind(top, out_h, out_w):
    """The rule eager's CPU upsample_nearest2d uses for `top` (the interpolate input as given):
    its channels-last kernel for a channels_last top with more than 3 channels or a small output
    (out_h + out_w <= 128), else its generic kernel."""
    if (top.is_contiguous(memory_format=torch.channels_last) and top.shape[1] > 3) or out_h + out_w <= 128:
        return NEAREST_IDX
    return GENERIC_DOUBLE if top.dtype == torch.float64 else GENERIC_FLOAT


def forward_kind(top, out_h, out_w, rules):
    """The forward rule for `rules` ("cpu" or "cuda"): decided once per call."""
    return CUDA if rules == "cuda" else cpu_forward_kind(top, out_h, out_w)


def nearest_source(in_size, out_size, scale_factor, kind):
    """src[i] for every output index i under rule `kind` (int64, on the CPU)."""
    dst = torch.arange(out_size, dtype=torch.int64)
    if kind in (NEAREST_IDX, CUDA) and out_size == in_size:
        return dst
    if kind == NEAREST_IDX and out_size == 2 * in_size:
        return dst >> 1
    if kind == GENERIC_DOUBLE:
        x = (dst.double() * nearest_scale(in_size, out_size, scale_factor, torch.float64)).float()
    else:
        x = dst.float() * nearest_scale(in_size, out_size, scale_factor)
    return x.floor().long().clamp_(max=in_size - 1)


def cpu_window_starts(in_size, out_size, scale_factor):
    """CPU backward: starts[i] = the first output index NEAREST_IDX maps to >= i (src never
    decreases, so top cell i is read by exactly [starts[i], starts[i + 1]))."""
    src = nearest_source(in_size, out_size, scale_factor, NEAREST_IDX)
    return torch.searchsorted(src, torch.arange(in_size + 1, dtype=torch.int64))


def cuda_window_starts(in_size, out_size, scale_factor):
    """CUDA backward: starts[i] = min(ceil(float(i) * sb), out). Not the transpose of the CUDA
    forward rule; eager uses it anyway (and copies when all sizes are equal)."""
    if in_size == 0:
        return torch.zeros(1, dtype=torch.int64)
    if scale_factor is not None and scale_factor > 0:
        sb = torch.tensor(scale_factor, dtype=torch.float32)
    else:
        sb = torch.tensor(out_size, dtype=torch.float32) / torch.tensor(in_size, dtype=torch.float32)
    i = torch.arange(in_size + 1, dtype=torch.int64)
    return torch.ceil(i.float() * sb).long().clamp_(max=out_size)


def window_starts(in_size, out_size, scale_factor, rules):
    return (cuda_window_starts if rules == "cuda" else cpu_window_starts)(in_size, out_size, scale_factor)


def window_starts_ints(in_size, out_size, scale_factor, rules):
    """window_starts as a tuple of Python ints (float32 products are exact in double, then
    rounded once to float32)."""
    if rules == "cuda":
        if in_size == 0:
            return (0,)
        sb = (_f32(scale_factor) if scale_factor is not None and scale_factor > 0
              else nearest_scale_value(out_size, in_size, None))  # float(out) / float(in)
        return tuple(min(math.ceil(_f32(_f32(i) * sb)), out_size) for i in range(in_size + 1))
    if out_size == in_size:  # NEAREST_IDX's source of each output index, as nearest_source
        src = range(out_size)
    elif out_size == 2 * in_size:
        src = [i >> 1 for i in range(out_size)]
    else:
        s = nearest_scale_value(in_size, out_size, scale_factor)
        src = [min(math.floor(_f32(_f32(i) * s)), in_size - 1) for i in range(out_size)]
    return tuple(bisect.bisect_left(src, i) for i in range(in_size + 1))


def output_memory_format(lateral):
    """As eager `lateral + upsampled` for a lateral in a memory format: the output follows the
    lateral's (suggest_memory_format: NCHW for views in neither format)."""
    return suggest_memory_format(lateral)


def output_strides(shape, memory_format):
    """The strides of torch.empty(shape, memory_format=memory_format)."""
    if memory_format == torch.channels_last:
        return tuple(make_channels_last_strides_for(shape))
    return tuple(make_contiguous_strides_for(shape))
