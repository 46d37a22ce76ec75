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


def backends():
    """What this install can run: {"cpu": compiled C++ kernels, "cuda": compiled CUDA kernels,
    "cuda_archs": the archs they were built for, "triton": Triton importable,
    "triton_interpret": TRITON_INTERPRET=1 (Triton kernels on CPU tensors)}."""
    return {
        "cpu": True,
        "cuda": WITH_CUDA,
        "cuda_archs": CUDA_ARCHS if WITH_CUDA else "",
        "triton": TRITON_IMPORTABLE,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }


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
