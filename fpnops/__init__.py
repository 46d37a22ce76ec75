"""fpnops: fused kernels (C++, CUDA, Triton) for the ResNet-FPN under object detectors."""
from fpnops._extension import _C  # noqa: F401  (loads the compiled ops; refuses a stale build)
from fpnops._backend import backends
from fpnops.ops import upsample_add
from fpnops import reference
from fpnops.nn import FusedFPN
from fpnops.fuse import fuse

__version__ = "0.1.0"
__all__ = ["backends", "upsample_add", "reference", "FusedFPN", "fuse"]
