"""Which backends this install has, and how an op's `backend=` argument is resolved."""
import importlib.util
import os

import torch

from fpnops._extension import CUDA_ARCHS, WITH_CUDA

BACKENDS = ("auto", "native", "triton", "torch")


TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def triton_runs_on(device_type):
    """Triton runs on CUDA tensors, and on CPU tensors only under its interpreter."""
    if not TRITON_IMPORTABLE:
        return False
    if device_type == "cuda":
        return True
    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


class _Backends(dict):
    """backends()'s dict; the key "cuda" of fpnops <= 0.1.0 still reads, with a warning."""

    def __missing__(self, key):
        if key == "cuda":
            return self._old_cuda(stacklevel=3)
        raise KeyError(key)

    def get(self, key, default=None):  # dict.get skips __missing__: .get("cuda") would be None
        return self._old_cuda(stacklevel=3) if key == "cuda" else super().get(key, default)

    def _old_cuda(self, stacklevel):
        import warnings
        warnings.warn('fpnops.backends()["cuda"] is deprecated: it meant "cuda_compiled" (CUDA '
                      'kernels were built); "cuda_available" says whether a GPU is visible now',
                      FutureWarning, stacklevel=stacklevel)
        return self["cuda_compiled"]

def backends():
    """What this install has, and what this process can use now:
    "cpu": the C++ CPU kernels (always compiled); "cuda_compiled": CUDA kernels were compiled into
    this build; "cuda_archs": the archs they were compiled for ("" without them);
    "cuda_available": a CUDA device is visible to torch now (the CUDA kernels run only when both
    are true); "triton": Triton is importable; "triton_interpret": TRITON_INTERPRET=1 (Triton
    kernels run on CPU tensors, in its interpreter)."""
    return _Backends({
        "cpu": True,
        "cuda_compiled": WITH_CUDA,
        "cuda_archs": CUDA_ARCHS if WITH_CUDA else "",
        "cuda_available": torch.cuda.is_available(),
        "triton": TRITON_IMPORTABLE,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    })


def native_runs_on(device_type):
    return device_type == "cpu" or (device_type == "cuda" and WITH_CUDA)


def check(who, backend):
    """`backend` if it names a backend, else a ValueError naming `who` and what came."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{who}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(op, backend, device):
    """The concrete backend ("native", "triton" or "torch") for `op` on `device`."""
    check(op, backend)
    kind = device.type
    if backend == "auto":
        if native_runs_on(kind):
            return "native"
        return "triton" if kind == "cuda" and triton_runs_on(kind) else "torch"
    if backend == "native" and not native_runs_on(kind):
        why = ("this fpnops was built without CUDA kernels (rebuild with a CUDA toolkit, "
               "FPNOPS_BUILD_CUDA=1)" if kind == "cuda" else "fpnops has no compiled kernels for it")
        raise RuntimeError(f"{op}: backend='native' is not available for {kind} tensors: {why}")
    if backend == "triton" and not triton_runs_on(kind):
        why = ("triton is not installed" if not TRITON_IMPORTABLE else
               "Triton runs CPU tensors only under its interpreter (set TRITON_INTERPRET=1 before "
               "importing fpnops)" if kind == "cpu" else "Triton has no backend for this device")
        raise RuntimeError(f"{op}: backend='triton' is not available for {kind} tensors: {why}")
    return backend
