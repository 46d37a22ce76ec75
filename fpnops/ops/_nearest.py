"""PyTorch's legacy "nearest" index rule in Python (the twin of csrc/nearest_index.h), and the
output layout rule shared by every upsample_add backend."""
import torch
from torch._prims_common import suggest_memory_format


def scale_of(in_size, out_size, scale_factor):
    """The float32 scale ATen multiplies output indices by: 1/scale_factor or in/out."""
    s = 1.0 / scale_factor if scale_factor is not None and scale_factor > 0 else in_size / out_size
    return float(torch.tensor(s, dtype=torch.float32))


def nearest_source(in_size, out_size, scale_factor, cpu_shortcuts):
    """src[d] for every output index d, exactly as eager computes it (CPU or CUDA rule)."""
    dst = torch.arange(out_size, dtype=torch.int64)
    if cpu_shortcuts and out_size == in_size:
        return dst
    if cpu_shortcuts and out_size == 2 * in_size:
        return dst // 2
    scale = torch.tensor(scale_of(in_size, out_size, scale_factor), dtype=torch.float32)
    return torch.floor(dst.to(torch.float32) * scale).to(torch.int64).clamp_(max=in_size - 1)


def nearest_window_starts(in_size, out_size, scale_factor, cpu_shortcuts):
    """starts[i] = first output index reading input i; input i is read by [starts[i], starts[i+1])."""
    src = nearest_source(in_size, out_size, scale_factor, cpu_shortcuts)
    return torch.searchsorted(src, torch.arange(in_size + 1, dtype=torch.int64))


def output_memory_format(lateral):
    """As eager `lateral + upsampled`: the output follows the lateral's memory format."""
    return suggest_memory_format(lateral)
