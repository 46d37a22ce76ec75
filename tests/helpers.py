"""Shared test helpers: inputs in every layout, and the backends to try per device."""
import torch

import fpnops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def backends_for(device):
    b = fpnops.backends()
    out = ["torch", "native"] if device == "cpu" or b["cuda"] else ["torch"]
    if b["triton"] and (device == "cuda" or b["triton_interpret"]):
        out.append("triton")
    return out


def make(shape, dtype, device, layout, requires_grad=False):
    """Random (never zero) input of `shape` in the given layout; 'strided' is a non-contiguous
    view (every other column of a wider tensor, channels permuted)."""
    if layout == "strided":
        n, c, h, w = shape
        base = torch.randn(n, h, c, 2 * w + 1, dtype=dtype, device=device)
        t = base.permute(0, 2, 1, 3)[..., 1::2]
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
    else:
        t = torch.randn(shape, dtype=dtype, device=device)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)
