"""One kernel launch as data: what a launcher computes (kernel, grid, arguments, constexprs and
launch options) is built once, then either launched (`launch`) or, by the compile check
(fpnops/bench/triton_targets.py), compiled for a GPU target without launching."""
import contextlib
import dataclasses

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Launch:
    kernel: object  # a @triton.jit function
    grid: tuple
    args: tuple
    kwargs: dict  # constexprs, num_warps, num_stages


def device_guard(args):
    """Triton launches on the current CUDA device, not on its tensors': make the first tensor's
    device current (cheap where it already is). No guard for CPU tensors (the interpreter) nor
    fake ones (tracing: nothing launches, and no GPU need be there)."""
    t = next(a for a in args if isinstance(a, torch.Tensor))
    if t.device.type != "cuda" or is_fake(t):
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def traceable(kernel):
    """wrap_triton(kernel), which torch.compile can trace, for a compiled kernel; the kernel
    itself under TRITON_INTERPRET=1, where @triton.jit gives an InterpretedFunction: torch 2.11's
    wrap_triton refuses one (later versions hand it back as it is)."""
    return wrap_triton(kernel) if isinstance(kernel, (JITFunction, Autotuner)) else kernel


def launch(spec):
    """The real launch (traceable), on the tensors' device."""
    with device_guard(spec.args):
        traceable(spec.kernel)[spec.grid](*spec.args, **spec.kwargs)


def reach(t):
    """The largest element offset `t` addresses, from its sizes and strides."""
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) if t.numel() else 0


def needs_int64(block, *tensors):
    """Whether some offset a flat kernel over `block`-element programs forms may pass int32:
    an element offset of a tensor, or a flat offset up to numel + block."""
    return any(reach(t) > INT32_MAX or t.numel() + block > INT32_MAX for t in tensors)


def vector_elems(t):
    """Elements in one 16-byte access (8 for 16-bit dtypes, 4 float32, 2 float64)."""
    return 16 // t.element_size()
